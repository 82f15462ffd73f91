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
