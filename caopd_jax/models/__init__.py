"""Decoder-only language models (Llama, Qwen2, Qwen3) and HF checkpoint I/O."""

from caopd_jax.models.config import ModelConfig
from caopd_jax.models.hf_io import config_from_hf, config_to_hf, load_hf, save_hf
from caopd_jax.models.transformer import Transformer, init_cache

__all__ = ["ModelConfig", "Transformer", "init_cache", "load_hf", "save_hf", "config_from_hf",
           "config_to_hf"]
