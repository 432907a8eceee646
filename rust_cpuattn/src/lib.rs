//! Paged decode attention on the host CPU for requests whose KV cache lives in host memory.
//!
//! Pure Rust core (the Python binding lives in `python/`): typed slices in, `Result` out.
//! Pools are `[num_layers, num_blocks, num_kv_heads, block_size, head_dim]` (see [`Layout`]).
//!
//! Calls take pools as views ([`KvPool`], [`KvPoolMut`], built from slices or, unsafely,
//! from raw parts) and touch only the (layer, block) slabs they name; with raw views, other
//! threads may read and write the other slabs of the same pools meanwhile (the pool contract
//! of [`pool`]). A decode call reads the slabs of the blocks its requests use in `layer` and
//! writes only its output and the stored rows; a block copy reads the source slabs it names
//! and writes the destination slabs it names.
//!
//! - [`paged_decode_attention_reference`]: the plain reference kernel (the oracle).
//! - [`paged_decode_attention`]: the fast kernel (SIMD path chosen at run time, the crate's
//!   thread team); [`paged_decode_attention_with`] takes an explicit [`KernelConfig`].
//! - [`store_new_rows`]: writes the new token's K/V rows before attention.
//! - [`copy::copy_blocks`]: copies (layer, block) slabs between pools (swaps).
//! - [`lane::Lane`]: a worker thread running jobs in order with a ticket to wait on (the host
//!   lane of pipelining).
//! - [`pack::pack_blocked`]: a row-major weight rewritten in a blocked (oneDNN-style) layout.
//! - [`linear`]: `x @ W^T` with W as stored (GGUF blocks, f16/bf16), for decode-sized batches.
//! - [`rowops`]: RMSNorm, residual add + RMSNorm, RoPE, SiLU-gated product over rows.
//! - [`decoder`]: a decoder layer's halves around attention (rowops and projections), one call each.

pub mod bandwidth;
pub mod copy;
pub mod decoder;
pub mod dequant;
mod error;

pub mod dtype;
pub mod isa;
mod kernel;
pub mod lane;
pub mod layout;
pub mod linear;
pub mod pack;
pub mod partition;
pub mod pool;
pub mod reference;
pub mod rowops;
pub mod store;
pub mod team;
pub mod threads;

pub use dtype::{KvDtype, KvElem, KvSlice, KvSliceMut};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use isa::Isa;
pub use kernel::{paged_decode_attention_with, KernelConfig};
pub use layout::{BlockTable, DecodeArgs, Layout};
pub use pool::{KvPool, KvPoolMut, PoolMut, PoolRef};
pub use reference::paged_decode_attention_reference;
pub use store::store_new_rows;

/// Paged decode attention with the fast kernel on the crate's thread team
/// ([`threads::set_num_threads`]) and the selected ISA ([`Isa::selected`]). Same results (to
/// f32 rounding) as [`paged_decode_attention_reference`]; bitwise repeatable for a given
/// thread count and ISA. Reads, of the pools, the whole (layer, block) slabs of the blocks the
/// requests use (see [`BlockTable`]) and nothing else; writes only `out`.
pub fn paged_decode_attention<'k>(
    args: &DecodeArgs<'_>,
    layout: &Layout,
    k_cache: impl Into<KvPool<'k>>,
    v_cache: impl Into<KvPool<'k>>,
    out: &mut [f32],
) -> Result<()> {
    let team = threads::team()?;
    let config = KernelConfig { isa: Some(Isa::selected()?), team: Some(&team), max_item_blocks: None };
    paged_decode_attention_with(args, layout, k_cache, v_cache, out, &config)
}
