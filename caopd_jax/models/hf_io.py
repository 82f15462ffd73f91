"""Local HF checkpoints (config.json + safetensors) <-> `Transformer`.

`load_hf` reads the config through transformers' config classes and the weights with
safetensors (single file or sharded with `model.safetensors.index.json`); `save_hf` writes a
directory `transformers.AutoModelForCausalLM.from_pretrained` (and vLLM) loads.
The whole parameter mapping is the `_MAPPING` table below.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from caopd_jax.models.config import ModelConfig
from caopd_jax.models.transformer import Transformer

_HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


# ---- the mapping table: (our path, HF key, HF->ours, ours->HF); {i} is the layer index --------
def _heads_in(n):  # HF [n*dh, d] -> ours [d, n, dh]
  return (lambda w, c: w.reshape(n(c), c.head_dim, c.hidden_size).transpose(2, 0, 1),
          lambda w, c: w.transpose(1, 2, 0).reshape(n(c) * c.head_dim, c.hidden_size))


def _bias(n):  # HF [n*dh] -> ours [n, dh]
  return (lambda w, c: w.reshape(n(c), c.head_dim), lambda w, c: w.reshape(-1))


_same = (lambda w, c: w, lambda w, c: w)
_t = (lambda w, c: w.T, lambda w, c: w.T)
_o = (lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
      lambda w, c: w.reshape(c.num_heads * c.head_dim, c.hidden_size).T)
_q_heads, _kv_heads = (lambda c: c.num_heads), (lambda c: c.num_kv_heads)

_MAPPING = [
    ("embed", "model.embed_tokens.weight", *_same),
    ("final_norm.scale", "model.norm.weight", *_same),
    ("lm_head", "lm_head.weight", *_t),
    ("layers.{i}.attn_norm.scale", "model.layers.{i}.input_layernorm.weight", *_same),
    ("layers.{i}.mlp_norm.scale", "model.layers.{i}.post_attention_layernorm.weight", *_same),
    ("layers.{i}.attn.q", "model.layers.{i}.self_attn.q_proj.weight", *_heads_in(_q_heads)),
    ("layers.{i}.attn.k", "model.layers.{i}.self_attn.k_proj.weight", *_heads_in(_kv_heads)),
    ("layers.{i}.attn.v", "model.layers.{i}.self_attn.v_proj.weight", *_heads_in(_kv_heads)),
    ("layers.{i}.attn.o", "model.layers.{i}.self_attn.o_proj.weight", *_o),
    ("layers.{i}.attn.q_bias", "model.layers.{i}.self_attn.q_proj.bias", *_bias(_q_heads)),
    ("layers.{i}.attn.k_bias", "model.layers.{i}.self_attn.k_proj.bias", *_bias(_kv_heads)),
    ("layers.{i}.attn.v_bias", "model.layers.{i}.self_attn.v_proj.bias", *_bias(_kv_heads)),
    ("layers.{i}.attn.q_norm.scale", "model.layers.{i}.self_attn.q_norm.weight", *_same),
    ("layers.{i}.attn.k_norm.scale", "model.layers.{i}.self_attn.k_norm.weight", *_same),
    ("layers.{i}.mlp.gate", "model.layers.{i}.mlp.gate_proj.weight", *_t),
    ("layers.{i}.mlp.up", "model.layers.{i}.mlp.up_proj.weight", *_t),
    ("layers.{i}.mlp.down", "model.layers.{i}.mlp.down_proj.weight", *_t),
]


def _entries(paths):
  """Yield (our path tuple, HF key, to_ours, to_hf) for every parameter path of the model."""
  table = []
  for ours, hf, to_ours, to_hf in _MAPPING:
    table.append((re.compile("^" + re.escape(ours).replace(r"\{i\}", r"(\d+)") + "$"), hf, to_ours, to_hf))
  for path in paths:
    dotted = ".".join(str(p) for p in path)
    for pattern, hf, to_ours, to_hf in table:
      m = pattern.match(dotted)
      if m:
        yield path, hf.replace("{i}", m.group(1)) if m.groups() else hf, to_ours, to_hf
        break
    else:
      raise KeyError(f"No HF mapping for parameter {dotted!r}; add it to _MAPPING.")


# ---- config -------------------------------------------------------------------------------
def config_from_hf(hf_cfg, dtype="float32") -> ModelConfig:
  """ModelConfig from a transformers PretrainedConfig; raises on anything we do not implement."""
  arch = hf_cfg.model_type
  if arch not in _HF_CLASSES:
    raise ValueError(f"Unsupported architecture model_type={arch!r}; supported: {tuple(_HF_CLASSES)}.")
  problems = []
  if getattr(hf_cfg, "hidden_act", "silu") != "silu":
    problems.append(f"hidden_act={hf_cfg.hidden_act!r} (only silu)")
  if getattr(hf_cfg, "mlp_bias", False):
    problems.append("mlp_bias=True")
  if arch != "qwen2" and getattr(hf_cfg, "attention_bias", False):
    problems.append("attention_bias=True")
  if getattr(hf_cfg, "use_sliding_window", False):
    problems.append("use_sliding_window=True")
  layer_types = getattr(hf_cfg, "layer_types", None) or []
  if any(t != "full_attention" for t in layer_types):
    problems.append(f"layer_types={sorted(set(layer_types))} (only full_attention)")
  rope = dict(getattr(hf_cfg, "rope_parameters", None) or getattr(hf_cfg, "rope_scaling", None) or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  theta = rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0))
  if rope_type not in ("default", "llama3"):
    problems.append(f"rope_type={rope_type!r} (only default and llama3)")
  if problems:
    raise ValueError(f"Unsupported {arch} config: " + "; ".join(problems) + ".")
  dtype = jnp.dtype(dtype).name
  return ModelConfig(
      vocab_size=hf_cfg.vocab_size, hidden_size=hf_cfg.hidden_size,
      num_layers=hf_cfg.num_hidden_layers, num_heads=hf_cfg.num_attention_heads,
      num_kv_heads=getattr(hf_cfg, "num_key_value_heads", None) or hf_cfg.num_attention_heads,
      head_dim=getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads,
      intermediate_size=hf_cfg.intermediate_size, arch=arch, rope_theta=float(theta),
      rope_scaling=tuple((k, rope[k]) for k in _ROPE_KEYS) if rope_type == "llama3" else None,
      rms_norm_eps=hf_cfg.rms_norm_eps, tie_word_embeddings=bool(hf_cfg.tie_word_embeddings),
      max_position_embeddings=hf_cfg.max_position_embeddings, dtype=dtype)


def config_to_hf(cfg: ModelConfig):
  import transformers  # pylint: disable=g-import-not-at-top
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_scaling is not None:
    rope.update(rope_type="llama3", **dict(cfg.rope_scaling))
  hf = transformers.AutoConfig.for_model(
      cfg.arch, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
      intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, rope_parameters=rope,
      tie_word_embeddings=cfg.tie_word_embeddings,
      max_position_embeddings=cfg.max_position_embeddings)
  hf.architectures = [_HF_CLASSES[cfg.arch]]
  return hf


# ---- weights ------------------------------------------------------------------------------
def _weight_files(path):
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
  elif os.path.exists(os.path.join(path, "model.safetensors")):
    files = ["model.safetensors"]
  else:
    raise FileNotFoundError(
        f"No model.safetensors or model.safetensors.index.json in {path!r} (found: "
        f"{sorted(os.listdir(path))}). Convert .bin checkpoints with transformers' save_pretrained "
        "(safe_serialization=True).")
  missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
  if missing:
    raise FileNotFoundError(f"Weight shards listed in the index are missing from {path!r}: {missing}.")
  return [os.path.join(path, f) for f in files]


def _read_tensors(path):
  tensors = {}
  for file in _weight_files(path):
    try:
      with safe_open(file, framework="numpy") as f:
        for key in f.keys():
          tensors[key] = f.get_tensor(key)
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
      raise ValueError(f"Could not read weights from {file!r}: {e}") from e
  return tensors


def load_hf(path: str, dtype=jnp.float32) -> Transformer:
  """Loads a local Llama/Qwen2/Qwen3 HF checkpoint; parameters float32, compute in `dtype`."""
  import transformers  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"{path!r} is not a HF checkpoint directory (no config.json).")
  cfg = config_from_hf(transformers.AutoConfig.from_pretrained(path), dtype)
  tensors = _read_tensors(path)
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat = dict(nnx.to_flat_state(state))
  values, used = {}, set()
  for path_, key, to_ours, _ in _entries(flat.keys()):
    if key not in tensors:
      raise KeyError(f"Checkpoint {path!r} has no tensor {key!r} (needed for {cfg.arch}).")
    value = to_ours(np.asarray(tensors[key]), cfg)
    want = flat[path_].shape
    if value.shape != want:
      raise ValueError(f"Shape mismatch for {key!r}: checkpoint gives {tensors[key].shape}, "
                       f"config.json implies {want} (after layout change).")
    values[path_] = jnp.asarray(value, jnp.float32)
    used.add(key)
  ignored = set(tensors) - used - {"lm_head.weight"}
  ignored = {k for k in ignored if not k.endswith("rotary_emb.inv_freq")}
  if ignored:
    raise ValueError(f"Checkpoint {path!r} has tensors this {cfg.arch} model does not use: "
                     f"{sorted(ignored)[:5]}{' ...' if len(ignored) > 5 else ''}.")
  for p, v in values.items():
    flat[p] = flat[p].replace(v)
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def save_hf(model: Transformer, path: str, tokenizer=None, dtype="float32",
            max_shard_bytes: int = 4 << 30):
  """Writes config.json + safetensors (sharded past `max_shard_bytes`) (+ tokenizer files)."""
  cfg = model.cfg
  os.makedirs(path, exist_ok=True)
  hf_cfg = config_to_hf(cfg)
  hf_cfg.dtype = dtype
  hf_cfg.save_pretrained(path)
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  np_dtype = jnp.dtype(dtype)
  tensors = {key: np.ascontiguousarray(to_hf(np.asarray(jax.device_get(flat[p][...])), cfg).astype(np_dtype))
             for p, key, _, to_hf in _entries(flat.keys())}
  shards, current, size = [], {}, 0
  for key in sorted(tensors):
    if current and size + tensors[key].nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[key] = tensors[key]
    size += tensors[key].nbytes
  shards.append(current)
  for stale in [f for f in os.listdir(path) if f.startswith("model") and f.endswith((".safetensors", ".json"))]:
    os.remove(os.path.join(path, stale))
  if len(shards) == 1:
    save_file(shards[0], os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for n, shard in enumerate(shards):
      name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, os.path.join(path, name), metadata={"format": "pt"})
      weight_map.update({k: name for k in shard})
    total = sum(t.nbytes for t in tensors.values())
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
  if tokenizer is not None:
    tokenizer.save(path)
  return path
