//! A lane: one worker thread that runs submitted jobs in submission order, each with a
//! [`Ticket`] to wait on.
//!
//! The host lane of asymmetric pipelining: the caller (the device lane) submits a layer's host
//! attention and goes on with device work; it waits on the ticket when it needs the output.
//! Neither submitting nor running a job needs anything from the caller's thread (no
//! interpreter lock, no polling by the caller), so a job starts as soon as the worker wakes.
//!
//! A job's panic is caught and handed to its waiter as an [`Error`]; the lane keeps serving.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The outcome of one submitted job.
pub struct Ticket {
    outcome: Mutex<Option<Result<()>>>,
    finished: Condvar,
}

/// How long `wait` spins before it sleeps: a layer's host attention often ends within a few
/// microseconds of the caller asking, and a sleep/wake pair costs tens of microseconds.
const SPIN: Duration = Duration::from_micros(50);

impl Ticket {
    fn new() -> Arc<Ticket> {
        Arc::new(Ticket { outcome: Mutex::new(None), finished: Condvar::new() })
    }

    fn settle(&self, outcome: Result<()>) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.finished.notify_all();
    }

    /// Whether the job has ended (successfully or not).
    pub fn is_done(&self) -> bool {
        self.outcome.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Blocks until the job has ended; its result (the same to every waiter).
    pub fn wait(&self) -> Result<()> {
        let spin_until = Instant::now() + SPIN;
        while Instant::now() < spin_until {
            if let Some(outcome) = self.outcome.try_lock().ok().and_then(|o| o.clone()) {
                return outcome;
            }
            std::hint::spin_loop();
        }
        let mut outcome = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        while outcome.is_none() {
            outcome = self.finished.wait(outcome).unwrap_or_else(|e| e.into_inner());
        }
        outcome.clone().expect("checked above")
    }
}

/// One worker thread and its queue. Dropping the lane runs every job already submitted, then
/// joins the worker.
pub struct Lane {
    jobs: Option<Sender<Job>>,
    worker: Option<JoinHandle<()>>,
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a job panicked".to_string())
}

impl Lane {
    pub fn new(name: &str) -> Result<Lane> {
        let (jobs, queue) = channel::<Job>();
        let worker = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    job();
                }
            })
            .map_err(|e| Error::new(format!("cannot start the lane's thread: {e}")))?;
        Ok(Lane { jobs: Some(jobs), worker: Some(worker) })
    }

    /// Queues `job` behind every job submitted before it.
    pub fn submit<F>(&self, job: F) -> Arc<Ticket>
    where
        F: FnOnce() -> Result<()> + Send + 'static,
    {
        let ticket = Ticket::new();
        let settle = Arc::clone(&ticket);
        let run: Job = Box::new(move || {
            let outcome = catch_unwind(AssertUnwindSafe(job))
                .unwrap_or_else(|payload| Err(Error::new(format!("host job panicked: {}", panic_message(&*payload)))));
            settle.settle(outcome);
        });
        let sent = self.jobs.as_ref().expect("present until drop").send(run);
        // The worker only stops when the sender is dropped, so a send cannot fail.
        debug_assert!(sent.is_ok());
        ticket
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn jobs_run_in_submission_order_and_tickets_report_each() {
        let lane = Lane::new("test-lane").unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let tickets: Vec<_> = (0..50)
            .map(|i| {
                let log = Arc::clone(&log);
                lane.submit(move || {
                    log.lock().unwrap().push(i);
                    if i % 7 == 3 {
                        Err(Error::new(format!("job {i} failed")))
                    } else {
                        Ok(())
                    }
                })
            })
            .collect();
        for (i, t) in tickets.iter().enumerate() {
            let r = t.wait();
            assert_eq!(r.is_err(), i % 7 == 3, "job {i}");
            assert!(t.is_done());
        }
        assert_eq!(*log.lock().unwrap(), (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn a_panic_becomes_an_error_and_the_lane_goes_on() {
        let lane = Lane::new("test-lane").unwrap();
        let bad = lane.submit(|| panic!("boom"));
        let good = lane.submit(|| Ok(()));
        let e = bad.wait().unwrap_err();
        assert!(e.message().contains("boom"), "{}", e.message());
        assert!(good.wait().is_ok());
    }

    #[test]
    fn dropping_the_lane_runs_what_was_submitted() {
        let count = Arc::new(AtomicUsize::new(0));
        let lane = Lane::new("test-lane").unwrap();
        let tickets: Vec<_> = (0..20)
            .map(|_| {
                let count = Arc::clone(&count);
                lane.submit(move || {
                    std::thread::sleep(Duration::from_micros(200));
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
            })
            .collect();
        drop(lane);
        assert_eq!(count.load(Ordering::SeqCst), 20);
        assert!(tickets.iter().all(|t| t.is_done()));
    }

    #[test]
    fn a_job_runs_while_the_caller_works() {
        let lane = Lane::new("test-lane").unwrap();
        let started = Arc::new(std::sync::Barrier::new(2));
        let s = Arc::clone(&started);
        let ticket = lane.submit(move || {
            s.wait(); // only returns if the caller reaches its own barrier wait meanwhile
            Ok(())
        });
        started.wait();
        assert!(ticket.wait().is_ok());
    }
}
