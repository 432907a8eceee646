//! Memory read bandwidth probes: sum a large buffer with the kernel's threads, so a benchmark
//! can set the kernel's bytes/s against what the machine delivers at the same thread count.
//! [`read_bandwidth`] reads long sequential streams; [`read_bandwidth_scattered`] reads
//! fixed-size slabs in a scattered order, the access pattern of the kernel (one (layer,
//! block) slab of K and one of V per block, at random addresses).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::kernel::{prefetch_page_starts, PREFETCH_BLOCKS};
use crate::team::Team;

/// Parts per thread a probe's reads are split into (claimed in order, as the kernel's items).
const PARTS_PER_THREAD: usize = 4;

/// Sums `read(lo, hi)` over `PARTS_PER_THREAD` parts per thread of `team` covering `0..n`.
fn sum_parts(n: usize, team: Option<&Team>, read: &(dyn Fn(usize, usize) -> u64 + Sync)) -> u64 {
    let team = match team {
        Some(team) if team.num_threads() > 1 => team,
        _ => return read(0, n),
    };
    let parts = team.num_threads() * PARTS_PER_THREAD;
    let sum = AtomicU64::new(0);
    team.run(parts, &|i| {
        sum.fetch_add(read(i * n / parts, (i + 1) * n / parts), Ordering::Relaxed);
    });
    sum.into_inner()
}

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

/// Reads all of `buf` once, in contiguous parts shared by the threads of `team` (the calling
/// thread when `None`). Returns (bytes per second, checksum).
pub fn read_bandwidth(buf: &[u64], team: Option<&Team>) -> (f64, u64) {
    let start = Instant::now();
    let sum = sum_parts(buf.len(), team, &|lo, hi| sum_words(&buf[lo..hi]));
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    (std::mem::size_of_val(buf) as f64 / secs, sum)
}

/// Reads all of `buf` once as `slab_words`-word slabs in a scattered (fixed, pseudo-random)
/// order, in contiguous parts of that order shared by the threads of `team` (the calling
/// thread when `None`); any tail shorter than a slab is not read. The next slab's pages are
/// started while one is summed (see `Job::prefetch_slabs`: the scalar kernel starts every
/// block so, the SIMD kernels an item's first block). Returns (bytes per second, checksum).
pub fn read_bandwidth_scattered(buf: &[u64], slab_words: usize, team: Option<&Team>) -> (f64, u64) {
    let slab_words = slab_words.max(1);
    let n = buf.len() / slab_words;
    // i -> (i * stride) mod n with stride coprime to n: a permutation that jumps far apart.
    let mut stride = (n as u64 * 5 / 8) | 1;
    while gcd(stride, n as u64) != 1 {
        stride += 2;
    }
    let slab = |i: usize| {
        let s = ((i as u64 * stride) % n.max(1) as u64) as usize;
        &buf[s * slab_words..(s + 1) * slab_words]
    };
    let read = |lo: usize, hi: usize| {
        let mut sum = 0u64;
        for i in lo..hi {
            if i + PREFETCH_BLOCKS < hi {
                prefetch_words(slab(i + PREFETCH_BLOCKS));
            }
            sum = sum.wrapping_add(sum_words(slab(i)));
        }
        sum
    };
    let start = Instant::now();
    let sum = sum_parts(n, team, &read);
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    ((n * slab_words * 8) as f64 / secs, sum)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Prefetches the first lines of each 4 KiB page segment of `words`, as the kernel does.
fn prefetch_words(words: &[u64]) {
    prefetch_page_starts(words.as_ptr().cast::<u8>(), std::mem::size_of_val(words));
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_everything() {
        let buf: Vec<u64> = (0..100_003).collect();
        let want = buf.iter().sum::<u64>();
        let team = crate::team::Team::new(3).unwrap();
        assert_eq!(super::read_bandwidth(&buf, None).1, want);
        assert_eq!(super::read_bandwidth(&buf, Some(&team)).1, want);
        for slab in [1, 7, 768, 100_003] {
            let covered = buf.len() / slab * slab;
            let want = buf[..covered].iter().sum::<u64>();
            assert_eq!(super::read_bandwidth_scattered(&buf, slab, None).1, want, "slab {slab}");
            assert_eq!(super::read_bandwidth_scattered(&buf, slab, Some(&team)).1, want, "slab {slab}");
        }
    }
}
