"""OPD/SFT train steps against direct (unchunked, per-objective) references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from caopd_jax import objectives
from caopd_jax.models import ModelConfig, Transformer
from caopd_jax.train.step import (cosine, init_state, make_opd_step, make_sft_step, sft_loss)

V, PS, PT, C, B = 37, 5, 9, 6, 4


@pytest.fixture(scope="module")
def setup():
  cfg = ModelConfig.tiny("qwen3", vocab_size=V)
  student = Transformer(cfg, rngs=nnx.Rngs(0))
  teacher = Transformer(cfg, rngs=nnx.Rngs(1))
  graphdef, params = nnx.split(student)
  _, tparams = nnx.split(teacher)
  rs = np.random.RandomState(0)
  comp = rs.randint(3, V, (B, C))
  mask = np.ones((B, C), bool)
  mask[1, 4:] = False
  mask[3, 2:] = False
  sv = np.ones((B, PS + C), bool)
  sv[0, :2] = False
  tv = np.ones((B, PT + C), bool)
  tv[2, :5] = False
  tv[:, PT:] = np.concatenate([mask[:, :1], mask[:, :-1]], 1) | mask  # gaps in padding are fine
  batch = dict(student_tokens=jnp.asarray(np.concatenate([rs.randint(3, V, (B, PS)), comp], 1)),
               student_valid=jnp.asarray(sv),
               teacher_tokens=jnp.asarray(np.concatenate([rs.randint(3, V, (B, PT)), comp], 1)),
               teacher_valid=jnp.asarray(tv), completion_mask=jnp.asarray(mask))
  return graphdef, params, tparams, batch


def direct_loss(graphdef, params, tparams, batch, name, **hp):
  """The objective on full logits from plain forward passes (no chunking, no VJP tricks)."""
  return _direct_jit(graphdef, params, tparams, batch, name, tuple(sorted(hp.items())))


def direct_grad(graphdef, params, tparams, batch, name, **hp):
  """d direct_loss / d params (jitted: op-by-op eager autodiff costs ~15 s of tiny compiles)."""
  return _direct_grad_jit(graphdef, params, tparams, batch, name, tuple(sorted(hp.items())))


def _direct(graphdef, params, tparams, batch, name, hp):
  hp = dict(hp)
  s = nnx.merge(graphdef, params)(batch["student_tokens"], valid=batch["student_valid"])[:, -C - 1:-1]
  t = nnx.merge(graphdef, tparams)(batch["teacher_tokens"], valid=batch["teacher_valid"])[:, -C - 1:-1]
  return objectives.compute(name, s, t, batch["student_tokens"][:, -C:], batch["completion_mask"], **hp)[0]


_direct_jit = jax.jit(_direct, static_argnums=(0, 4, 5))
_direct_grad_jit = jax.jit(jax.grad(_direct, argnums=1), static_argnums=(0, 4, 5))


def test_opd_step_gradient_and_reports_match_direct(setup):
  graphdef, params, tparams, batch = setup
  hp = dict(reduction="sequence_mean", skip_first=1)
  opt = optax.sgd(1.0)
  step = jax.jit(make_opd_step(graphdef, graphdef, opt, objective="full_forward", hparams=hp,
                               report=("full_reverse", "token_sampled", "vopd"),
                               compare_estimators=True, chunk_size=4, ema_alpha=0.25))
  state = init_state(params, opt, teacher=tparams)
  new, metrics = step(state, batch)
  grads = direct_grad(graphdef, params, tparams, batch, "full_forward", **hp)
  expected = jax.tree.map(lambda p, g: p - g, params, grads)
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=2e-6)
  for name in ("full_reverse", "token_sampled", "vopd"):
    ref = direct_loss(graphdef, params, tparams, batch, name, **hp)
    np.testing.assert_allclose(metrics[f"objectives/{name}"], ref, rtol=1e-5, atol=1e-7)
  exact = direct_grad(graphdef, params, tparams, batch, "full_reverse", **hp)
  np.testing.assert_allclose(metrics["estimators/full_reverse/cos_exact"], 1.0, atol=1e-5)
  np.testing.assert_allclose(metrics["estimators/full_forward/cos_exact"], cosine(grads, exact),
                             rtol=1e-4)
  np.testing.assert_allclose(metrics["estimators/full_reverse/cos_optimised"], cosine(exact, grads),
                             rtol=1e-4)
  # EMA teacher: (1 - a) teacher + a * updated student.
  for t, t0, s in zip(jax.tree.leaves(new.teacher), jax.tree.leaves(tparams),
                      jax.tree.leaves(new.params)):
    np.testing.assert_allclose(t, 0.75 * t0 + 0.25 * s, atol=1e-6)
  assert int(new.step) == 1
  step(new, batch)
  assert step._cache_size() == 1  # one compile for the shape


def test_opd_step_rejects_unknown_objective(setup):
  graphdef = setup[0]
  with pytest.raises(ValueError, match="valid"):
    make_opd_step(graphdef, graphdef, optax.sgd(1.0), objective="reverse_kl")
  with pytest.raises(ValueError, match="unknown hparams"):
    make_opd_step(graphdef, graphdef, optax.sgd(1.0), objective="vopd", hparams={"gama": 1})


def test_sft_loss_and_step(setup):
  graphdef, params, _, batch = setup
  tokens, valid = batch["student_tokens"], batch["student_valid"]
  loss_mask = jnp.zeros_like(valid).at[:, PS:].set(True)
  logits = np.asarray(nnx.merge(graphdef, params)(tokens, valid=valid), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = [-logp[b, t - 1, tokens[b, t]] for b in range(B) for t in range(1, PS + C) if loss_mask[b, t]]
  loss, _ = sft_loss(nnx.merge(graphdef, params), tokens, valid, loss_mask)
  np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)
  opt = optax.adam(1e-2)
  step = jax.jit(make_sft_step(graphdef, opt))
  state = init_state(params, opt)
  sft_batch = dict(tokens=tokens, valid=valid, loss_mask=loss_mask)
  losses = []
  for _ in range(20):
    state, m = step(state, sft_batch)
    losses.append(float(m["train/loss"]))
  assert losses[-1] < 0.5 * losses[0]


def test_importance_weights_scale_the_optimised_gradient(setup):
  """With mu = pi / 2 on every token the truncated weight is min(2, clip): grads scale by it."""
  graphdef, params, tparams, batch = setup
  student = nnx.merge(graphdef, params)
  logits = student(batch["student_tokens"], valid=batch["student_valid"])[:, -C - 1:-1]
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits), batch["student_tokens"][:, -C:, None], -1)[..., 0]
  opt = optax.sgd(1.0)
  grads = {}
  for clip, use in ((None, False), (1.5, True), (10.0, True)):
    step = jax.jit(make_opd_step(graphdef, graphdef, opt, objective="token_sampled",
                                 hparams={"is_clip": clip}, importance_weights=use))
    b = dict(batch, behavior_logprobs=logp - jnp.log(2.0))
    new, _ = step(init_state(params, opt, teacher=tparams), b)
    grads[clip] = jax.tree.map(lambda a, b: b - a, new.params, params)
  for g0, g15, g10 in zip(*(jax.tree.leaves(grads[c]) for c in (None, 1.5, 10.0))):
    np.testing.assert_allclose(g15, 1.5 * g0, atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(g10, 2.0 * g0, atol=1e-6, rtol=1e-4)
