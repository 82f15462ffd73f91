"""Local HF checkpoints (config.json + safetensors) <-> `Transformer`.

`load_hf` reads the config through transformers' config classes and the weights with
safetensors (single file or sharded with `model.safetensors.index.json`); `save_hf` writes a
directory `transformers.AutoModelForCausalLM.from_pretrained` (and vLLM) loads.
The whole parameter mapping is the `_MAPPING` table below.

With `mesh=`, every parameter is born sharded: `jax.make_array_from_callback` asks for each
addressable device's block, and that block is read straight from the safetensors file (a slice:
only its rows / columns are touched), converted to our layout and put on its device. No array
of a sharded parameter's full size exists on any device, and each process reads only the blocks
of its own devices.
"""

import contextlib
import json
import os
import re
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from caopd_jax.models import lora
from caopd_jax.models.config import ModelConfig
from caopd_jax.models.transformer import Transformer

_HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


# ---- the mapping table: (our path, HF key, layout); {i} is the layer index ------------------------
class _Layout(NamedTuple):
  """How one HF tensor maps to ours: `region(view, idx, cfg)` reads our-layout block idx (slices)
  from the HF view (a safetensors slice or an array), touching only the rows / columns that
  block needs; `to_hf` converts a whole array of ours; `hf_shape` its HF shape."""
  to_hf: Callable
  hf_shape: Callable
  region: Callable


def _heads_in(n):  # HF [n*dh, d] -> ours [d, n, dh]
  def region(v, idx, c):
    d, h, k = idx
    rows = slice(h.start * c.head_dim, h.stop * c.head_dim)
    return v[rows, d].reshape(h.stop - h.start, c.head_dim, -1).transpose(2, 0, 1)[:, :, k]
  return _Layout(lambda w, c: w.transpose(1, 2, 0).reshape(n(c) * c.head_dim, c.hidden_size),
                 lambda s, c: (s[1] * s[2], s[0]), region)


def _bias(n):  # HF [n*dh] -> ours [n, dh]
  def region(v, idx, c):
    h, k = idx
    return v[slice(h.start * c.head_dim, h.stop * c.head_dim)].reshape(-1, c.head_dim)[:, k]
  return _Layout(lambda w, c: w.reshape(-1),
                 lambda s, c: (s[0] * s[1],), region)


def _o_region(v, idx, c):  # HF [d, h*dh] -> ours [h, dh, d]
  h, k, d = idx
  cols = slice(h.start * c.head_dim, h.stop * c.head_dim)
  return v[d, cols].T.reshape(h.stop - h.start, c.head_dim, -1)[:, k, :]


_same = _Layout(lambda w, c: w, lambda s, c: tuple(s),
                lambda v, idx, c: v[idx] if len(idx) > 1 else v[idx[0]])
_t = _Layout(lambda w, c: w.T, lambda s, c: tuple(s[::-1]),
             lambda v, idx, c: v[idx[1], idx[0]].T)
_o = _Layout(lambda w, c: w.reshape(c.num_heads * c.head_dim, c.hidden_size).T,
             lambda s, c: (s[2], s[0] * s[1]), _o_region)
_q_heads, _kv_heads = (lambda c: c.num_heads), (lambda c: c.num_kv_heads)

