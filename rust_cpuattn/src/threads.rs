//! The kernel's one thread team (see [`Team`]): built on first use with the configured size,
//! separate from torch's threads, rebuilt only when `set_num_threads` changes the size.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{bail, Result};
use crate::team::Team;

/// Environment variable giving the default team size.
pub const NUM_THREADS_ENV: &str = "RUST_CPUATTN_NUM_THREADS";
/// Environment variable giving how long (microseconds) helpers poll for the next call.
pub const POLL_US_ENV: &str = "RUST_CPUATTN_POLL_US";
const MAX_THREADS: usize = 1024;

struct TeamState {
    /// Requested size; 0 until set (then the default applies).
    num_threads: usize,
    team: Option<Arc<Team>>,
}

static TEAM: Mutex<TeamState> = Mutex::new(TeamState { num_threads: 0, team: None });

fn default_num_threads() -> usize {
    std::env::var(NUM_THREADS_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| (1..=MAX_THREADS).contains(&n))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn poll_time() -> Duration {
    std::env::var(POLL_US_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(crate::team::DEFAULT_POLL, |us| Duration::from_micros(us.min(1_000_000)))
}

/// Sets the number of kernel threads (1 = run on the calling thread).
pub fn set_num_threads(num_threads: usize) -> Result<()> {
    if !(1..=MAX_THREADS).contains(&num_threads) {
        bail!("num_threads must be in [1, {MAX_THREADS}], got {num_threads}");
    }
    let mut state = TEAM.lock().unwrap_or_else(|e| e.into_inner());
    if state.num_threads != num_threads {
        state.num_threads = num_threads;
        state.team = None;
    }
    Ok(())
}

/// The number of kernel threads calls will use.
pub fn num_threads() -> usize {
    let state = TEAM.lock().unwrap_or_else(|e| e.into_inner());
    if state.num_threads == 0 {
        default_num_threads()
    } else {
        state.num_threads
    }
}

/// The team for the configured size, built on first use.
pub fn team() -> Result<Arc<Team>> {
    let mut state = TEAM.lock().unwrap_or_else(|e| e.into_inner());
    if state.num_threads == 0 {
        state.num_threads = default_num_threads();
    }
    if state.team.is_none() {
        state.team = Some(Arc::new(Team::with_poll(state.num_threads, poll_time())?));
    }
    Ok(Arc::clone(state.team.as_ref().expect("built above")))
}
