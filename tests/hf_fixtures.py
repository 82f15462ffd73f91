"""Tiny random HF checkpoints built with transformers + torch, saved locally (no hub access)."""

import os

import numpy as np

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
            max_position_embeddings=256)


def make_hf_model(arch, tied=False, seed=0, **overrides):
  import torch
  import transformers
  kw = dict(TINY, tie_word_embeddings=tied, rope_theta=500.0 if arch != "llama" else 10000.0)
  kw.update(overrides)
  cfg = transformers.AutoConfig.for_model(arch, **kw)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
  with torch.no_grad():  # random biases/norm scales so every parameter is exercised
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def save_hf_model(model, path, **kw):
  os.makedirs(path, exist_ok=True)
  model.save_pretrained(path, **kw)
  return path


def hf_logits(model, ids, attention_mask=None):
  import torch
  with torch.no_grad():
    out = model(input_ids=torch.tensor(np.asarray(ids), dtype=torch.long),
                attention_mask=None if attention_mask is None else torch.tensor(np.asarray(attention_mask)))
  return out.logits.float().numpy()


def tiny_model_dir(path, tokenizer, seed, hidden=16):
  """A 1-layer random decoder over `tokenizer`, saved with save_hf (our own writer)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from caopd_jax.models import ModelConfig, Transformer, save_hf  # pylint: disable=import-outside-toplevel
  cfg = ModelConfig.tiny(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=8, intermediate_size=32)
  save_hf(Transformer(cfg, rngs=nnx.Rngs(seed)), str(path), tokenizer=tokenizer)
  return str(path)
