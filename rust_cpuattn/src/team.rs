//! A team of threads for one call: the calling thread plus `num_threads - 1` helpers from a
//! rayon pool.
//!
//! A call's work is a list of indexed tasks, claimed in index order from a shared counter.
//! The caller starts on them at once, and a helper that wakes up late takes only what is left,
//! so a call never waits for a sleeping thread to wake (on virtual machines that can take
//! longer than a whole small call). Which thread runs a task never changes its result.
//!
//! After a call a helper polls for the next one for a while (the poll time) before it goes
//! back to the pool: calls that come in quick succession, one per layer, find it awake.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::ThreadPool;

use crate::error::Result;

/// The calling thread plus the helpers of a pool (none for a team of one).
pub struct Team {
    helpers: Option<ThreadPool>,
    shared: Arc<Shared>,
    num_threads: usize,
}

/// What the helpers of a team share.
struct Shared {
    /// The claims of the latest call; a polling helper joins them.
    posted: Mutex<Option<Arc<Claims>>>,
    /// The generation of `posted`, bumped (under the lock) when a call posts.
    generation: AtomicU64,
    /// Helpers polling for the next call right now.
    polling: AtomicUsize,
    poll: Duration,
}

/// A task with its lifetime erased (see `Claims::task`).
type Task = dyn Fn(usize) + Sync + 'static;

/// How long helpers poll for the next call by default.
pub const DEFAULT_POLL: Duration = Duration::from_millis(1);

/// The shared state of one [`Team::run`].
struct Claims {
    generation: u64,
    next: AtomicUsize,
    done: AtomicUsize,
    /// The first task panic's payload, re-raised by `run` once every task has ended.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    num_tasks: usize,
    /// The caller's task with its lifetime erased. Invariant: it is called only with an index
    /// claimed from `next` below `num_tasks`, and `run` does not return before `done` counts
    /// every such index, so a helper that starts after the call has returned claims nothing
    /// and never touches it.
    task: *const Task,
}

// SAFETY: `task` points at a `Sync` closure and is only used as the invariant above allows.
unsafe impl Send for Claims {}
// SAFETY: as above; the counters are atomics.
unsafe impl Sync for Claims {}

impl Claims {
    /// Runs tasks until none is left unclaimed.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.num_tasks {
                return;
            }
            // SAFETY: `i < num_tasks` was claimed just now, so `run` is still waiting.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| unsafe { (*self.task)(i) })) {
                let mut first = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                if first.is_none() {
                    *first = Some(payload);
                } else {
                    // Never dropped here: a payload whose drop panics must not unwind out of
                    // `work` while other threads still run tasks borrowing the caller's stack.
                    std::mem::forget(payload);
                }
            }
            // Release: the task's writes are visible to the caller once it sees the count.
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// A helper's job: work on `claims`, then on the claims of each call posted while it polls.
fn help(shared: &Shared, mut claims: Arc<Claims>) {
    loop {
        claims.work();
        shared.polling.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        let mut spins = 0u32;
        let next = loop {
            if shared.generation.load(Ordering::Acquire) != claims.generation {
                break shared.posted.lock().unwrap_or_else(|e| e.into_inner()).clone();
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() >= shared.poll {
                break None;
            }
            std::hint::spin_loop();
        };
        shared.polling.fetch_sub(1, Ordering::SeqCst);
        match next {
            Some(next) => claims = next,
            None => return,
        }
    }
}

impl Team {
    /// A team of `num_threads` (>= 1) threads: the caller and `num_threads - 1` helpers, which
    /// poll for the next call for [`DEFAULT_POLL`] after each.
    pub fn new(num_threads: usize) -> Result<Self> {
        Self::with_poll(num_threads, DEFAULT_POLL)
    }

    /// As [`Team::new`], with helpers that poll for `poll` after each call (zero: they go
    /// back to the pool at once).
    pub fn with_poll(num_threads: usize, poll: Duration) -> Result<Self> {
        let num_threads = num_threads.max(1);
        let helpers = if num_threads > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(num_threads - 1)
                .thread_name(|i| format!("rust-cpuattn-{i}"))
                .build()
                .map_err(|e| crate::Error::new(format!("cannot start {} kernel threads: {e}", num_threads - 1)))?;
            Some(pool)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            posted: Mutex::new(None),
            generation: AtomicU64::new(0),
            polling: AtomicUsize::new(0),
            poll,
        });
        Ok(Self { helpers, shared, num_threads })
    }

    /// Threads of the team, the caller included.
    pub fn num_threads(&self) -> usize {
        self.num_threads
    }

    /// Runs `task(i)` once for every `i` in `0..num_tasks`, on the caller and the helpers;
    /// returns when all have run. A panic in a task is re-raised here (with helpers, once
    /// every other task has ended).
    ///
    /// Helper jobs woken for a call that polling helpers then serve find nothing to do and
    /// poll in turn: after a burst of calls a helper may spin for more than one poll time.
    pub fn run(&self, num_tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        let helpers = match &self.helpers {
            Some(pool) if num_tasks > 1 => pool,
            _ => return (0..num_tasks).for_each(task),
        };
        // SAFETY: only the lifetime is erased; see `Claims::task` for why that is sound.
        let task: *const Task = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Task>(task) };
        let claims = {
            let mut posted = self.shared.posted.lock().unwrap_or_else(|e| e.into_inner());
            let generation = self.shared.generation.load(Ordering::Relaxed) + 1;
            let claims = Arc::new(Claims {
                generation,
                next: AtomicUsize::new(0),
                done: AtomicUsize::new(0),
                panic: Mutex::new(None),
                num_tasks,
                task,
            });
            *posted = Some(Arc::clone(&claims));
            self.shared.generation.store(generation, Ordering::Release);
            claims
        };
        // Polling helpers join by themselves; wake pool threads for the rest. (A helper that
        // stops polling just now is missed: the call then has fewer threads, never wrong.)
        let wanted = self.num_threads.min(num_tasks) - 1;
        for _ in self.shared.polling.load(Ordering::SeqCst).min(wanted)..wanted {
            let (shared, claims) = (Arc::clone(&self.shared), Arc::clone(&claims));
            helpers.spawn(move || help(&shared, claims));
        }
        claims.work();
        // Every task is claimed; wait for those still running on helpers (at most one each).
        let mut spins = 0u32;
        while claims.done.load(Ordering::Acquire) < num_tasks {
            if spins < 1 << 14 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let payload = claims.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(payload) = payload {
            resume_unwind(payload);
        }
    }
}

