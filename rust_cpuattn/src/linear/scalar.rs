//! The portable path: a few weight rows at a time decoded to f32 (ggml's exact values), then
//! plain dot products against every activation row.

use std::cell::RefCell;

use super::{decode_rows, Activations, Weight};
use crate::isa::Isa;

/// Weight rows decoded per pass.
const ROWS: usize = 4;

thread_local! {
    static ROWS_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn rows_range(w: &Weight<'_>, acts: &Activations<'_>, n0: usize, n1: usize, store: &dyn Fn(usize, usize, f32)) {
    ROWS_F32.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.resize(ROWS * w.cols, 0.0);
        let mut n = n0;
        while n < n1 {
            let end = (n + ROWS).min(n1);
            let values = &mut buf[..(end - n) * w.cols];
            decode_rows(w, n, end, values, Isa::Scalar);
            for (r, row) in values.chunks_exact(w.cols).enumerate() {
                for m in 0..acts.m {
                    let x = &acts.x[m * acts.k..(m + 1) * acts.k];
                    // Four partial sums: a shorter dependency chain, the same rounding class.
                    let mut s = [0f32; 4];
                    for (wc, xc) in row.chunks_exact(4).zip(x.chunks_exact(4)) {
                        for j in 0..4 {
                            s[j] += wc[j] * xc[j];
                        }
                    }
                    let tail = w.cols / 4 * 4;
                    let rest: f32 = row[tail..].iter().zip(&x[tail..]).fold(0.0, |a, (wv, xv)| a + wv * xv);
                    store(m, n + r, ((s[0] + s[1]) + (s[2] + s[3])) + rest);
                }
            }
            n = end;
        }
    });
}
