"""Architectures of the paper's students (Qwen3 0.6B-8B, their HF config.json values), so that
compile-only plans (caopd_jax.plan) need no weights. `model_config(path)` reads path/config.json
when it exists, else the preset named by the directory's basename."""

import os

from caopd_jax.models.config import ModelConfig

_QWEN3 = dict(arch="qwen3", vocab_size=151936, num_kv_heads=8, head_dim=128, rope_theta=1e6,
              rms_norm_eps=1e-6, max_position_embeddings=40960)
PRESETS = {
    "Qwen3-0.6B": dict(_QWEN3, hidden_size=1024, intermediate_size=3072, num_layers=28,
                       num_heads=16, tie_word_embeddings=True),
    "Qwen3-1.7B": dict(_QWEN3, hidden_size=2048, intermediate_size=6144, num_layers=28,
                       num_heads=16, tie_word_embeddings=True),
    "Qwen3-4B": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_layers=36,
                     num_heads=32, tie_word_embeddings=True),
    "Qwen3-8B": dict(_QWEN3, hidden_size=4096, intermediate_size=12288, num_layers=36,
                     num_heads=32, tie_word_embeddings=False),
}


def model_config(path: str, dtype="float32", **options) -> ModelConfig:
  """The ModelConfig of the HF checkpoint at `path` (its config.json), else of the preset named
  like the directory (e.g. /models/Qwen3-8B); `options`: ModelConfig execution options."""
  if os.path.exists(os.path.join(path, "config.json")):
    import transformers  # pylint: disable=g-import-not-at-top
    from caopd_jax.models.hf_io import config_from_hf  # pylint: disable=g-import-not-at-top
    return config_from_hf(transformers.AutoConfig.from_pretrained(path), dtype).replace(**options)
  name = os.path.basename(os.path.normpath(path))
  if name not in PRESETS:
    raise FileNotFoundError(f"No HF model at {path!r} and no preset named {name!r} "
                            f"(presets: {sorted(PRESETS)}).")
  return ModelConfig(**PRESETS[name], dtype=dtype, **options)
