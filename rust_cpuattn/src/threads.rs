//! The kernel's one thread pool: built on first use with the configured size, separate from
//! torch's threads, rebuilt only when `set_num_threads` changes the size.

use std::sync::{Arc, Mutex};

use rayon::ThreadPool;

use crate::error::{bail, Result};

/// Environment variable giving the default pool size.
pub const NUM_THREADS_ENV: &str = "RUST_CPUATTN_NUM_THREADS";
const MAX_THREADS: usize = 1024;

struct PoolState {
    /// Requested size; 0 until set (then the default applies).
    num_threads: usize,
    pool: Option<Arc<ThreadPool>>,
}

static POOL: Mutex<PoolState> = Mutex::new(PoolState { num_threads: 0, pool: None });

fn default_num_threads() -> usize {
    std::env::var(NUM_THREADS_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| (1..=MAX_THREADS).contains(&n))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets the number of kernel threads (1 = run on the calling thread).
pub fn set_num_threads(num_threads: usize) -> Result<()> {
    if !(1..=MAX_THREADS).contains(&num_threads) {
        bail!("num_threads must be in [1, {MAX_THREADS}], got {num_threads}");
    }
    let mut state = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if state.num_threads != num_threads {
        state.num_threads = num_threads;
        state.pool = None;
    }
    Ok(())
}

/// The number of kernel threads calls will use.
pub fn num_threads() -> usize {
    let state = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if state.num_threads == 0 {
        default_num_threads()
    } else {
        state.num_threads
    }
}

/// The pool for the configured size (`None` for one thread), built on first use.
pub fn pool() -> Result<Option<Arc<ThreadPool>>> {
    let mut state = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if state.num_threads == 0 {
        state.num_threads = default_num_threads();
    }
    if state.num_threads == 1 {
        return Ok(None);
    }
    if state.pool.is_none() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(state.num_threads)
            .thread_name(|i| format!("rust-cpuattn-{i}"))
            .build()
            .map_err(|e| crate::Error::new(format!("cannot start {} kernel threads: {e}", state.num_threads)))?;
        state.pool = Some(Arc::new(pool));
    }
    Ok(state.pool.clone())
}
