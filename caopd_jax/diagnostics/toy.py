"""Targeted rollouts on the exactly enumerable toy (caopd_jax/toy/enumerable.py), and the exact
success probabilities they estimate.

A success predicate `success_fn(tokens [R, H]) -> bool [R]` (jittable) turns the toy into a
verifiable task; p_succ(c_t, v) = P(success | y_<t = c_t, y_t = v) under the tabular student.
"""

import jax
import jax.numpy as jnp
import numpy as np

from caopd_jax.toy import enumerable as en


def sum_mod_success(toy, residue=0):
  """success iff sum(y) % vocab == residue (depends on every token: no node is decided early)."""
  return lambda tokens: jnp.sum(tokens, -1) % toy.vocab == residue


def continuation(toy, theta, success_fn):
  """continue_fn for `alignment.success_at_nodes`: completes prefixes with the tabular student
  theta [P, V] up to the horizon and applies success_fn. `rows` is unused (one task)."""
  h = toy.horizon

  def continue_fn(key, rows, prefix, prefix_len, start):
    del rows
    r, e = prefix.shape
    tokens = jnp.pad(prefix, [(0, 0), (0, h - e)]) if e < h else prefix[:, :h]
    keys = jax.random.split(key, h)
    for t in range(start + 1, h):
      draw = jax.random.categorical(keys[t], theta[toy.prefix_index(tokens)[:, t]])
      tokens = tokens.at[:, t].set(jnp.where(t >= prefix_len, draw, tokens[:, t]))
    return success_fn(tokens)

  return continue_fn


def exact_success(toy, theta, success_fn):
  """Exact p_succ [P, V]: row = prefix index of c_t (as in theta), column = next token v.
  By enumeration of all V^H sequences (float64)."""
  seqs = toy.all_sequences()
  probs = np.asarray(en.sequence_probs(theta, toy), np.float64)
  succ = np.asarray(success_fn(seqs), np.float64)
  rows = np.asarray(toy.prefix_index(seqs))
  seqs = np.asarray(seqs)
  num = np.zeros((toy.num_prefixes, toy.vocab))
  den = np.zeros((toy.num_prefixes, toy.vocab))
  for t in range(toy.horizon):
    np.add.at(num, (rows[:, t], seqs[:, t]), probs * succ)
    np.add.at(den, (rows[:, t], seqs[:, t]), probs)
  return num / np.maximum(den, 1e-300)
