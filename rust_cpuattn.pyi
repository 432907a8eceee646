"""Paged decode attention on the host CPU (Rust extension module).

Arrays may be torch CPU tensors or numpy arrays; they are read in place (zero-copy) and must
be C-contiguous. bfloat16 KV pools may also travel as 16-bit integers (numpy has no bf16).
Every call validates shapes, dtypes and indices and raises ValueError on bad input.

Memory contract. The GIL is released while a call runs. Until it returns, no other thread may
resize or free any array passed to it, read `out`, or write any array but the KV pools.
KV pools ([L, num_blocks, Hkv, block_size, D]) are shared per slab, a slab being
pool[layer, block] (all KV heads and rows of one block in one layer): a call touches only the
slabs its function names (paged_decode_attention, copy_blocks), and until it returns nobody
else may write a slab it reads, nor read or write a slab it writes. Every other slab of the
same pools may be read and written by other threads meanwhile (a swap into other blocks, a
prefill writing other blocks, another kernel call): the extension never holds a reference to
a whole pool.
"""

from typing import Any, TypeAlias

# A torch CPU tensor or a numpy array.
Array: TypeAlias = Any

def paged_decode_attention(
    q: Array,
    k_cache: Array,
    v_cache: Array,
    block_table: Array,
    rows: Array,
    seq_lens: Array,
    layer: int,
    scale: float,
    out: Array | None = None,
    k_new: Array | None = None,
    v_new: Array | None = None,
) -> Array:
    """Decode attention of one new token per request over its paged KV cache.

    q: [B, Hq, D] float32. k_cache, v_cache: [L, num_blocks, Hkv, block_size, D], float32,
    float16 or bfloat16 (same dtype and shape). block_table: [R, W] int32 block ids.
    rows, seq_lens: [B] int32; request b reads block_table[rows[b]] and attends to its first
    seq_lens[b] tokens (1 <= seq_lens[b] <= W * block_size; the new token included).
    Hq must be a multiple of Hkv (grouped-query attention). layer < L.
    k_new, v_new: [B, Hkv, D] in the cache dtype or float32; when given they are first stored
    at position seq_lens[b] - 1 of each request (in `layer`).
    out: [B, Hq, D] float32, written and returned; a new numpy array when None.

    Slabs touched (see the module's memory contract): reads the slabs
    [layer, block_table[rows[b], j]] of k_cache and v_cache for each request b and
    j < ceil(seq_lens[b] / block_size), whole (rows past seq_lens[b] in the last block may be
    read, never used); nothing else of the pools. With k_new/v_new, writes only the row
    [layer, block_table[rows[b], (seq_lens[b] - 1) // block_size], :, (seq_lens[b] - 1) %
    block_size] of each request, inside those slabs. Other slabs, other layers of the same
    blocks included, are free for other threads.
    """

def reference_paged_decode_attention(
    q: Array,
    k_cache: Array,
    v_cache: Array,
    block_table: Array,
    rows: Array,
    seq_lens: Array,
    layer: int,
    scale: float,
    out: Array | None = None,
    k_new: Array | None = None,
    v_new: Array | None = None,
) -> Array:
    """Same contract as paged_decode_attention (the same slabs at most), computed by the plain
    reference kernel (single thread, float64 arithmetic): for tests."""

def set_num_threads(num_threads: int) -> None:
    """Sets the size of the kernel's thread team (1 = run on the calling thread): the calling
    thread plus num_threads - 1 helpers, separate from torch's threads, which poll for the next
    call for RUST_CPUATTN_POLL_US (default 1000) microseconds after each. Default size:
    RUST_CPUATTN_NUM_THREADS or the CPU count."""

def get_num_threads() -> int:
    """The number of kernel threads calls use."""

def isa() -> str:
    """The SIMD path in use: "avx512bf16", "avx512", "avx2" or "scalar". The environment
    variable RUST_CPUATTN_ISA forces one (ValueError here and on every call if this CPU lacks
    it). "avx512bf16" uses bf16 dot products only for bf16 caches with bf16-exact q, and is
    otherwise the "avx512" path."""

def supported_isas() -> list[str]:
    """Every SIMD path this CPU supports, best first."""

def read_bandwidth(buffer: Array, slab_bytes: int | None = None) -> float:
    """Reads the whole (contiguous, 8-byte aligned) array once with the kernel's threads and
    returns bytes per second: the machine's read bandwidth at the kernel's thread count, when
    the array is several times the last-level cache. With slab_bytes (a multiple of 8), reads
    it as slabs of that size in a scattered order, as the kernel reads KV blocks."""

def copy_blocks(
    src_k: Array,
    src_v: Array,
    dst_k: Array,
    dst_v: Array,
    src_block_ids: Array | list[int],
    dst_block_ids: Array | list[int],
    layers: tuple[int, int] | None = None,
) -> int:
    """Copies block src_block_ids[i] of the source pools to block dst_block_ids[i] of the
    destination pools, in every layer (or layers start..stop), for K and V.

    Pools: [L, num_blocks, Hkv, block_size, D], same dtype and shape except num_blocks
    (e.g. a device pool and a host pool). Ids: int32/int64 arrays or int sequences, same
    length; destination ids distinct. Pairs are coalesced into runs of consecutive blocks
    (one memcpy per layer and run) and copied on the kernel's threads with the GIL released.
    Returns the number of runs per layer. Raises ValueError on bad input.

    Slabs touched (see the module's memory contract): reads only the slabs
    [l, src_block_ids[i]] of src_k and src_v and writes only the slabs [l, dst_block_ids[i]]
    of dst_k and dst_v, for l in layers. Other slabs of the four pools are free for other
    threads. The destination pools must not overlap each other or the source pools.
    """

