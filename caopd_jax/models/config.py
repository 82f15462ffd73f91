"""Model configuration shared by the Llama, Qwen2 and Qwen3 decoder families.

The three families differ only in switches: Qwen2 adds q/k/v projection biases, Qwen3 adds an
RMSNorm over each head of q and k (before RoPE), Llama 3 may rescale RoPE frequencies.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp

ARCHS = ("llama", "qwen2", "qwen3")
REMAT = ("none", "full", "save_dots")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")

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
  dtype: str = "float32"  # compute dtype of the matmuls (norms, softmax, logits: float32)
  # Execution options (not part of the HF architecture; load_hf / ModelConfig(...) set them):
  param_dtype: str = "float32"  # dtype parameters are stored in
  remat: str = "none"  # per-layer rematerialisation: none | full | save_dots
  scan_layers: bool = False  # one lax.scan over stacked layer parameters (compile time ~ depth-free)
  # Low-rank adapters (caopd_jax.models.lora) on these projections; rank 0: none.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ()
  lora_dropout: float = 0.0

  def __post_init__(self):
    if self.arch not in ARCHS:
      raise ValueError(f"Unknown arch {self.arch!r}; supported: {ARCHS}.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}.")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"Unknown {name} {getattr(self, name)!r}; supported: {tuple(_DTYPES)}.")
    if self.remat not in REMAT:
      raise ValueError(f"Unknown remat policy {self.remat!r}; supported: {REMAT}.")
    unknown = set(self.lora_targets) - set(LORA_TARGETS)
    if unknown or self.lora_rank < 0 or not 0 <= self.lora_dropout < 1 or (
        self.lora_rank and not self.lora_targets):
      raise ValueError(f"Bad LoRA settings: rank {self.lora_rank}, targets {self.lora_targets} "
                       f"(valid: {LORA_TARGETS}), dropout {self.lora_dropout}.")

  @property
  def qkv_bias(self) -> bool:  # Qwen2: biases on the q/k/v projections
    return self.arch == "qwen2"

  @property
  def qk_norm(self) -> bool:  # Qwen3: RMSNorm over each head of q and k, before RoPE
    return self.arch == "qwen3"

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def params_dtype(self):
    return _DTYPES[self.param_dtype]

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def tiny(cls, arch="qwen3", vocab_size=64, **kw) -> "ModelConfig":
    """A few-thousand-parameter model for tests and toy tasks."""
    base = dict(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=8, intermediate_size=64, arch=arch)
    base.update(kw)
    return cls(**base)
