"""Low-rank adapters (LoRA, Hu et al. 2021) on the attention and MLP projections.

A target projection W (one of q, k, v, o, gate, up, down) gains adapters A [in, r] and B [r, out]
(`LoRAParam`s; B starts at 0, so training starts from the base model) and computes
  x W + (alpha / r) dropout(x) A B.
`nnx.split(model, LoRAParam, nnx.Param)` separates the adapters (trained) from the base (frozen;
caopd_jax.train.step's `state.frozen`, one copy shared by the student and an EMA teacher of
the adapters). `merge` folds the adapters into W for a plain HF export; `save_peft` writes them in
PEFT's format (adapter_config.json + adapter_model.safetensors), loadable with
`peft.PeftModel.from_pretrained`.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

_HF = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
       "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
       "down": "mlp.down_proj"}


class LoRAParam(nnx.Param):
  """A low-rank adapter parameter (the only ones trained in a LoRA run)."""


def adapter_axes(name, w_axes):
  """(A axes, B axes) for a projection with logical axes `w_axes`: the rank axis is unsharded."""
  if name == "o":  # [h, dh, d]: in = (h, dh)
    return (w_axes[0], w_axes[1], None), (None, w_axes[2])
  return (w_axes[0], None), (None,) + tuple(w_axes[1:])


def add_adapters(module, names, cfg, rngs, axes):
  """Creates `{name}_lora_a` / `{name}_lora_b` on `module` for every target in `names`."""
  r = cfg.lora_rank
  if not r:
    return
  for name in names:
    if name not in cfg.lora_targets:
      continue
    w = getattr(module, name)[...]
    a_axes, b_axes = adapter_axes(name, axes[name])
    a_shape = w.shape[:2] + (r,) if name == "o" else (w.shape[0], r)
    b_shape = (r, w.shape[-1]) if name == "o" else (r,) + w.shape[1:]
    a = jax.random.normal(rngs.params(), a_shape, jnp.float32) / np.sqrt(a_shape[0])
    setattr(module, f"{name}_lora_a", LoRAParam(a.astype(cfg.params_dtype), logical_axes=a_axes))
    setattr(module, f"{name}_lora_b", LoRAParam(jnp.zeros(b_shape, cfg.params_dtype),
                                                logical_axes=b_axes))


def delta(module, name, x, cfg, key=None):
  """(alpha / r) dropout(x) A B for target `name`, or None when it has no adapter."""
  if name not in cfg.lora_targets or not cfg.lora_rank:
    return None
  dt = x.dtype
  a, b = getattr(module, f"{name}_lora_a")[...].astype(dt), getattr(module, f"{name}_lora_b")[...]
  if key is not None and cfg.lora_dropout > 0:
    keep = jax.random.bernoulli(key, 1.0 - cfg.lora_dropout, x.shape)
    x = jnp.where(keep, x / (1.0 - cfg.lora_dropout), 0).astype(dt)
  scale = cfg.lora_alpha / cfg.lora_rank
  if name == "o":  # x [B, T, h, dh]
    low = jnp.einsum("bthk,hkr->btr", x, a)
  else:
    low = jnp.einsum("btd,dr->btr", x, a)
  spec = "btr,r...->bt..."
  return (scale * jnp.einsum(spec, low, b.astype(dt))).astype(dt)


def merged_weight(name, w, a, b, scale):
  """W + scale A B in our layout (stacked layers: a leading axis on all three)."""
  if name == "o":  # a [..., h, dh, r], b [..., r, d]
    return w + scale * jnp.einsum("...hkr,...rd->...hkd", a, b)
  lead = a.shape[:-2]  # a [..., in, r], b [..., r, *out]
  ab = jnp.einsum("...ir,...ro->...io", a, b.reshape(lead + (b.shape[len(lead)], -1)))
  return w + scale * ab.reshape(w.shape)


def merge(model):
  """The model with every adapter folded into its weight (a plain Transformer, lora_rank 0)."""
  from caopd_jax.models.transformer import Transformer  # pylint: disable=g-import-not-at-top
  cfg = model.cfg
  plain = nnx.eval_shape(lambda: Transformer(cfg.replace(lora_rank=0, lora_targets=())))
  graphdef, state = nnx.split(plain)
  src = dict(nnx.to_flat_state(nnx.state(model)))
  flat = dict(nnx.to_flat_state(state))
  scale = cfg.lora_alpha / max(cfg.lora_rank, 1)
  for path, var in flat.items():
    value = src[path][...]
    *parent, name = path
    a_path = tuple(parent) + (f"{name}_lora_a",)
    if a_path in src:
      b = src[tuple(parent) + (f"{name}_lora_b",)][...]
      value = merged_weight(name, value.astype(jnp.float32), src[a_path][...].astype(jnp.float32),
                            b.astype(jnp.float32), scale).astype(value.dtype)
    flat[path] = var.replace(value)
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _peft_tensors(name, a, b):
  """(lora_A.weight [r, in], lora_B.weight [out, r]) in PEFT's (torch Linear) layout."""
  r = a.shape[-1]
  if name == "o":
    return a.reshape(-1, r).T, b.T
  return a.T, b.reshape(r, -1).T


def save_peft(model, path: str, base_model: str = ""):
  """The adapters as a PEFT LoRA checkpoint (adapter_config.json + adapter_model.safetensors)."""
  cfg = model.cfg
  flat = dict(nnx.to_flat_state(nnx.state(model, LoRAParam)))
  tensors = {}
  for key_path, var in flat.items():
    *parent, leaf = key_path
    if not leaf.endswith("_lora_a"):
      continue
    name = leaf[:-len("_lora_a")]
    a = np.asarray(jax.device_get(var[...]), np.float32)
    b = np.asarray(jax.device_get(flat[tuple(parent) + (f"{name}_lora_b",)][...]), np.float32)
    layers = [(int(parent[1]), a, b)] if not cfg.scan_layers else [
        (i, a[i], b[i]) for i in range(cfg.num_layers)]
    for i, ai, bi in layers:
      key = f"base_model.model.model.layers.{i}.{_HF[name]}"
      ta, tb = _peft_tensors(name, ai, bi)
      tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(ta)
      tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(tb)
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
  config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.lora_rank,
            "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout, "bias": "none",
            "target_modules": sorted(_HF[t].split(".")[1] for t in cfg.lora_targets),
            "base_model_name_or_path": base_model, "fan_in_fan_out": False,
            "inference_mode": True, "init_lora_weights": True}
  with open(os.path.join(path, "adapter_config.json"), "w") as f:
    json.dump(config, f, indent=1)
  return path