/// Runs `f(i, item)` once for each of `items`, the item moved to the thread that claims
/// index `i` (on the calling thread alone when `team` is `None`).
pub fn run_each<T: Send>(team: Option<&Team>, items: Vec<T>, f: &(dyn Fn(usize, T) + Sync)) {
    let Some(team) = team else {
        return items.into_iter().enumerate().for_each(|(i, item)| f(i, item));
    };
    // Each index is claimed by exactly one thread; the lock only hands its item over.
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|item| Mutex::new(Some(item))).collect();
    team.run(slots.len(), &|i| {
        let item = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take().expect("each index is claimed once");
        f(i, item);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_task_runs_once_on_any_team() {
        for threads in [1, 2, 3, 7] {
            let team = Team::new(threads).unwrap();
            for n in [0, 1, 2, 5, 100] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                team.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "threads {threads} tasks {n}");
            }
        }
    }

    #[test]
    fn run_each_moves_every_item_to_one_call() {
        let team = Team::new(3).unwrap();
        for team in [None, Some(&team)] {
            let seen = Mutex::new(Vec::new());
            let items: Vec<String> = (0..50).map(|i| format!("item {i}")).collect();
            run_each(team, items, &|i, item| seen.lock().unwrap().push((i, item)));
            let mut seen = seen.into_inner().unwrap();
            seen.sort();
            let want: Vec<(usize, String)> = (0..50).map(|i| (i, format!("item {i}"))).collect();
            assert_eq!(seen, want);
        }
    }

    #[test]
    fn back_to_back_calls_with_polling_and_without() {
        for poll in [Duration::ZERO, Duration::from_micros(50), DEFAULT_POLL] {
            let team = Team::with_poll(3, poll).unwrap();
            for call in 0..300 {
                let n = 1 + call % 17;
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                team.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "poll {poll:?} call {call}");
                if call % 50 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }

    #[test]
    fn a_panicking_task_is_reraised_after_the_rest() {
        let team = Team::new(3).unwrap();
        let ran = Mutex::new(Vec::new());
        let result = catch_unwind(AssertUnwindSafe(|| {
            team.run(20, &|i| {
                ran.lock().unwrap().push(i);
                assert!(i != 7, "task 7 fails");
            })
        }));
        let payload = result.expect_err("the panic is re-raised");
        let message = payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied());
        assert_eq!(message, Some("task 7 fails"));
        let mut ran = ran.into_inner().unwrap();
        ran.sort();
        assert_eq!(ran, (0..20).collect::<Vec<_>>());
        // The team still works afterwards.
        let count = AtomicUsize::new(0);
        team.run(10, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.into_inner(), 10);
    }
}