_MAPPING = [
    ("embed", "model.embed_tokens.weight", _same),
    ("final_norm.scale", "model.norm.weight", _same),
    ("lm_head", "lm_head.weight", _t),
    ("layers.{i}.attn_norm.scale", "model.layers.{i}.input_layernorm.weight", _same),
    ("layers.{i}.mlp_norm.scale", "model.layers.{i}.post_attention_layernorm.weight", _same),
    ("layers.{i}.attn.q", "model.layers.{i}.self_attn.q_proj.weight", _heads_in(_q_heads)),
    ("layers.{i}.attn.k", "model.layers.{i}.self_attn.k_proj.weight", _heads_in(_kv_heads)),
    ("layers.{i}.attn.v", "model.layers.{i}.self_attn.v_proj.weight", _heads_in(_kv_heads)),
    ("layers.{i}.attn.o", "model.layers.{i}.self_attn.o_proj.weight", _o),
    ("layers.{i}.attn.q_bias", "model.layers.{i}.self_attn.q_proj.bias", _bias(_q_heads)),
    ("layers.{i}.attn.k_bias", "model.layers.{i}.self_attn.k_proj.bias", _bias(_kv_heads)),
    ("layers.{i}.attn.v_bias", "model.layers.{i}.self_attn.v_proj.bias", _bias(_kv_heads)),
    ("layers.{i}.attn.q_norm.scale", "model.layers.{i}.self_attn.q_norm.weight", _same),
    ("layers.{i}.attn.k_norm.scale", "model.layers.{i}.self_attn.k_norm.weight", _same),
    ("layers.{i}.mlp.gate", "model.layers.{i}.mlp.gate_proj.weight", _t),
    ("layers.{i}.mlp.up", "model.layers.{i}.mlp.up_proj.weight", _t),
    ("layers.{i}.mlp.down", "model.layers.{i}.mlp.down_proj.weight", _t),
]


def _entries(paths, cfg):
  """Yield (our path tuple, HF keys, layout, stacked) for every parameter path of the model;
  `stacked`: the parameter holds every layer along a leading axis (scanned layers), one HF key
  per layer."""
  table = [(re.compile("^" + re.escape(ours).replace(r"\{i\}", r"(\d+)") + "$"),
            re.compile("^" + re.escape(ours.replace("{i}.", "")) + "$") if "{i}" in ours else None,
            hf, layout) for ours, hf, layout in _MAPPING]
  for path in paths:
    dotted = ".".join(str(p) for p in path)
    for pattern, stacked_pattern, hf, layout in table:
      m = pattern.match(dotted)
      if m:
        yield path, [hf.replace("{i}", m.group(1)) if m.groups() else hf], layout, False
        break
      if cfg.scan_layers and stacked_pattern is not None and stacked_pattern.match(dotted):
        yield path, [hf.replace("{i}", str(i)) for i in range(cfg.num_layers)], layout, True
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


def _key_files(path):
  """{HF tensor key: file} for the checkpoint at `path`."""
  out = {}
  for file in _weight_files(path):
    try:
      with safe_open(file, framework="numpy") as f:
        out.update({k: file for k in f.keys()})
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
      raise ValueError(f"Could not read weights from {file!r}: {e}") from e
  return out


def _full(shape):
  return tuple(slice(0, n) for n in shape)


def _normalise(idx, shape):
  return tuple(slice(*s.indices(n)[:2]) for s, n in zip(idx, shape))


def _lora_init(path_, shape, dtype, seed=0):
  """A fresh adapter (caopd_jax.models.lora): A ~ N(0, 1/in), B = 0; seeded by its path."""
  name = ".".join(str(p) for p in path_)
  if name.endswith("_lora_b"):
    return lambda idx: np.zeros(shape, dtype)[idx]
  rng = np.random.default_rng([seed] + [ord(c) for c in name])
  full = (rng.standard_normal(shape) / np.sqrt(shape[-2] if "o_lora" not in name else
                                              shape[-3] * shape[-2])).astype(dtype)
  return lambda idx: full[idx]


