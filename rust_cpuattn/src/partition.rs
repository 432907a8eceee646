//! Split-K partition of a decode batch into work items.
//!
//! An item is a range of blocks of one request, over all its KV heads (so it reads whole
//! contiguous (layer, block) slabs). The partition depends only on the lengths, the block
//! size and the thread count, so results are bitwise repeatable for a given thread count.

/// Blocks `[block_start, block_end)` of request `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub seq: usize,
    pub block_start: usize,
    pub block_end: usize,
}

/// Items per thread aimed at (room for uneven lengths without tiny items).
const ITEMS_PER_THREAD: usize = 3;
/// No item shorter than this many tokens is split off (merging has a cost).
const MIN_ITEM_TOKENS: usize = 256;

/// Items in request order; the items of one request are consecutive and in block order.
/// `max_item_blocks` forces splitting (for tests); otherwise one thread never splits.
pub fn partition(seq_lens: &[i32], block_size: usize, num_threads: usize, max_item_blocks: Option<usize>) -> Vec<Item> {
    let blocks: Vec<usize> = seq_lens.iter().map(|&n| (n.max(0) as usize).div_ceil(block_size)).collect();
    let total: usize = blocks.iter().sum();
    let chunk = match max_item_blocks {
        Some(m) => m.max(1),
        None if num_threads <= 1 => usize::MAX,
        None => total.div_ceil(num_threads * ITEMS_PER_THREAD).max(MIN_ITEM_TOKENS.div_ceil(block_size)).max(1),
    };
    let mut items = Vec::new();
    for (seq, &nb) in blocks.iter().enumerate() {
        let parts = nb.div_ceil(chunk).max(1);
        for p in 0..parts {
            items.push(Item { seq, block_start: p * nb / parts, block_end: (p + 1) * nb / parts });
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_cover_each_request_once_in_order() {
        let lens = [1, 16, 17, 4097, 300, 1000];
        for threads in [1, 2, 3, 7] {
            for forced in [None, Some(1), Some(3)] {
                let items = partition(&lens, 16, threads, forced);
                for (seq, &n) in lens.iter().enumerate() {
                    let mine: Vec<_> = items.iter().filter(|i| i.seq == seq).collect();
                    assert_eq!(mine[0].block_start, 0);
                    assert_eq!(mine.last().unwrap().block_end, (n as usize).div_ceil(16));
                    for w in mine.windows(2) {
                        assert_eq!(w[0].block_end, w[1].block_start);
                        assert!(w[0].block_start < w[0].block_end);
                    }
                }
                if let Some(m) = forced {
                    assert!(items.iter().all(|i| i.block_end - i.block_start <= m));
                }
            }
        }
    }

    #[test]
    fn one_thread_never_splits_and_long_requests_split_with_more() {
        assert_eq!(partition(&[4097], 16, 1, None).len(), 1);
        let items = partition(&[4096], 16, 2, None);
        assert_eq!(items.len(), 6);
        // Batch 16 x 1024 on two threads: enough items already, no split.
        assert_eq!(partition(&[1024; 16], 16, 2, None).len(), 16);
    }
}
