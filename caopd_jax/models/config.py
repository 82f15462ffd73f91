"""Model configuration shared by the Llama, Qwen2 and Qwen3 decoder families.

The three families differ only in switches: Qwen2 adds q/k/v projection biases, Qwen3 adds an
RMSNorm over each head of q and k (before RoPE), Llama 3 may rescale RoPE frequencies.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp

ARCHS = ("llama", "qwen2", "qwen3")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  arch: str = "qwen3"
  rope_theta: float = 10000.0
  # Llama-3 style frequency rescaling as a hashable tuple of (key, value) pairs, or None.
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 4096
  dtype: str = "float32"  # compute dtype; parameters are always float32

  def __post_init__(self):
    if self.arch not in ARCHS:
      raise ValueError(f"Unknown arch {self.arch!r}; supported: {ARCHS}.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}.")
    if self.dtype not in _DTYPES:
      raise ValueError(f"Unknown dtype {self.dtype!r}; supported: {tuple(_DTYPES)}.")

  @property
  def qkv_bias(self) -> bool:  # Qwen2: biases on the q/k/v projections
    return self.arch == "qwen2"

  @property
  def qk_norm(self) -> bool:  # Qwen3: RMSNorm over each head of q and k, before RoPE
    return self.arch == "qwen3"

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def tiny(cls, arch="qwen3", vocab_size=64, **kw) -> "ModelConfig":
    """A few-thousand-parameter model for tests and toy tasks."""
    base = dict(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=8, intermediate_size=64, arch=arch)
    base.update(kw)
    return cls(**base)
