"""GRPO (caopd_jax/objectives/grpo.py): the group-normalised advantage and the clipped loss by
hand, its gradient against the exact policy gradient of the enumerable toy (exactly over all
groups, and as the mean of many sampled groups), and ratio 1 on the OPD job's own on-policy
rollouts."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caopd_jax import objectives
from caopd_jax.jobs import opd
from caopd_jax.diagnostics.toy import sum_mod_success
from caopd_jax.objectives.grpo import group_advantages
from caopd_jax.toy import enumerable as en
from opd_matrix import one_step_config

TOY = en.Toy(vocab=3, horizon=4)


def test_group_advantages_by_hand():
  r = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
  groups = jnp.repeat(r.reshape(2, 4), 4, axis=0)
  std = np.sqrt(4 * 0.25 / 3)  # unbiased std of (1, 0, 0, 1)
  want = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)]
  a = np.asarray(group_advantages(r, groups))
  np.testing.assert_allclose(a[:4], [want[0], want[1], want[1], want[0]], rtol=1e-6)
  np.testing.assert_array_equal(a[4:], 0.0)  # a group that all agrees teaches nothing
  np.testing.assert_allclose(group_advantages(r, groups, scale_rewards=False)[:4],
                             [0.5, -0.5, -0.5, 0.5])


def test_clipped_loss_by_hand():
  """Two rows (rewards 1, 0; A = +-0.7071), one token each, ratios 1.5 and 0.5: clipped at
  1.2 for the positive advantage and at 0.8 for the negative one, with no gradient there."""
  logits = jnp.log(jnp.array([[[0.5, 0.3, 0.2]], [[0.1, 0.6, 0.3]]]))
  tokens = jnp.array([[0], [1]])
  logp = jnp.log(jnp.array([[0.5], [0.6]]))
  old = logp - jnp.log(jnp.array([[1.5], [0.5]]))
  kw = dict(rewards=jnp.array([1.0, 0.0]), group_rewards=jnp.array([[1.0, 0.0]] * 2),
            old_logprobs=old, reduction="token_mean")
  mask = jnp.ones((2, 1), bool)
  loss, m = objectives.compute("grpo", logits, logits, tokens, mask, **kw)
  a = 0.5 / (np.sqrt(0.5) + 1e-4)
  want = (-min(1.5 * a, 1.2 * a) + -min(0.5 * -a, 0.8 * -a)) / 2
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert float(m["clip_fraction"]) == 1.0 and float(m["ratio"]) == pytest.approx(1.0)
  g = jax.grad(lambda x: objectives.compute("grpo", x, logits, tokens, mask, **kw)[0])(logits)
  np.testing.assert_array_equal(g, 0.0)  # both clipped on the side that stops the gradient
  kw["old_logprobs"] = logp - jnp.log(jnp.array([[1.1], [0.9]]))  # inside the clip range
  g = jax.grad(lambda x: objectives.compute("grpo", x, logits, tokens, mask, **kw)[0])(logits)
  # d/dz of -rho A log-softmax: -rho A (onehot - p) / 2 rows
  p = np.exp(np.asarray(jax.nn.log_softmax(logits, -1)))
  onehot = np.eye(3)[np.asarray(tokens)]
  want = -np.array([1.1 * a, 0.9 * -a])[:, None, None] * (onehot - p) / 2
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
  # kl_coef adds beta * mean k3 = q/pi - log(q/pi) - 1 against the reference (teacher) logits
  ref = jnp.log(jnp.array([[[0.2, 0.4, 0.4]], [[0.3, 0.3, 0.4]]]))
  base = objectives.compute("grpo", logits, ref, tokens, mask, **kw)[0]
  with_kl = objectives.compute("grpo", logits, ref, tokens, mask, kl_coef=0.1, **kw)[0]
  u = np.array([0.2 / 0.5, 0.3 / 0.6])
  assert float(with_kl - base) == pytest.approx(0.1 * np.mean(u - np.log(u) - 1), rel=1e-5)


def _group_loss(theta, tokens, rewards, scale_rewards):
  """GRPO loss of one group of K sequences (the registry objective, on-policy, sequence_sum)."""
  k = tokens.shape[0]
  logits = TOY.logits(theta, tokens)
  return objectives.compute(
      "grpo", logits, logits, tokens, jnp.ones(tokens.shape, bool), reduction="sequence_sum",
      rewards=rewards, group_rewards=jnp.broadcast_to(rewards, (k, k)),
      scale_rewards=scale_rewards)[0]


@pytest.fixture(scope="module")
def toy():
  theta, _ = en.init_tables(jax.random.key(0), TOY, coupling=1.0)
  success = sum_mod_success(TOY)
  seqs = TOY.all_sequences()
  reward = lambda tokens: success(tokens).astype(jnp.float32)
  value = lambda th: jnp.sum(en.sequence_probs(th, TOY) * reward(seqs))
  return theta, reward, jax.grad(value)(theta)  # the exact policy gradient of E[R]


def test_expected_gradient_is_the_policy_gradient_exactly(toy):
  """Over all V^H x V^H groups of K = 2, weighted by pi(y1) pi(y2): -E[grad loss] equals
  (K-1)/K grad E[R] (Dr. GRPO advantages; the group mean holds the row's own reward)."""
  theta, reward, pg = toy
  seqs = TOY.all_sequences()
  probs = en.sequence_probs(theta, TOY)
  n = seqs.shape[0]
  i, j = jnp.meshgrid(jnp.arange(n), jnp.arange(n), indexing="ij")
  pairs = jnp.stack([seqs[i.ravel()], seqs[j.ravel()]], 1)            # [n^2, 2, H]
  w = (probs[i] * probs[j]).ravel()

  def expected(th):
    per = jax.vmap(lambda t: _group_loss(th, t, reward(t), False))(pairs)
    return jnp.sum(w * per)

  g = -jax.grad(expected)(theta)
  assert np.linalg.norm(pg) > 1e-2
  np.testing.assert_allclose(g, 0.5 * pg, atol=2e-6)


@pytest.mark.parametrize("scale_rewards", [False, True])
def test_mean_of_sampled_groups(toy, scale_rewards):
  """2048 groups of K = 4 drawn from the sampler: the mean gradient is within 5 standard errors
  of (K-1)/K grad E[R] along random and gradient directions (without std scaling), and the
  std-scaled (GRPO) gradient points the same way (cosine > 0.9)."""
  theta, reward, pg = toy
  k, groups = 4, 2048
  _, _, tokens, _ = en.sample(jax.random.key(1), theta, theta, TOY, k * groups)
  tokens = tokens.reshape(groups, k, TOY.horizon)
  grads = jax.vmap(lambda t: -jax.grad(_group_loss)(theta, t, reward(t), scale_rewards))(tokens)
  g = np.asarray(grads, np.float64).reshape(groups, -1)
  target = 0.75 * np.asarray(pg, np.float64).ravel()
  if scale_rewards:
    mean = g.mean(0)
    assert mean @ target / np.linalg.norm(mean) / np.linalg.norm(target) > 0.9
    return
  dirs = np.concatenate([np.asarray(jax.random.normal(jax.random.key(2), (16, g.shape[1]))),
                         target[None]])
  proj = g @ dirs.T
  z = (proj.mean(0) - dirs @ target) / (proj.std(0, ddof=1) / np.sqrt(groups))
  assert np.max(np.abs(z)) < 5.0, z
  z_wrong = (proj.mean(0) - dirs @ (target / 0.75)) / (proj.std(0, ddof=1) / np.sqrt(groups))
  assert np.max(np.abs(z_wrong)) > 5.0  # the check can tell (K-1)/K from 1


def test_on_policy_ratio_is_one_in_the_opd_job(arithmetic_models, tmp_path):
  """GRPO through the OPD job's iteration: the sampler's log-probs are the train step's, so the
  ratio is 1 and nothing is clipped; rewards reach the loss from the verifier."""
  c = one_step_config("arithmetic", arithmetic_models, False, "ema")
  c.objective.name = "grpo"
  c.update(dict(num_samples=4, teacher_context="none"))
  run = opd.setup(c, str(tmp_path))
  prompts = jax.tree.map(jnp.asarray, run.get_batch(0))
  _, m = jax.jit(run.iteration)(run.state, prompts)
  assert float(m["train/ratio"]) == pytest.approx(1.0, abs=1e-4)
  assert float(m["train/clip_fraction"]) == 0.0
  assert np.isfinite(float(m["train/loss"])) and np.isfinite(float(m["train/advantage"]))
  # sampling at temperature 0.2 makes mu != pi: the ratio must see the sampler's log-probs
  cold = dataclasses.replace(run.iteration, sampling=dataclasses.replace(
      run.iteration.sampling, temperature=0.2))
  _, m = jax.jit(cold)(run.state, prompts)
  assert float(m["train/clip_fraction"]) > 0.05, float(m["train/clip_fraction"])
