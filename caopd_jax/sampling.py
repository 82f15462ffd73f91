"""One-graph autoregressive sampler: prefill + the whole decode loop in a single jit.

For each completion token y_t the sampler returns two log-probabilities:
  logprobs[t]        = log p_sample(y_t | c_t), the distribution actually sampled from
                       (logits / T, restricted to the top-k tokens, then to the top-p nucleus,
                       renormalised; 0 under greedy decoding), and
  policy_logprobs[t] = log pi(y_t | c_t), the untruncated policy at temperature 1.
OPD rewards need pi; importance weights need the ratio pi / p_sample.

Nucleus (Holtzman et al. 2020): keep v iff the probability mass of tokens with strictly larger
logits is < p. It is found by bisection on a logit threshold (no vocabulary sort): after
`top_p_iters` halvings of [min logit, max logit] the threshold separates the crossing token
from the next one unless their logits are within range/2^iters (a near-tie).
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from caopd_jax.models.transformer import init_cache

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int
  temperature: float = 1.0  # 0 means greedy
  top_k: int = 0  # 0 disables
  top_p: float = 1.0  # 1 disables
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0
  top_p_iters: int = 32

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError("max_new_tokens must be >= 1.")
    if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
      raise ValueError(f"Bad sampling settings: temperature={self.temperature}, "
                       f"top_k={self.top_k}, top_p={self.top_p}.")


class SampleOutput(NamedTuple):
  tokens: jax.Array  # int32 [B, N]; pad_id after the stop token
  mask: jax.Array  # bool [B, N]; completion tokens up to and including the stop token
  logprobs: jax.Array  # float32 [B, N]; under the sampled (truncated, tempered) distribution
  policy_logprobs: jax.Array  # float32 [B, N]; under the untruncated policy at T=1
  lengths: jax.Array  # int32 [B]


def _top_p_keep(logits, p, iters):
  """bool [..., V]: the nucleus of softmax(logits) at mass p (see module docstring)."""
  probs = jax.nn.softmax(logits, axis=-1)
  finite = jnp.isfinite(logits)
  lo = jnp.min(jnp.where(finite, logits, jnp.inf), axis=-1, keepdims=True) - 1.0
  hi = jnp.max(logits, axis=-1, keepdims=True)

  def body(_, bounds):  # invariant: mass(> lo) >= p > mass(> hi)
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    above = jnp.sum(jnp.where(logits > mid, probs, 0.0), axis=-1, keepdims=True)
    return jnp.where(above >= p, mid, lo), jnp.where(above >= p, hi, mid)

  lo, _ = jax.lax.fori_loop(0, iters, body, (lo, hi))
  return logits > lo


def truncate_logits(logits, cfg: SamplingConfig):
  """Tempered logits with -inf outside the top-k / top-p support (the distribution sampled)."""
  logits = logits.astype(_F32) / cfg.temperature
  if cfg.top_k:
    kth = jax.lax.top_k(logits, cfg.top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  if cfg.top_p < 1.0:
    logits = jnp.where(_top_p_keep(logits, cfg.top_p, cfg.top_p_iters), logits, -jnp.inf)
  return logits


def sample_token(key, logits, cfg: SamplingConfig):
  """Draws one token per row: (token int32, log p_sample(token), log pi(token) at T=1)."""
  logits = logits.astype(_F32)
  policy = jax.nn.log_softmax(logits, axis=-1)
  if cfg.temperature == 0:
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logp = jnp.zeros(token.shape, _F32)
  else:
    trunc = truncate_logits(logits, cfg)
    token = jax.random.categorical(key, trunc, axis=-1).astype(jnp.int32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(trunc, axis=-1), token[..., None], -1)[..., 0]
  return token, logp, jnp.take_along_axis(policy, token[..., None], -1)[..., 0]


def valid_from_lengths(lengths, width: int):
  """bool [B, width] marking the last `lengths[b]` slots (left padding)."""
  return jnp.arange(width)[None, :] >= width - jnp.asarray(lengths)[:, None]


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"))
def sample(graphdef, params, prompt, prompt_valid, key, cfg: SamplingConfig) -> SampleOutput:
  """Samples `cfg.max_new_tokens` tokens after each left-padded prompt [B, P]."""
  model = nnx.merge(graphdef, params)
  b, p = prompt.shape
  n = cfg.max_new_tokens
  cache = init_cache(model.cfg, b, p + n)
  h, cache = model.hidden(prompt, valid=prompt_valid, cache=cache)
  prompt_len = jnp.sum(prompt_valid, axis=-1).astype(jnp.int32)
  stop_ids = jnp.asarray(cfg.stop_ids or (-1,), jnp.int32)

  def emit(i, carry, logits):
    key, tokens, mask, lp, plp, done = carry[:6]
    key, sub = jax.random.split(key)
    tok, logp, plogp = sample_token(sub, logits, cfg)
    tok = jnp.where(done, cfg.pad_id, tok)
    mask = mask.at[:, i].set(~done)
    tokens, lp, plp = tokens.at[:, i].set(tok), lp.at[:, i].set(logp), plp.at[:, i].set(plogp)
    done = done | jnp.isin(tok, stop_ids)
    return key, tokens, mask, lp, plp, done

  zeros = jnp.zeros((b, n), _F32)
  init = (key, jnp.full((b, n), cfg.pad_id, jnp.int32), jnp.zeros((b, n), bool), zeros, zeros,
          jnp.zeros((b,), bool))
  carry = emit(0, init, model.logits(h[:, -1]))

  def cond(state):
    i, carry, _ = state
    return (i < n) & ~jnp.all(carry[5])

  def body(state):
    i, carry, cache = state
    last = jax.lax.dynamic_slice_in_dim(carry[1], i - 1, 1, axis=1)
    h, cache = model.hidden(last, positions=(prompt_len + i - 1)[:, None], cache=cache)
    return i + 1, emit(i, carry, model.logits(h[:, 0])), cache

  _, carry, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), carry, cache))
  _, tokens, mask, lp, plp, _ = carry
  return SampleOutput(tokens, mask, jnp.where(mask, lp, 0.0), jnp.where(mask, plp, 0.0),
                      jnp.sum(mask, axis=-1).astype(jnp.int32))
