"""chunked_objective == the unchunked objective on logits = h @ kernel, for every objective:
loss, metrics and gradients w.r.t. the student's hidden states and output kernel."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caopd_jax.objectives import OBJECTIVES, chunked_objective, compute
from caopd_jax.objectives.chunked import project

B, T, D, DT, V = 2, 11, 8, 6, 17      # T not a multiple of the chunk size; teacher width differs
HPARAMS = {"discounted": {"gamma": 0.7}, "vopd": {"baseline_top_k": 5}, "gjsd": {"beta": 0.4},
           "topk_reverse": {"k": 4}, "mix": {"lam": 0.25},
           "grpo": {"rewards": jnp.array([1.0, 0.0]), "group_rewards": jnp.array([[1.0, 0.0]] * 2),
                    "kl_coef": 0.1}}


def inputs():
  k = jax.random.split(jax.random.key(0), 7)
  sh = jax.random.normal(k[0], (B, T, D))
  sk = jax.random.normal(k[1], (D, V)) / 2
  th = jax.random.normal(k[2], (B, T, DT))
  tk = jax.random.normal(k[3], (DT, V))
  tokens = jax.random.randint(k[4], (B, T), 0, V)
  mask = jnp.arange(T)[None] < jnp.array([[T], [7]])
  behavior = jnp.log(jax.random.uniform(k[5], (B, T), minval=0.01, maxval=0.2))
  return sh, sk, th, tk, tokens, mask, behavior


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_chunked_matches_unchunked(name):
  sh, sk, th, tk, tokens, mask, behavior = inputs()
  hp = dict(HPARAMS.get(name, {}), reduction="sequence_mean", skip_first=1, special_token_ids=(3,),
            behavior_logprobs=behavior, is_clip=2.0, temperature=1.3)
  if name == "grpo":
    hp["old_logprobs"] = behavior

  def full(sh, sk):
    return compute(name, project(sh, sk), project(th, tk), tokens, mask, **hp)

  def chunked(sh, sk, th):
    return chunked_objective(name, sh, sk, th, tk, tokens, mask, chunk_size=4, **hp)

  (l1, m1), g1 = jax.jit(jax.value_and_grad(full, argnums=(0, 1), has_aux=True))(sh, sk)
  (l2, m2), g2 = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2), has_aux=True))(sh, sk, th)
  np.testing.assert_allclose(l2, l1, rtol=2e-5, atol=1e-6)
  assert set(m1) == set(m2)
  for k in m1:
    np.testing.assert_allclose(m2[k], m1[k], rtol=2e-5, atol=1e-6)
  for a, b in zip(g2[:2], g1):
    assert float(jnp.abs(b).max()) > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(g2[2]).max()) == 0.0         # the teacher is never differentiated


def test_chunked_memory_is_smaller():
  """XLA's temp allocation for value_and_grad shrinks by a large factor when chunking."""
  b, t, d, v = 1, 256, 16, 4096
  sds = jax.ShapeDtypeStruct
  args = (sds((b, t, d), jnp.float32), sds((d, v), jnp.float32), sds((b, t, d), jnp.float32),
          sds((d, v), jnp.float32), sds((b, t), jnp.int32), sds((b, t), jnp.bool_))

  def temp(fn):
    vg = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)
    return jax.jit(vg).lower(*args).compile().memory_analysis().temp_size_in_bytes

  full = temp(lambda sh, sk, th, tk, y, m: compute("full_reverse", project(sh, sk),
                                                   project(th, tk), y, m))
  chunk = temp(lambda sh, sk, th, tk, y, m: chunked_objective("full_reverse", sh, sk, th, tk, y, m,
                                                              chunk_size=16))
  assert full > 4 * b * t * v * 4          # at least one [B, T, V] float32 buffer per model
  assert chunk * 5 < full
