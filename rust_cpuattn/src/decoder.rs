//! The two halves of a Llama-family decoder layer around its attention, for decode-sized
//! batches on the CPU: `pre` (RMSNorm, QKV projection, bias, RoPE) and `post` (output
//! projection, residual add + RMSNorm, gate+up projection, SiLU-gated product, down
//! projection, residual add), each one call instead of a chain of small ones.
//!
//! Contract: the results equal, bit for bit, the same steps run one call at a time through
//! [`rowops`] and [`linear`] (the attention output rounded to the element type before the
//! output projection, the bias added in f32 then rounded), for any team. Intermediate rows live
//! in a per-thread scratch buffer that grows to the largest call and is then reused.

use std::cell::RefCell;

use crate::dtype::KvElem;
use crate::error::{bail, Result};
use crate::linear::{self, Arith, Out, Weight};
use crate::rowops;
use crate::team::Team;
use crate::Isa;

/// A projection `[rows, cols]` as runs of stored weights, run r writing output columns
/// `[starts[r], starts[r] + runs[r].rows)`; the runs tile the rows.
pub struct Projection<'a> {
    pub runs: Vec<(usize, Weight<'a>)>,
    pub rows: usize,
    pub cols: usize,
}

impl<'a> Projection<'a> {
    pub fn new(runs: Vec<(usize, Weight<'a>)>) -> Result<Self> {
        let Some((_, first)) = runs.first() else { bail!("a projection needs at least one run") };
        let cols = first.cols;
        let mut rows = 0;
        for (start, w) in &runs {
            if *start != rows || w.cols != cols {
                bail!("the runs do not tile the projection (run at row {start} of {} x {}, expected row {rows} of {cols} columns)", w.rows, w.cols);
            }
            rows += w.rows;
        }
        Ok(Projection { runs, rows, cols })
    }

    fn apply<T: KvElem>(&self, x: &[T], y: &mut [T], exec: &Exec<'_>) -> Result<()> {
        for (start, w) in &self.runs {
            let out = Out { y: T::tag_mut(y), stride: self.rows, offset: *start };
            linear::linear_arith_with(w, T::tag(x), out, exec.isa, exec.team, exec.arith)?;
        }
        Ok(())
    }
}

/// One layer's weights.
pub struct LayerWeights<'a> {
    pub attn_norm: &'a [f32],
    pub qkv: Projection<'a>,
    pub qkv_bias: Option<&'a [f32]>,
    /// Heads of the QKV rows that RoPE rotates (query heads + KV heads).
    pub rotated_heads: usize,
    pub o: Projection<'a>,
    pub mlp_norm: &'a [f32],
    pub gate_up: Projection<'a>,
    pub down: Projection<'a>,
    pub eps: f32,
}

/// How the projections run.
pub struct Exec<'t> {
    pub isa: Isa,
    pub team: Option<&'t Team>,
    pub arith: Arith,
}

impl LayerWeights<'_> {
    /// Checks that the shapes chain: hidden -> qkv, q -> hidden, hidden -> 2 I -> hidden.
    pub fn check(&self) -> Result<()> {
        let h = self.attn_norm.len();
        let shapes_ok = self.mlp_norm.len() == h
            && self.qkv.cols == h
            && self.o.rows == h
            && self.o.cols <= self.qkv.rows
            && self.gate_up.cols == h
            && self.gate_up.rows == 2 * self.down.cols
            && self.down.rows == h
            && self.qkv_bias.is_none_or(|b| b.len() == self.qkv.rows);
        if !shapes_ok {
            bail!(
                "layer shapes do not chain: hidden {h}, mlp_norm {}, qkv {}x{}, o {}x{}, gate_up {}x{}, down {}x{}, bias {:?}",
                self.mlp_norm.len(), self.qkv.rows, self.qkv.cols, self.o.rows, self.o.cols,
                self.gate_up.rows, self.gate_up.cols, self.down.rows, self.down.cols, self.qkv_bias.map(<[f32]>::len)
            );
        }
        if !(self.eps >= 0.0) {
            bail!("eps must be >= 0, got {}", self.eps);
        }
        Ok(())
    }
}