class DecodeTicket:
    """One decode call queued on a `HostLane`."""

    @property
    def done(self) -> bool:
        """Whether the call has run."""

    def wait(self) -> None:
        """Blocks, with the GIL released, until the call has run; raises ValueError if it
        failed. A ticket dropped before the call ran waits for it first (the ticket keeps the
        call's arrays alive)."""

class HostLane:
    """A worker thread that runs decode calls in submission order without the GIL (the host
    lane of pipelining): submitting returns at once, so the caller goes on meanwhile."""

    def __init__(self, name: str = "neo-host-lane") -> None: ...
    def submit_decode(
        self,
        q: Array,
        k_cache: Array,
        v_cache: Array,
        block_table: Array,
        rows: Array,
        seq_lens: Array,
        layer: int,
        scale: float,
        out: Array,
        k_new: Array | None = None,
        v_new: Array | None = None,
    ) -> DecodeTicket:
        """`paged_decode_attention`'s call, validated now (ValueError on bad input), run on the
        lane's thread. Until the ticket's `wait` returns, the caller must not read `out` nor
        write any array of the call (the KV pools' other slabs excepted: the memory contract)."""

    def drain(self) -> None:
        """Returns once every call submitted so far has run."""

# GGUF dequantisation.

def dequantize(ggml_type: int, src: Any, out: Array, dest_rows: Array | None = None) -> None:
    """Dequantises the GGUF blocks in `src` (any C-contiguous buffer: a slice of the file's
    memory map is read in place) into `out` (float32, float16 or bfloat16, C-contiguous, rows of
    out.shape[-1] values), with ggml's float32 operations in ggml's order, each stored value
    rounded once to out's dtype. `dest_rows` (an int64 permutation of the rows) writes stored
    row r to out row dest_rows[r]. Runs on rayon's threads with the GIL released. Raises ValueError on an
    unknown or unsupported type, sizes that do not match, or overlapping arrays."""

def pack_blocked(src: Array, out: Array, n_block: int, k_block: int, k_pair: int, k_blocks_inner: bool = True) -> None:
    """Writes the weight `src` ([n, k], C-contiguous, float32, float16 or bfloat16) into `out`
    (1-D, same dtype, exactly the padded size) in a blocked layout: blocks of n_block rows by
    k_block columns (n and k padded with zeros to whole blocks), row-block major when
    k_blocks_inner; inside a block, element (r, c) at ((c // k_pair) * n_block + r) * k_pair +
    c % k_pair (oneDNN's `AB16b64a2b` is 64, 32, 2). Runs on rayon's threads with the GIL
    released. Raises ValueError on a bad layout, sizes that do not match, or overlapping arrays."""

# Row-wise layer operations. Rows: 2-D C-contiguous float32, float16 or bfloat16 arrays;
# parameters: float32. Arithmetic in float32, each stored value rounded once. Results go into
# the caller's arrays (which must not overlap the inputs). Raise ValueError on bad input.

def rms_norm(x: Array, weight: Array, eps: float, out: Array) -> None:
    """out = x * rsqrt(mean(x^2, -1) + eps) * weight; x, out [T, H]; weight [H]."""

def add_rms_norm(residual: Array, x: Array, weight: Array, eps: float, out: Array) -> None:
    """residual += x in place (rounded to its dtype), then out = rms_norm(residual)."""

def rope(x: Array, cos: Array, sin: Array, num_heads: int) -> None:
    """Rotates in place the first num_heads heads of each row of x [T, W]; head_dim is
    2 * cos.shape[1]; cos, sin [T, head_dim / 2]; "rotate half": (x1, x2) -> (x1 cos - x2 sin,
    x2 cos + x1 sin) over the two halves of each head."""

def silu_mul(gate_up: Array, out: Array) -> None:
    """out = silu(gate) * up where each row of gate_up [T, 2I] is [gate | up]; out [T, I].
    The SiLU is rounded to the dtype before the product (as an unfused silu(gate) * up)."""

class StoredWeight:
    """A weight [rows, cols] in its stored format, copied once into memory the extension owns:
    `ggml_type` is a ggml type id (GGUF blocks Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, or
    F32/F16/BF16 values); src is any C-contiguous buffer of exactly rows * row_bytes bytes.
    ValueError for sizes that do not match or an unknown type."""

    rows: int
    cols: int
    ggml_type: int
    nbytes: int
    def __init__(self, ggml_type: int, src: Any, rows: int, cols: int) -> None: ...
    def matmul(
        self, x: Array, out: Array, offset: int = 0, isa: str | None = None, reference: bool = False, arith: str = "f32"
    ) -> None:
        """out[m, offset + n] = sum_k x[m, k] * W[n, k], with the GIL released. x [M, cols] and
        out [M, stride] float32, float16 or bfloat16 (C-contiguous, disjoint), offset + rows <=
        stride; each weight value is ggml's dequantised f32 value, every product and sum f32,
        the result rounded once to out's dtype. Runs on the linear team (set_linear_threads)
        and the SIMD path `isa` (default: RUST_CPUATTN_ISA or the best); `reference`: the plain
        oracle. arith="int8": for Q4_0/Q4_1/Q8_0 weights, each activation row quantised to 8-bit
        blocks of 32 values (scale max|x|/127) and multiplied by integer dot products, one f32
        scale per block (error per block at most max|x|/254 * sum|w|); other types run f32."""

def set_linear_threads(num_threads: int) -> None:
    """The linear kernels' team size (default: RUST_CPUATTN_LINEAR_THREADS or every core)."""

def get_linear_threads() -> int: ...
