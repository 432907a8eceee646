//! Paged decode attention on the host CPU for requests whose KV cache lives in host memory.
//!
//! Pure Rust core (the Python binding lives in `python/`): typed slices in, `Result` out.
//! Pools are `[num_layers, num_blocks, num_kv_heads, block_size, head_dim]` (see [`Layout`]).
//!
//! - [`paged_decode_attention_reference`]: the plain reference kernel (the oracle).
//! - [`store_new_rows`]: writes the new token's K/V rows before attention.

mod error;

pub mod dtype;
pub mod layout;
pub mod reference;
pub mod store;

pub use dtype::{KvDtype, KvElem, KvSlice, KvSliceMut};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use layout::{BlockTable, DecodeArgs, Layout};
pub use reference::paged_decode_attention_reference;
pub use store::store_new_rows;

/// Paged decode attention: the public entry point (see [`paged_decode_attention_reference`]
/// for the contract).
pub fn paged_decode_attention(
    args: &DecodeArgs<'_>,
    layout: &Layout,
    k_cache: KvSlice<'_>,
    v_cache: KvSlice<'_>,
    out: &mut [f32],
) -> Result<()> {
    paged_decode_attention_reference(args, layout, k_cache, v_cache, out)
}