fn rows_of(name: &str, len: usize, width: usize) -> Result<usize> {
    if width == 0 || len % width != 0 {
        bail!("{name} has {len} elements, not a whole number of rows of {width}");
    }
    Ok(len / width)
}

/// `qkv = rope(rms_norm(hidden) @ W_qkv^T + bias)`: hidden `[T, H]`, qkv `[T, qkv.rows]`, cos
/// and sin `[T, head_dim / 2]`.
pub fn pre<T: KvElem>(
    w: &LayerWeights<'_>,
    hidden: &[T],
    cos: &[f32],
    sin: &[f32],
    qkv: &mut [T],
    exec: &Exec<'_>,
) -> Result<()> {
    w.check()?;
    let h = w.attn_norm.len();
    let t = rows_of("hidden", hidden.len(), h)?;
    if qkv.len() != t * w.qkv.rows {
        bail!("qkv has {} elements, expected {t} x {}", qkv.len(), w.qkv.rows);
    }
    with_scratch(&[t * h], |[x]: [&mut [T]; 1]| {
        rowops::rms_norm(hidden, w.attn_norm, w.eps, x)?;
        w.qkv.apply(x, qkv, exec)?;
        if let Some(bias) = w.qkv_bias {
            for row in qkv.chunks_exact_mut(w.qkv.rows) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v = T::from_f32(v.to_f32() + b);
                }
            }
        }
        rowops::rope(qkv, w.qkv.rows, w.rotated_heads, cos, sin)
    })
}

/// `hidden += mlp(add_rms_norm(hidden, attn @ W_o^T))`, in place: hidden `[T, H]`, attn
/// `[T, o.cols]` f32 (rounded to the element type first).
pub fn post<T: KvElem>(w: &LayerWeights<'_>, hidden: &mut [T], attn: &[f32], exec: &Exec<'_>) -> Result<()> {
    w.check()?;
    let h = w.attn_norm.len();
    let t = rows_of("hidden", hidden.len(), h)?;
    if attn.len() != t * w.o.cols {
        bail!("attn has {} elements, expected {t} x {}", attn.len(), w.o.cols);
    }
    let inter = w.down.cols;
    let sizes = [t * w.o.cols, t * h, t * h, t * 2 * inter, t * inter];
    with_scratch(&sizes, |[a, o, x, gate_up, act]: [&mut [T]; 5]| {
        for (d, s) in a.iter_mut().zip(attn) {
            *d = T::from_f32(*s);
        }
        w.o.apply(a, o, exec)?;
        rowops::add_rms_norm(hidden, o, w.mlp_norm, w.eps, x)?;
        w.gate_up.apply(x, gate_up, exec)?;
        rowops::silu_mul(gate_up, inter, act)?;
        let down = &mut o[..]; // o is consumed: its rows hold the down projection
        w.down.apply(act, down, exec)?;
        rowops::add(hidden, down)
    })
}

thread_local! {
    /// Scratch memory in 64-byte chunks, reused by every call on this thread.
    static SCRATCH: RefCell<Vec<[u64; 8]>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with N disjoint scratch slices of `sizes[i]` elements, holding whatever an earlier
/// call left there (`f` writes each element before it reads it).
fn with_scratch<T: KvElem, const N: usize, R>(sizes: &[usize; N], f: impl FnOnce([&mut [T]; N]) -> R) -> R {
    const CHUNK: usize = 64;
    let elem = std::mem::size_of::<T>();
    let chunks: Vec<usize> = sizes.iter().map(|n| (n * elem).div_ceil(CHUNK)).collect();
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        let total: usize = chunks.iter().sum();
        if buf.len() < total {
            buf.resize(total, [0; 8]);
        }
        let mut rest: &mut [[u64; 8]] = &mut buf[..];
        let parts: [&mut [T]; N] = std::array::from_fn(|i| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(chunks[i]);
            rest = tail;
            // SAFETY: `head` is chunks[i] * 64 >= sizes[i] * size_of::<T>() bytes, 8-byte
            // aligned (T needs at most 4), exclusively borrowed and disjoint from every other part; T (f32, f16,
            // bf16) is valid for any bit pattern.
            unsafe { std::slice::from_raw_parts_mut(head.as_mut_ptr() as *mut T, sizes[i]) }
        });
        f(parts)
    })
}
