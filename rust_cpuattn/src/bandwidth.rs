//! Memory read bandwidth probe: sums a large buffer with the kernel's threads, so a benchmark
//! can set the kernel's bytes/s against what the machine delivers at the same thread count.

use std::time::Instant;

use rayon::ThreadPool;

/// Sums `buf` as u64 words with four independent accumulators (vectorised by the compiler).
fn sum_words(buf: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = buf.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    let tail: u64 = chunks.remainder().iter().fold(0, |a, &x| a.wrapping_add(x));
    acc.iter().fold(tail, |a, &x| a.wrapping_add(x))
}

/// Reads all of `buf` once, split in one contiguous part per thread of `pool` (the calling
/// thread when `None`). Returns (bytes per second, checksum).
pub fn read_bandwidth(buf: &[u64], pool: Option<&ThreadPool>) -> (f64, u64) {
    let start = Instant::now();
    let sum = match pool {
        Some(pool) if pool.current_num_threads() > 1 => {
            let n = pool.current_num_threads();
            let part = buf.len().div_ceil(n);
            pool.broadcast(|ctx| {
                let lo = (ctx.index() * part).min(buf.len());
                let hi = (lo + part).min(buf.len());
                sum_words(&buf[lo..hi])
            })
            .into_iter()
            .fold(0u64, |a, x| a.wrapping_add(x))
        }
        _ => sum_words(buf),
    };
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    (std::mem::size_of_val(buf) as f64 / secs, sum)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_everything() {
        let buf: Vec<u64> = (0..100_003).collect();
        let want = buf.iter().sum::<u64>();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        assert_eq!(super::read_bandwidth(&buf, None).1, want);
        assert_eq!(super::read_bandwidth(&buf, Some(&pool)).1, want);
    }
}