def load_hf(path: str, dtype=jnp.float32, *, mesh=None, param_dtype="float32", remat="none",
            scan_layers=False, **lora_options) -> Transformer:
  """Loads a local Llama/Qwen2/Qwen3 HF checkpoint; compute in `dtype`, parameters stored in
  `param_dtype`; with `mesh` every parameter is placed straight into its shards (module
  docstring). remat / scan_layers / lora_* (rank, alpha, targets, dropout): the execution
  options of ModelConfig; adapters are created fresh (B = 0: the loaded model is unchanged)."""
  import transformers  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"{path!r} is not a HF checkpoint directory (no config.json).")
  cfg = config_from_hf(transformers.AutoConfig.from_pretrained(path), dtype).replace(
      param_dtype=jnp.dtype(param_dtype).name, remat=remat, scan_layers=scan_layers,
      **lora_options)
  files = _key_files(path)
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat = dict(nnx.to_flat_state(state))
  shardings = {}
  if mesh is not None:
    from caopd_jax import sharding  # pylint: disable=g-import-not-at-top
    shardings = dict(nnx.to_flat_state(sharding.tree_shardings(state, mesh)))
  used = set()
  adapters = [p for p in flat if str(p[-1]).endswith(("_lora_a", "_lora_b"))]
  for path_ in adapters:
    read = _lora_init(path_, tuple(flat[path_].shape), cfg.params_dtype)
    value = (jax.make_array_from_callback(tuple(flat[path_].shape), shardings[path_], read)
             if mesh is not None else jnp.asarray(read(_full(flat[path_].shape))))
    flat[path_] = flat[path_].replace(value)
  with contextlib.ExitStack() as stack:
    handles = {f: stack.enter_context(safe_open(f, framework="numpy")) for f in set(files.values())}
    for path_, keys, layout, stacked in _entries([p for p in flat if p not in adapters], cfg):
      missing = [k for k in keys if k not in files]
      if missing:
        raise KeyError(f"Checkpoint {path!r} has no tensor {missing[0]!r} (needed for {cfg.arch}).")
      views = [handles[files[k]].get_slice(k) for k in keys]
      want = tuple(flat[path_].shape)
      layer_shape = want[1:] if stacked else want
      for k, v in zip(keys, views):
        if tuple(v.get_shape()) != layout.hf_shape(layer_shape, cfg):
          raise ValueError(f"Shape mismatch for {k!r}: checkpoint gives {tuple(v.get_shape())}, "
                           f"config.json implies {layout.hf_shape(layer_shape, cfg)}.")
      np_dtype = cfg.params_dtype

      def read(idx, views=views, layout=layout, stacked=stacked, want=want):
        idx = _normalise(idx, want)
        if stacked:
          block = np.stack([layout.region(views[i], idx[1:], cfg) for i in range(idx[0].start,
                                                                                  idx[0].stop)])
        else:
          block = layout.region(views[0], idx, cfg)
        return np.ascontiguousarray(block).astype(np_dtype)

      if mesh is not None:
        value = jax.make_array_from_callback(want, shardings[path_], read)
      else:
        value = jnp.asarray(read(_full(want)))
      flat[path_] = flat[path_].replace(value)
      used.update(keys)
  ignored = set(files) - used - {"lm_head.weight"}
  ignored = {k for k in ignored if not k.endswith("rotary_emb.inv_freq")}
  if ignored:
    raise ValueError(f"Checkpoint {path!r} has tensors this {cfg.arch} model does not use: "
                     f"{sorted(ignored)[:5]}{' ...' if len(ignored) > 5 else ''}.")
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def save_hf(model: Transformer, path: str, tokenizer=None, dtype="float32",
            max_shard_bytes: int = 4 << 30):
  """Writes config.json + safetensors (sharded past `max_shard_bytes`) (+ tokenizer files); a
  LoRA model is written with its adapters merged (`lora.merge`)."""
  if model.cfg.lora_rank:
    model = lora.merge(model)
  cfg = model.cfg
  os.makedirs(path, exist_ok=True)
  hf_cfg = config_to_hf(cfg)
  hf_cfg.dtype = dtype
  hf_cfg.save_pretrained(path)
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  np_dtype = jnp.dtype(dtype)
  tensors = {}
  for p, keys, layout, stacked in _entries(flat.keys(), cfg):
    value = np.asarray(jax.device_get(flat[p][...]))
    for i, key in enumerate(keys):
      tensors[key] = np.ascontiguousarray(layout.to_hf(value[i] if stacked else value, cfg)
                                          .astype(np_dtype))
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
