"""Architecture facts of a Llama-family decoder, independent of where weights come from."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 style (`llama3`) or `linear` position scaling of the rotary frequencies."""

    kind: str  # "llama3" | "linear"
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelSpec:
    """The whole model's facts, or (`shard`) one tensor-parallel rank's: then num_heads,
    num_kv_heads and intermediate_size are that rank's share, and every derived size (q_size,
    kv_size, kv_bytes_per_token) is per rank; head_dim, and so attn_scale, are the model's."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    rope_scaling: RopeScaling | None = None
    rope_freq_factors: tuple[float, ...] | None = None  # GGUF `rope_freqs`: divides each inverse frequency
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    tp_rank: int = 0  # this spec's tensor-parallel rank (0 for the whole model)
    tp_size: int = 1  # ranks the model is split over; 1: the whole model

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2 or not 16 <= self.head_dim <= 256:
            raise ValueError(f"head_dim must be even and in [16, 256], got {self.head_dim}")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def attn_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    def tp_problems(self, size: int) -> list[str]:
        """Why the model cannot be split over `size` tensor-parallel ranks (empty: it can)."""
        problems = []
        if self.num_heads % size:
            problems.append(f"num_heads {self.num_heads} is not a multiple of {size}")
        if size <= self.num_kv_heads and self.num_kv_heads % size:
            problems.append(f"num_kv_heads {self.num_kv_heads} is not a multiple of {size}")
        if size > self.num_kv_heads and size % self.num_kv_heads:  # replication needs whole copies
            problems.append(f"{size} is not a multiple of num_kv_heads {self.num_kv_heads} (KV heads are replicated)")
        if self.intermediate_size % size:
            problems.append(f"intermediate_size {self.intermediate_size} is not a multiple of {size}")
        return problems

    def shard(self, rank: int, size: int) -> ModelSpec:
        """The facts one of `size` tensor-parallel ranks sees: its num_heads / size query heads,
        its num_kv_heads / size KV heads (one, replicated on size / num_kv_heads ranks, when size
        exceeds them, as vLLM does) and intermediate_size / size. Raises ValueError naming every
        count that `size` does not divide."""
        if self.tp_size != 1:
            raise ValueError(f"spec is already rank {self.tp_rank} of {self.tp_size}")
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"tensor-parallel rank {rank} of size {size} is out of range")
        problems = self.tp_problems(size)
        if problems:
            raise ValueError(f"tensor-parallel size {size} does not split {self.name}: " + "; ".join(problems))
        if size == 1:
            return self
        return dataclasses.replace(
            self,
            num_heads=self.num_heads // size,
            num_kv_heads=max(1, self.num_kv_heads // size),
            intermediate_size=self.intermediate_size // size,
            tp_rank=rank,
            tp_size=size,
        )

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V of one token over all layers."""
        return 2 * self.num_layers * self.kv_size * dtype_bytes
