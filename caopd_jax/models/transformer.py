"""Decoder-only transformer (Llama / Qwen2 / Qwen3) in Flax NNX with a functional KV cache.

Pre-norm blocks: h += Attn(RMSNorm(h)); h += SwiGLU(RMSNorm(h)); logits = RMSNorm(h) @ W_out.
Attention is grouped-query with rotary embeddings (Su et al. 2021, "half-rotation" layout as in
HF transformers). Parameters are stored in `cfg.param_dtype` (float32 by default); matmuls run
in `cfg.dtype`; norms, softmax and logits are float32. Every parameter carries `logical_axes`
metadata for `caopd_jax.sharding`.

Layers: a list of Blocks (unrolled), or with `cfg.scan_layers` one Block whose parameters carry a
leading [L] axis (logical axis "layers") run by one `lax.scan`, so the compiled program does not
grow with depth. `cfg.remat` rematerialises each layer in the backward pass: "full" keeps only
its input, "save_dots" also keeps the outputs of matmuls without batch dimensions (projections).

Cache: a pytree `{"k": keys, "v": values, "valid": bool[B,S], "index": int32[]}` with keys
[B,Hkv,Dh,S] (transposed, so that decode attention needs no transpose) and values [B,Hkv,S,Dh]:
a list of L arrays (unrolled) or one [L, ...] array (scanned); `index` is the next slot to write
(the same for every row: batches are left-padded).
"""

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from caopd_jax.models import lora
from caopd_jax.models.config import ModelConfig
from caopd_jax.sharding import BATCH, constrain

_F32 = jnp.float32
_MASKED = -1e30  # finite, so fully-masked (padding) query rows stay NaN-free


# Activations [B, T, D] stay split over the batch axes (FSDP gathers weights, never the batch):
# declared, so GSPMD does not replicate the batch to keep a weight sharded.
ACTIVATION = (BATCH, None, None)
REMAT_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable,
                  "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _param(rngs, shape, axes, init="normal", scale=0.02, dtype=_F32):
  if init == "normal":
    value = scale * jax.random.normal(rngs.params(), shape, _F32)
  elif init == "ones":
    value = jnp.ones(shape, _F32)
  else:
    value = jnp.zeros(shape, _F32)
  return nnx.Param(value.astype(dtype), logical_axes=axes)


def rms_norm(x, scale, eps):
  x32 = x.astype(_F32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (y * scale).astype(x.dtype)


class RMSNorm(nnx.Module):
  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs, dtype=_F32):
    self.scale = _param(rngs, (dim,), ("norm",), init="ones", dtype=dtype)
    self.eps = eps

  def __call__(self, x):
    return rms_norm(x, self.scale[...], self.eps)


def rope_inv_freq(cfg: ModelConfig):
  """Rotary inverse frequencies theta^(-2i/Dh), with optional Llama-3 rescaling."""
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=_F32) / cfg.head_dim))
  if cfg.rope_scaling is None:
    return inv
  rs = dict(cfg.rope_scaling)
  factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
  old = rs["original_max_position_embeddings"]
  wavelen = 2 * math.pi / inv
  scaled = jnp.where(wavelen > old / lo, inv / factor, inv)
  smooth = (old / wavelen - lo) / (hi - lo)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= old / hi) & (wavelen <= old / lo)
  return jnp.where(medium, smoothed, scaled)


def rope_tables(positions, inv_freq):
  """(cos, sin), each float32 [B, T, 1, Dh/2], for positions int [B, T]."""
  angles = positions.astype(_F32)[..., None] * inv_freq  # [B, T, Dh/2]
  return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def _cached_rope_tables(positions, inv_freq, length: int):
  """rope_tables for positions in [0, length), gathered from a table over arange(length).

  XLA fuses cos/sin into each consumer and so recomputes them for every head of q and k in every
  layer; the table depends only on static values, so it is built once (outside decode loops) and
  the per-step work is a cheap gather.
  """
  angles = jnp.arange(length, dtype=_F32)[:, None] * inv_freq
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  return cos[positions][:, :, None, :], sin[positions][:, :, None, :]


