"""Objectives from hidden states without materialising [B, T, V] logits.

The vocabulary projection and the per-token statistics (`Objective.token_stats`) run in a
`lax.scan` over chunks of `chunk_size` positions under `jax.checkpoint`, so the forward keeps
only [B, T] statistics and the backward recomputes each chunk's logits (a single chunk,
chunk_size >= T, is computed once, without the scan or the recomputation): the live vocabulary-sized
memory is O(B * chunk_size * V) instead of O(B * T * V) per model. The position-coupling step
(`Objective.combine`: masks, returns, importance weights, reduction) then runs on [B, T] arrays,
so the result equals the unchunked objective on logits = h @ kernel (same values and gradients).
"""
import functools

import jax
import jax.numpy as jnp

from caopd_jax.sharding import BATCH, constrain

sg = jax.lax.stop_gradient


def project(h, kernel):
  """float32 logits h @ kernel ([..., D] x [D, V]), as `Transformer.logits` computes them."""
  return jnp.einsum("...d,dv->...v", h, kernel.astype(h.dtype),
                    preferred_element_type=jnp.float32)


def _chunks(x, n, size):
  """[B, T, ...] -> [n, B, size, ...], zero-padded at the end of T."""
  pad = n * size - x.shape[1]
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return x.reshape(x.shape[0], n, size, *x.shape[2:]).swapaxes(0, 1)


def chunked_token_stats(objective, student_h, student_kernel, teacher_h, teacher_kernel, tokens,
                        chunk_size, **hparams):
  """objective.token_stats(student_h @ student_kernel, teacher_h @ teacher_kernel, tokens),
  evaluated chunk_size positions at a time with rematerialisation. Returns dict of [B, T]."""
  b, t = tokens.shape
  n = -(-t // chunk_size)
  teacher_h, teacher_kernel = sg(teacher_h), sg(teacher_kernel)

  def chunk_stats(sk, tk, sh, th, tok):
    logits = lambda h, k: constrain(project(h, k), (BATCH, None, "vocab"))  # rows stay split
    return objective.token_stats(logits(sh, sk), logits(th, tk), tok, **hparams)

  if n == 1:  # one chunk: recomputing it would lower no peak (its backward holds it anyway)
    return chunk_stats(student_kernel, teacher_kernel, student_h, teacher_h, tokens)
  chunk_stats = functools.partial(jax.checkpoint, prevent_cse=False)(chunk_stats)

  def body(carry, xs):
    return carry, chunk_stats(student_kernel, teacher_kernel, *xs)

  xs = (_chunks(student_h, n, chunk_size), _chunks(teacher_h, n, chunk_size),
        _chunks(tokens, n, chunk_size))
  _, out = jax.lax.scan(body, None, xs)
  return {k: v.swapaxes(0, 1).reshape(b, n * chunk_size)[:, :t] for k, v in out.items()}


def chunked_objective(name, student_h, student_kernel, teacher_h, teacher_kernel, tokens, mask, *,
                      chunk_size=256, denominator=None, **hparams):
  """(loss, metrics) of objective `name` (or an `Objective`) on logits h @ kernel, chunked over T.

  student_h [B, T, D] (position t predicts tokens[:, t]); student_kernel [D, V] (e.g.
  `model.output_kernel()`); teacher_h [B, T, Dt], teacher_kernel [Dt, V] (detached);
  tokens, mask [B, T]; chunk_size: static int; denominator: see core.denominator; hparams as
  for `compute`.
  """
  from caopd_jax.objectives import get_objective  # pylint: disable=g-import-not-at-top
  objective = get_objective(name) if isinstance(name, str) else name
  objective.resolve(hparams)
  stats = chunked_token_stats(objective, student_h, student_kernel, teacher_h, teacher_kernel,
                              tokens, chunk_size, **hparams)
  return objective.combine(stats, tokens, mask, denominator, **hparams)
