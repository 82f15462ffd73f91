"""One-graph autoregressive sampler: prefill + the whole decode loop in a single jit.

For each completion token y_t the sampler returns two log-probabilities:
  logprobs[t]        = log p_sample(y_t | c_t), the distribution actually sampled from
                       (logits / T, restricted to the top-k tokens, then to the top-p nucleus,
                       renormalised; 0 under greedy decoding), and
  policy_logprobs[t] = log pi(y_t | c_t), the untruncated policy at temperature 1.
OPD rewards need pi; importance weights need the ratio pi / p_sample.

Nucleus (Holtzman et al. 2020): keep v iff the probability mass of tokens with strictly larger
logits is < p; top-k: keep v iff fewer than k logits are strictly larger. Both are found
exactly, without a vocabulary sort, by a bisection over the order-preserving uint32 keys of the
float32 logits in which both ends of the bracket snap to logits that occur: it stops as soon as
the bracket holds a single distinct logit (about log2(V) + 4 passes over the vocabulary, at
most 32), so near-ties are resolved exactly too.

A token is drawn by inverting the CDF of the (truncated) weights in vocabulary order with one
uniform per row; the uniforms of all steps are drawn before the decode loop (no per-step key
split or per-token Gumbel noise).

With `decode_segments=N` the decode loop is N while_loops and the KV cache grows between them
(`grow_cache`): a step attends to P + (end of its segment) slots rather than P + max_new_tokens.
The outputs are the same; attention work drops by up to ~half for long generations.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from caopd_jax.models.transformer import grow_cache, init_cache
from caopd_jax.sharding import constrain

_F32 = jnp.float32
_U32 = jnp.uint32


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int
  temperature: float = 1.0  # 0 means greedy
  top_k: int = 0  # 0 disables
  top_p: float = 1.0  # 1 disables
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0
  top_p_iters: int = 32  # upper bound on nucleus bisection passes (32 always suffices)
  # The decode loop runs in this many segments; segment j's KV cache has only the slots that
  # steps up to its end need, so attention reads ~(P + N/2) slots per step instead of P + N, at
  # the price of one more traced loop body (compile time) per segment.
  decode_segments: int = 1

  @classmethod
  def from_config(cls, c, tokenizer) -> "SamplingConfig":
    """From a config's sampling block {max_new_tokens, temperature, top_p, top_k,
    decode_segments}; stop and pad ids from the tokenizer (`stop_ids`: EOS, end of turn)."""
    return cls(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_k=c.top_k,
               top_p=c.top_p, decode_segments=c.decode_segments, stop_ids=tokenizer.stop_ids,
               pad_id=tokenizer.pad_id)

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError("max_new_tokens must be >= 1.")
    if self.decode_segments < 1:
      raise ValueError(f"decode_segments must be >= 1, got {self.decode_segments}.")
    if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
      raise ValueError(f"Bad sampling settings: temperature={self.temperature}, "
                       f"top_k={self.top_k}, top_p={self.top_p}.")


class SampleOutput(NamedTuple):
  tokens: jax.Array  # int32 [B, N]; pad_id after the stop token
  mask: jax.Array  # bool [B, N]; completion tokens up to and including the stop token
  logprobs: jax.Array  # float32 [B, N]; under the sampled (truncated, tempered) distribution
  policy_logprobs: jax.Array  # float32 [B, N]; under the untruncated policy at T=1
  lengths: jax.Array  # int32 [B]


def _ordered_key(x):
  """uint32 keys with key(a) < key(b) iff a < b for float32 a, b (-0.0 and +0.0 map together)."""
  bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x).astype(_F32), _U32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | _U32(0x80000000))


def _keep_top(key, weight, target, max_iters):
  """bool [..., V]: entries v with sum(weight over keys strictly above key_v) < target.

  key: uint32 [..., V] from `_ordered_key`, 0 on entries to drop (their weight must be 0);
  weight >= 0; target [..., 1] with 0 < target <= sum(weight). Top-k is weight 1, target k;
  the top-p nucleus is weight = probability, target p.
  Bisection over keys. Invariant, per row: mass(key > lo) >= target > mass(key > hi), and
  lo + 1 and hi are keys that occur. Each pass (one variadic reduction over V) halves (lo, hi]
  and snaps its ends to occurring keys; at lo + 1 == hi the answer is exactly {key > lo}.
  """
  max_key = _U32(0xFFFFFFFF)
  lo = jnp.min(jnp.where(key > 0, key, max_key), axis=-1, keepdims=True) - 1
  hi = jnp.max(key, axis=-1, keepdims=True)

  def cond(state):
    i, lo, hi = state
    return (i < max_iters) & jnp.any(hi - lo > 1)

  def combine(a, b):
    return a[0] + b[0], jnp.minimum(a[1], b[1]), jnp.maximum(a[2], b[2])

  def body(state):
    i, lo, hi = state
    mid = lo + (hi - lo) // 2
    gt = key > mid
    # One variadic reduction (three separate ones cost ~6x more on CPU): mass above mid, the
    # smallest key above mid, the largest key at or below mid.
    above, next_up, next_down = (x[..., None] for x in jax.lax.reduce(
        (jnp.where(gt, weight, 0.0), jnp.where(gt, key, max_key), jnp.where(gt, _U32(0), key)),
        (_F32(0), max_key, _U32(0)), combine, (key.ndim - 1,)))
    up = above >= target
    active = hi - lo > 1
    return (i + 1, jnp.where(active & up, next_up - 1, lo),
            jnp.where(active & ~up, next_down, hi))

  _, lo, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), lo, hi))
  return key > lo


def _tempered(logits, cfg: SamplingConfig):
  """(tempered logits z, their max, unnormalised truncated weights w, bool support)."""
  z = logits.astype(_F32) / cfg.temperature if cfg.temperature != 1 else logits.astype(_F32)
  zmax = jnp.max(z, axis=-1, keepdims=True)
  w = jnp.exp(z - zmax)
  support, key = None, None
  if 0 < cfg.top_k < z.shape[-1]:  # keep v iff fewer than k logits are strictly larger
    key = _ordered_key(z)
    support = _keep_top(key, jnp.ones_like(w), jnp.full(zmax.shape, cfg.top_k, _F32), 32)
    w = jnp.where(support, w, 0.0)
  if cfg.top_p < 1.0:  # keep v iff the mass of strictly larger logits is < p
    key = jnp.where(w > 0, _ordered_key(z) if key is None else key, _U32(0))
    support = _keep_top(key, w, cfg.top_p * jnp.sum(w, axis=-1, keepdims=True), cfg.top_p_iters)
    w = jnp.where(support, w, 0.0)
  return z, zmax, w, support


def truncate_logits(logits, cfg: SamplingConfig):
  """Tempered logits with -inf outside the top-k / top-p support (the distribution sampled)."""
  z, _, _, support = _tempered(logits, cfg)
  return z if support is None else jnp.where(support, z, -jnp.inf)


def _cumsum(w):
  """Inclusive cumulative sum over the last axis as two small triangular matmuls (much faster on
  CPU than XLA's reduce-window cumsum). Not guaranteed monotone under rounding; callers don't
  rely on that."""
  v = w.shape[-1]
  blk = next((c for c in (32, 16, 8, 4, 2) if v % c == 0 and v > c), 1)
  if blk == 1:
    return jnp.cumsum(w, axis=-1)
  nb = v // blk
  wb = w.reshape(*w.shape[:-1], nb, blk)
  hi = jax.lax.Precision.HIGHEST
  within = jnp.matmul(wb, jnp.triu(jnp.ones((blk, blk), w.dtype)), precision=hi)
  offset = jnp.matmul(within[..., -1], jnp.triu(jnp.ones((nb, nb), w.dtype), 1), precision=hi)
  return (within + offset[..., None]).reshape(w.shape)


def _invert_cdf(u, w):
  """int32 [...]: index j with probability w_j / sum(w), given u ~ U[0, 1) of shape [...].

  The first j with w_j > 0 and cdf_j > u * total; the last j with w_j > 0 if rounding leaves
  none. Only indices with w_j > 0 can be returned.
  """
  cdf = _cumsum(w)
  total = cdf[..., -1:]
  idx = jnp.arange(w.shape[-1], dtype=jnp.int32)
  pos = w > 0
  last = jnp.max(jnp.where(pos, idx, -1), axis=-1, keepdims=True)
  hit = (pos & (cdf > u[..., None] * total)) | (idx == last)
  return _first(hit)


def _first(hit):
  """Index of the first True along the last axis, the last index if none (NaN logits); like
  argmax of a bool, but a plain min-reduction, which XLA:CPU vectorises (argmax it does not)."""
  v = hit.shape[-1]
  return jnp.min(jnp.where(hit, jnp.arange(v, dtype=jnp.int32), v - 1), axis=-1)


def _pick(x, token):
  return jnp.take_along_axis(x, token[..., None], axis=-1)[..., 0]


def _draw(u, logits, cfg: SamplingConfig):
  """sample_token with the uniform u [...] given: (token, log p_sample(token), log pi(token))."""
  logits = logits.astype(_F32)
  m = jnp.max(logits, axis=-1, keepdims=True)
  e = jnp.exp(logits - m)
  log_z = jnp.log(jnp.sum(e, axis=-1))
  if cfg.temperature == 0:
    token = _first(logits == m)  # argmax (first maximum)
    logp = jnp.zeros(token.shape, _F32)
  else:
    if cfg.temperature == 1 and not cfg.top_k and cfg.top_p >= 1:
      z, zmax, w = logits, m, e  # share the policy's softmax
    else:
      z, zmax, w, _ = _tempered(logits, cfg)
    token = _invert_cdf(u, w)
    logp = _pick(z, token) - zmax[..., 0] - jnp.log(jnp.sum(w, axis=-1))
  return token, logp, _pick(logits, token) - m[..., 0] - log_z


def sample_token(key, logits, cfg: SamplingConfig):
  """Draws one token per row: (token int32, log p_sample(token), log pi(token) at T=1)."""
  return _draw(jax.random.uniform(key, logits.shape[:-1], _F32), logits, cfg)


def valid_from_lengths(lengths, width: int):
  """bool [B, width] marking the last `lengths[b]` slots (left padding)."""
  return jnp.arange(width)[None, :] >= width - jnp.asarray(lengths)[:, None]


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"))
def sample(graphdef, params, prompt, prompt_valid, key, cfg: SamplingConfig) -> SampleOutput:
  """Samples `cfg.max_new_tokens` tokens after each left-padded prompt [B, P]."""
  model = nnx.merge(graphdef, params)
  b, p = prompt.shape
  n = cfg.max_new_tokens
  # Segment ends: the loop emits tokens [end_{j-1}, end_j) with a cache of p + end_j slots (token
  # i is emitted after feeding token i - 1 into slot p + i - 1).
  seg = -(-n // cfg.decode_segments)
  ends = sorted({min(n, seg * (j + 1)) for j in range(cfg.decode_segments)})
  cache = init_cache(model.cfg, b, p + ends[0])
  h, cache = model.hidden(prompt, valid=prompt_valid, cache=cache)
  stop_ids = jnp.asarray(cfg.stop_ids, jnp.int32)
  uniforms = jax.random.uniform(key, (n, b), _F32)  # one per row and step, drawn up front
  # Per-step outputs are written as rows of [N, B] buffers (contiguous) and transposed once.

  def emit(i, tokens, lps, done, logits):
    tok, logp, plogp = _draw(uniforms[i], logits, cfg)
    if cfg.stop_ids:
      tok = jnp.where(done, cfg.pad_id, tok)
      done = done | jnp.isin(tok, stop_ids)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, tok, i, 0)
    lps = jax.lax.dynamic_update_index_in_dim(lps, jnp.stack([logp, plogp]), i, 0)
    return tokens, lps, done

  tokens = jnp.full((n, b), cfg.pad_id, jnp.int32)
  lps = jnp.zeros((n, 2, b), _F32)
  done = jnp.zeros((b,), bool)
  # The vocabulary projection, cast and (on an fsdp mesh) gathered once for every decode loop.
  kernel = constrain(model.output_kernel().astype(model.cfg.compute_dtype), (None, "vocab"))
  tokens, lps, done = emit(0, tokens, lps, done, model.logits(h[:, -1], kernel))

  def body(state):
    i, tokens, lps, done, cache = state
    last = jax.lax.dynamic_index_in_dim(tokens, i - 1, 0, keepdims=False)[:, None]
    h, cache = model.hidden(last, cache=cache)  # position = number of valid cache slots
    return (i + 1, *emit(i, tokens, lps, done, model.logits(h[:, 0], kernel)), cache)

  state = (jnp.int32(1), tokens, lps, done, cache)
  for j, end in enumerate(ends):
    if j:
      state = (*state[:4], grow_cache(state[4], p + end))

    def cond(state, end=end):
      i, _, _, done, _ = state
      return (i < end) & ~jnp.all(done) if cfg.stop_ids else i < end

    state = jax.lax.while_loop(cond, body, state)
  _, tokens, lps, _, _ = state
  tokens, lps = tokens.T, lps.transpose(1, 2, 0)
  if cfg.stop_ids:  # mask: up to and including the first stop token
    is_stop = jnp.isin(tokens, stop_ids)
    first = jnp.where(jnp.any(is_stop, -1), jnp.argmax(is_stop, -1), n)
    mask = jnp.arange(n)[None, :] <= first[:, None]
  else:
    mask = jnp.ones((b, n), bool)
  return SampleOutput(tokens, mask, jnp.where(mask, lps[0], 0.0), jnp.where(mask, lps[1], 0.0),
                      jnp.sum(mask, axis=-1).astype(jnp.int32))