def apply_rope(x, positions, inv_freq, tables=None):
  """x: [B, T, H, Dh]; positions: int [B, T]; `tables` = rope_tables(positions, inv_freq)."""
  cos, sin = rope_tables(positions, inv_freq) if tables is None else tables
  x32 = x.astype(_F32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, h, kv, dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.cfg = cfg
    p = functools.partial(_param, rngs, dtype=cfg.params_dtype)
    self.q = p((d, h, dh), ("embed", "heads", "head_dim"))
    self.k = p((d, kv, dh), ("embed", "kv_heads", "head_dim"))
    self.v = p((d, kv, dh), ("embed", "kv_heads", "head_dim"))
    self.o = p((h, dh, d), ("heads", "head_dim", "embed"))
    if cfg.qkv_bias:
      self.q_bias = p((h, dh), ("heads", "head_dim"), init="zeros")
      self.k_bias = p((kv, dh), ("kv_heads", "head_dim"), init="zeros")
      self.v_bias = p((kv, dh), ("kv_heads", "head_dim"), init="zeros")
    if cfg.qk_norm:
      self.q_norm = RMSNorm(dh, cfg.rms_norm_eps, rngs=rngs, dtype=cfg.params_dtype)
      self.k_norm = RMSNorm(dh, cfg.rms_norm_eps, rngs=rngs, dtype=cfg.params_dtype)
    lora.add_adapters(self, ("q", "k", "v", "o"), cfg, rngs, {
        "q": ("embed", "heads", "head_dim"), "k": ("embed", "kv_heads", "head_dim"),
        "v": ("embed", "kv_heads", "head_dim"), "o": ("heads", "head_dim", "embed")})

  def __call__(self, x, rope, mask, kv_cache=None, index=None, key=None):
    """x: [B,T,D]; rope: rope_tables(...); mask: bool [B,T,S]; kv_cache: (keys, values) of this
    layer, or (stacked keys, stacked values, layer index) of a scanned model.

    Returns (out [B,T,D], cache): (k_all [B,Hkv,Dh,S], v_all [B,Hkv,S,Dh]) in the cache layout,
    or the stacked arrays with this layer's new slots written in place.
    """
    cfg, dt = self.cfg, x.dtype
    b, t, _ = x.shape
    h, n, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q, k, v = (self._project(name, x, i, key) for i, name in enumerate(("q", "k", "v")))
    if cfg.qkv_bias:
      q, k, v = q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt), v + self.v_bias[...].astype(dt)
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = apply_rope(q, None, None, rope), apply_rope(k, None, None, rope)
    # Keys are kept transposed, [B, Hkv, Dh, S], values as [B, Hkv, S, Dh]: then q.K and p.V are
    # plain batched matmuls over (B, Hkv) and a decode step transposes nothing of the cache.
    k, v = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)
    new_cache = (k, v)
    if kv_cache is not None and len(kv_cache) == 2:
      ck, cv = kv_cache
      k = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), index, axis=3)
      v = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), index, axis=2)
      new_cache = (k, v)
    elif kv_cache is not None:  # scanned layers: one stacked cache, updated in place
      ck, cv, layer = kv_cache
      zero = jnp.zeros((), jnp.int32)
      ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), (layer, zero, zero, zero, index))
      cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), (layer, zero, zero, index, zero))
      k = jax.lax.dynamic_index_in_dim(ck, layer, 0, keepdims=False)
      v = jax.lax.dynamic_index_in_dim(cv, layer, 0, keepdims=False)
      new_cache = (ck, cv)
    q = q.reshape(b, t, n, h // n, dh).transpose(0, 2, 3, 1, 4)  # [B, Hkv, G, T, Dh]
    scores = jnp.einsum("bngtk,bnks->bngts", q, k.astype(dt), preferred_element_type=_F32)
    scores = scores / math.sqrt(dh)
    scores = jnp.where(mask[:, None, None], scores, _MASKED)
    # Softmax with the normalisation applied after p.V (on [.., Dh] instead of [.., S]); exp once.
    e = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
    denom = jnp.sum(e, axis=-1)  # [B, Hkv, G, T]
    if t == 1:  # decode: a broadcast-multiply-reduce beats XLA's choice of dot layout here
      out = jnp.sum(e[:, :, :, 0, :, None] * v.astype(_F32)[:, :, None], axis=3) / denom
      out = out.astype(dt)[:, None]  # [B, 1, Hkv, G, Dh]
    else:
      out = jnp.einsum("bngts,bnsk->bngtk", e.astype(dt), v.astype(dt), preferred_element_type=_F32)
      out = (out / denom[..., None]).astype(dt).transpose(0, 3, 1, 2, 4)  # [B, T, Hkv, G, Dh]
    out = out.reshape(b, t, h, dh)
    y = jnp.einsum("bthk,hkd->btd", out, self.o[...].astype(dt))
    low = lora.delta(self, "o", out, cfg, _fold(key, 3))
    return (y if low is None else y + low), new_cache

  def _project(self, name, x, i, key):
    y = jnp.einsum("btd,dhk->bthk", x, getattr(self, name)[...].astype(x.dtype))
    low = lora.delta(self, name, x, self.cfg, _fold(key, i))
    return y if low is None else y + low


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate x) * up x)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    p = functools.partial(_param, rngs, dtype=cfg.params_dtype)
    self.gate = p((d, f), ("embed", "mlp"))
    self.up = p((d, f), ("embed", "mlp"))
    self.down = p((f, d), ("mlp", "embed"))
    self.cfg = cfg
    lora.add_adapters(self, ("gate", "up", "down"), cfg, rngs,
                      {"gate": ("embed", "mlp"), "up": ("embed", "mlp"), "down": ("mlp", "embed")})

  def _project(self, name, x, i, key):
    y = x @ getattr(self, name)[...].astype(x.dtype)
    low = lora.delta(self, name, x, self.cfg, _fold(key, i))
    return y if low is None else y + low

  def __call__(self, x, key=None):
    hidden = jax.nn.silu(self._project("gate", x, 0, key)) * self._project("up", x, 1, key)
    return self._project("down", hidden, 2, key)


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs, dtype=cfg.params_dtype)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs, dtype=cfg.params_dtype)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, rope, mask, kv_cache=None, index=None, key=None):
    a, kv = self.attn(self.attn_norm(x), rope, mask, kv_cache, index, _fold(key, 0))
    x = constrain(x + a, ACTIVATION)
    return constrain(x + self.mlp(self.mlp_norm(x), _fold(key, 1)), ACTIVATION), kv


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None):
  """An empty KV cache with `length` slots per row (keys [B,Hkv,Dh,S], values [B,Hkv,S,Dh]; one
  [L, ...] array each with scanned layers)."""
  dtype = dtype or cfg.compute_dtype
  kv, dh, n = cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
  axes_k, axes_v = (BATCH, "kv_heads", "head_dim", None), (BATCH, "kv_heads", None, "head_dim")
  zeros = lambda shape, axes: constrain(jnp.zeros(shape, dtype), axes)
  if cfg.scan_layers:
    k = zeros((n, batch, kv, dh, length), ("layers",) + axes_k)
    v = zeros((n, batch, kv, length, dh), ("layers",) + axes_v)
  else:
    k = [zeros((batch, kv, dh, length), axes_k) for _ in range(n)]
    v = [zeros((batch, kv, length, dh), axes_v) for _ in range(n)]
  return {"k": k, "v": v, "valid": constrain(jnp.zeros((batch, length), bool), (BATCH, None)),
          "index": jnp.zeros((), jnp.int32)}


