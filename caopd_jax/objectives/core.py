"""Pieces shared by every OPD objective: token masks, importance weights, returns, reductions.

Everything here acts on per-token [B, T] arrays (never on [B, T, V] logits), so the same code
finishes an unchunked objective and a sequence-chunked one (see `chunked.py`).
All reductions are float32.
"""
import jax
import jax.numpy as jnp

F32 = jnp.float32
REDUCTIONS = ("token_mean", "sequence_mean", "sequence_sum")


def effective_mask(mask, tokens, special_token_ids=(), skip_first=0):
  """Tokens that count: `mask`, minus the first `skip_first` mask-valid tokens of each row, minus
  the first occurrence (within `mask`) of each id in `special_token_ids` in each row.

  Both rules are counted over the original `mask` (Fu et al. 2026, arXiv 2603.25562, special-token
  masking; CaOPD code skips the first 3 completion tokens). Returns bool [B, T].
  """
  valid = mask.astype(bool)
  m = valid & (jnp.cumsum(valid.astype(jnp.int32), axis=1) > skip_first)
  ids = jnp.asarray(special_token_ids, jnp.int32).reshape(-1)
  if ids.shape[0]:
    hit = (tokens[..., None] == ids) & valid[..., None]                  # [B, T, K]
    first = hit & (jnp.cumsum(hit.astype(jnp.int32), axis=1) == 1)
    m = m & ~jnp.any(first, axis=-1)
  return m


def importance_weights(logp_y, mask, behavior_logprobs=None, is_clip=None):
  """Truncated importance weights w_t = min(exp(sg(log pi(y_t)) - log mu(y_t)), is_clip), detached.

  `behavior_logprobs` are log mu(y_t) under the sampling distribution (e.g. a top-p or stale
  sampler); log pi(y_t) is the student's (temperature-scaled) log-prob. None gives w = 1;
  is_clip None means no truncation. Zero outside `mask`. Per-token weights only (no product over
  the prefix), as in truncated IS for LLM RL.
  """
  if behavior_logprobs is None:
    return mask.astype(F32)
  log_w = jnp.where(mask, jax.lax.stop_gradient(logp_y).astype(F32) - behavior_logprobs.astype(F32),
                    0.0)
  w = jnp.exp(log_w)
  if is_clip is not None:
    w = jnp.minimum(w, is_clip)
  return jax.lax.stop_gradient(jnp.where(mask, w, 0.0))


@jax.jit
def discounted_returns(r, gamma):
  """G_t = sum_{t' >= t} gamma^(t'-t) r_t' along axis 1 (a reverse linear recurrence).

  Evaluated with an associative scan (O(log T) depth); gamma may be a Python float or an array.
  Zero r_t outside the mask first so masked tokens contribute no reward.
  """
  r = r.astype(F32)
  a = jnp.broadcast_to(jnp.asarray(gamma, F32), r.shape)

  def combine(x, y):
    (a1, b1), (a2, b2) = x, y
    return a1 * a2, a2 * b1 + b2

  return jax.lax.associative_scan(combine, (a, r), reverse=True, axis=1)[1]


def token_mean(x, mask):
  """Mean of x over the True entries of mask (0 when there are none), float32."""
  x = jnp.where(mask, x.astype(F32), 0.0)
  return jnp.sum(x) / jnp.maximum(jnp.sum(mask.astype(F32)), 1.0)


def denominator(mask, reduction="token_mean"):
  """What `reduce_loss` divides by: #valid tokens (token_mean) or #sequences with a valid token
  (sequence_*), at least 1. Computed once over a whole batch, it makes the losses of its
  microbatches add up to the batch's loss (gradient accumulation)."""
  if reduction not in REDUCTIONS:
    raise ValueError(f"unknown reduction {reduction!r}; valid: {REDUCTIONS}")
  m = mask.astype(F32)
  n = jnp.sum(m) if reduction == "token_mean" else jnp.sum((jnp.sum(m, axis=1) > 0).astype(F32))
  return jnp.maximum(n, 1.0)


def reduce_loss(per_token, mask, reduction="token_mean", denominator_=None):
  """Aggregate a per-token loss [B, T] over the valid tokens.

  token_mean:    sum_{b,t} l / #valid tokens of the batch (the common OPD default).
  sequence_mean: mean over sequences of (sum_t l / #valid tokens of the sequence) (CaOPD code).
  sequence_sum:  mean over sequences of sum_t l (the estimator of a sequence-level KL).
  Sequences with no valid token are left out of the sequence means. `denominator_` replaces
  the batch's own `denominator(mask, reduction)` (a microbatch of a larger batch).
  """
  d = denominator(mask, reduction) if denominator_ is None else denominator_
  x = jnp.where(mask, per_token.astype(F32), 0.0)
  if reduction == "token_mean":
    return jnp.sum(x) / d
  seq = jnp.sum(x, axis=1)
  if reduction == "sequence_mean":
    seq = seq / jnp.maximum(jnp.sum(mask.astype(F32), axis=1), 1.0)
  return jnp.sum(seq) / d
