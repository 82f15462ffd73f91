"""Per-token statistics computed from a block of logits [B, T, V] -> [B, T].

These are the only functions that touch the vocabulary axis; objectives combine their outputs
(`core.py`). Under `chunked.py` they run on one sequence chunk at a time.
Inputs are float32 log-probabilities; the teacher's are already stop-gradiented by the caller.
"""
import jax
import jax.numpy as jnp

F32 = jnp.float32
sg = jax.lax.stop_gradient


def log_probs(logits, temperature=1.0):
  """float32 log softmax(logits / temperature) over the last axis."""
  x = logits.astype(F32)
  if not (isinstance(temperature, (int, float)) and temperature == 1.0):
    x = x / jnp.asarray(temperature, F32)
  return jax.nn.log_softmax(x, axis=-1)


def gather(logp, tokens):
  """log p(tokens[b, t]) from log-probs [B, T, V]."""
  return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def reverse_kl(logp, logq):
  """KL_t(pi || q) = sum_v pi(v) [log pi(v) - log q(v)]."""
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def forward_kl(logp, logq):
  """KL_t(q || pi) = sum_v q(v) [log q(v) - log pi(v)]."""
  return jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1)


def gjsd(logp, logq, beta):
  """Generalised JSD of GKD (Agarwal et al. 2024) with P = teacher q, Q = student pi:

    beta KL(P || M) + (1 - beta) KL(Q || M),  M = beta P + (1 - beta) Q,

  with the endpoints replaced by the exact KLs: beta = 0 -> KL(q || pi) (forward),
  beta = 1 -> KL(pi || q) (reverse), as in TRL's `generalized_jsd_loss`. M depends on the
  student and is differentiated. beta may be a Python float (endpoints resolved statically) or
  an array (resolved with `where`).
  """
  if isinstance(beta, (int, float)):
    if beta == 0:
      return forward_kl(logp, logq)
    if beta == 1:
      return reverse_kl(logp, logq)
    if not 0 < beta < 1:
      raise ValueError(f"gjsd beta must be in [0, 1], got {beta}")
  b = jnp.asarray(beta, F32)
  logm = jnp.logaddexp(jnp.log(b) + logq, jnp.log1p(-b) + logp)
  inner = (b * jnp.sum(jnp.exp(logq) * (logq - logm), axis=-1)
           + (1 - b) * jnp.sum(jnp.exp(logp) * (logp - logm), axis=-1))
  if isinstance(beta, (int, float)):
    return inner
  return jnp.where(b == 0, forward_kl(logp, logq), jnp.where(b == 1, reverse_kl(logp, logq), inner))


def top_k_indices(logits, k):
  """Indices [B, T, k] of the k largest entries (not differentiated)."""
  return jax.lax.top_k(sg(logits), k)[1]


def renormalised_reverse_kl(logp, logq, idx):
  """sum_{v in S} pi_hat(v) [log pi_hat(v) - log q_hat(v)], S = idx [B, T, K], where
  pi_hat, q_hat are pi and q renormalised inside S."""
  lp = jnp.take_along_axis(logp, idx, axis=-1)
  lq = jnp.take_along_axis(logq, idx, axis=-1)
  return reverse_kl(jax.nn.log_softmax(lp, axis=-1), jax.nn.log_softmax(lq, axis=-1))