def grow_cache(cache, length: int):
  """The cache with `length` slots per row (>= its current length); new slots are empty."""
  extra = length - cache["valid"].shape[1]
  if extra < 0:
    raise ValueError(f"grow_cache: the cache has {cache['valid'].shape[1]} slots, more than {length}.")
  if extra == 0:
    return cache
  pad = lambda x, axis: jnp.pad(x, [(0, extra if a == axis else 0) for a in range(x.ndim)])
  stacked = not isinstance(cache["k"], list)  # scanned layers: a leading [L] axis
  grow = lambda xs, axis: pad(xs, axis + 1) if stacked else [pad(x, axis) for x in xs]
  return {"k": grow(cache["k"], 3), "v": grow(cache["v"], 2),
          "valid": pad(cache["valid"], 1), "index": cache["index"]}


def _fold(key, i):
  return None if key is None else jax.random.fold_in(key, i)


def _apply_block(graphdef, state, x, rope, mask, kv_cache, index, key):
  return nnx.merge(graphdef, state)(x, rope, mask, kv_cache, index, key)


def stacked_blocks(cfg: ModelConfig, key):
  """One Block whose parameters have a leading [L] axis (logical axis "layers")."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Block(cfg, rngs=nnx.Rngs(0))))
  state = jax.vmap(lambda k: nnx.split(Block(cfg, rngs=nnx.Rngs(k)))[1])(
      jax.random.split(key, cfg.num_layers))
  for _, var in nnx.to_flat_state(state):
    var.set_metadata("logical_axes", ("layers",) + tuple(var.get_metadata()["logical_axes"]))
  return nnx.merge(graphdef, state)


class Transformer(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.cfg = cfg
    p = functools.partial(_param, rngs, dtype=cfg.params_dtype)
    self.embed = p((cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
    if cfg.scan_layers:
      self.layers = stacked_blocks(cfg, rngs.params())
    else:
      self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs, dtype=cfg.params_dtype)
    if not cfg.tie_word_embeddings:
      self.lm_head = p((cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"))

  def hidden(self, tokens, positions=None, valid=None, cache=None, dropout_key=None):
    """Final-normed hidden states [B,T,D] (compute dtype) and the updated cache (or None).

    valid: bool [B,T], False on (left) padding. positions default to the count of valid tokens
    before each one (continuing from the cache when given). dropout_key: LoRA dropout (training).
    """
    cfg = self.cfg
    b, t = tokens.shape
    valid = jnp.ones((b, t), bool) if valid is None else valid.astype(bool)
    if cache is None:
      kv_valid, index, q_slot = valid, None, jnp.arange(t)
    else:
      index = cache["index"]
      kv_valid = jax.lax.dynamic_update_slice_in_dim(cache["valid"], valid, index, axis=1)
      q_slot = index + jnp.arange(t)
    k_slot = jnp.arange(kv_valid.shape[1])
    mask = (k_slot[None, None, :] <= q_slot[None, :, None]) & kv_valid[:, None, :]
    if positions is None and cache is not None:  # then 0 <= positions < cache length
      start = jnp.sum(cache["valid"], axis=-1, keepdims=True, dtype=jnp.int32)
      positions = start + jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
      rope = _cached_rope_tables(positions, rope_inv_freq(cfg), cache["valid"].shape[1])
    else:
      if positions is None:
        positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
      rope = rope_tables(positions, rope_inv_freq(cfg))  # shared by all layers
    x = constrain(self.embed[...][tokens].astype(cfg.compute_dtype), ACTIVATION)
    apply = _apply_block
    if cfg.remat != "none":
      apply = jax.checkpoint(_apply_block, policy=REMAT_POLICIES[cfg.remat], static_argnums=(0,))
    if cfg.scan_layers:
      graphdef, state = nnx.split(self.layers)

      def body(carry, xs):  # the stacked cache rides in the carry: written in place
        x, ck, cv = carry
        st, layer = xs
        x, kv = apply(graphdef, st, x, rope, mask, None if cache is None else (ck, cv, layer),
                      index, _fold(dropout_key, layer))
        return ((x, *kv) if cache is not None else (x, ck, cv)), None

      ks = (None, None) if cache is None else (cache["k"], cache["v"])
      (x, new_k, new_v), _ = jax.lax.scan(body, (x, *ks), (state, jnp.arange(cfg.num_layers)))
    else:
      new_k, new_v = [], []
      for i, layer in enumerate(self.layers):
        layer_cache = None if cache is None else (cache["k"][i], cache["v"][i])
        graphdef, state = nnx.split(layer)
        x, (k, v) = apply(graphdef, state, x, rope, mask, layer_cache, index,
                          _fold(dropout_key, i))
        new_k.append(k)
        new_v.append(v)
    h = self.final_norm(x)
    if cache is None:
      return h, None
    return h, {"k": new_k, "v": new_v, "valid": kv_valid, "index": index + t}

  def output_kernel(self):
    """The [D, V] vocabulary projection (the transposed embedding when tied)."""
    return self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]

  def logits(self, h, kernel=None):
    """float32 logits from hidden states h [..., D] (`kernel`: a prepared output_kernel())."""
    w = (self.output_kernel() if kernel is None else kernel).astype(h.dtype)
    return jnp.einsum("...d,dv->...v", h, w, preferred_element_type=_F32)

  def __call__(self, tokens, positions=None, valid=None):
    h, _ = self.hidden(tokens, positions, valid)
    return self.logits(h)
