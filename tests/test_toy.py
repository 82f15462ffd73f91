"""Estimators from the registry against exact gradients of the enumerable toy, and the 1-D
control toy. Monte Carlo checks: for fixed directions u, |mean_b <u, g_b> - <u, target>| must be
below Z standard errors (computed from the same samples)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caopd_jax.toy import control1d, enumerable as en

TOY = en.Toy(vocab=3, horizon=4)
N = 1 << 15
Z = 5.0


@pytest.fixture(scope="module")
def setup():
  theta, teacher = en.init_tables(jax.random.key(0), TOY, coupling=1.0)
  g_seq, g_tok = en.exact_gradients(theta, teacher, TOY)
  _, _, tokens, _ = en.sample(jax.random.key(1), theta, teacher, TOY, N)
  k = jax.random.split(jax.random.key(2), 1)[0]
  rand = jax.random.normal(k, (16,) + theta.shape)
  dirs = jnp.concatenate([rand, jnp.stack([g_seq, g_tok, g_seq - g_tok])])
  return theta, teacher, np.asarray(g_seq), np.asarray(g_tok), tokens, dirs


def np_exact(theta, teacher):
  """Independent float64 numpy enumeration: (sequence grad, token grad) via the causal identity
  E[sum_t (sum_{t'>=t} r_t') s_t] and sum_c P(c) dKL/dz = P(c) p (log p/q - KL)."""
  theta, teacher = np.asarray(theta, np.float64), np.asarray(teacher, np.float64)
  seqs = np.asarray(TOY.all_sequences())
  rows = np.asarray(TOY.prefix_index(seqs))
  lsm = lambda x: x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
      x.max(-1, keepdims=True)
  lp, lq = lsm(theta[rows]), lsm(teacher[rows])                     # [S, H, V]
  lp_y = np.take_along_axis(lp, seqs[..., None], -1)[..., 0]
  r = lp_y - np.take_along_axis(lq, seqs[..., None], -1)[..., 0]
  prob = np.exp(lp_y.sum(-1))
  score = np.eye(TOY.vocab)[seqs] - np.exp(lp)
  ret = np.cumsum(r[:, ::-1], axis=1)[:, ::-1]
  p = np.exp(lp)
  kl = (p * (lp - lq)).sum(-1, keepdims=True)
  g_seq, g_tok = np.zeros_like(theta), np.zeros_like(theta)
  np.add.at(g_seq, rows, prob[:, None, None] * ret[..., None] * score)
  np.add.at(g_tok, rows, prob[:, None, None] * p * (lp - lq - kl))
  return g_seq, g_tok


def test_enumeration_and_sampler(setup):
  theta, teacher, g_seq, g_tok, tokens, _ = setup
  probs = np.asarray(en.sequence_probs(theta, TOY))
  assert probs.sum() == pytest.approx(1.0, abs=1e-5)
  ref_seq, ref_tok = np_exact(theta, teacher)
  np.testing.assert_allclose(g_seq, ref_seq, atol=2e-5)
  np.testing.assert_allclose(g_tok, ref_tok, atol=2e-5)
  codes = np.asarray(tokens) @ (TOY.vocab ** np.arange(TOY.horizon - 1, -1, -1))
  freq = np.bincount(codes, minlength=probs.size) / N
  assert np.all(np.abs(freq - probs) <= Z * np.sqrt(probs * (1 - probs) / N) + 1e-6)
  # the coupling makes the two targets clearly different (so the checks below can tell them apart)
  assert np.linalg.norm(g_seq - g_tok) > 0.2 * np.linalg.norm(g_seq)


def test_no_coupling_means_no_gap():
  theta, teacher = en.init_tables(jax.random.key(3), TOY, coupling=0.0)
  g_seq, g_tok = en.exact_gradients(theta, teacher, TOY)
  np.testing.assert_allclose(g_seq, g_tok, atol=1e-5)


def z_scores(setup, name, hparams, target):
  theta, teacher, _, _, tokens, dirs = setup
  g = en.per_sequence_grads(name, theta, teacher, TOY, hparams, tokens)
  proj = np.asarray(en.project(TOY, g, tokens, dirs), np.float64)     # [N, K]
  want = np.einsum("kpv,pv->k", np.asarray(dirs, np.float64), target)
  return (proj.mean(0) - want) / (proj.std(0, ddof=1) / np.sqrt(N))


CLAIMS = [("sequence", (), "seq"), ("discounted", (("gamma", 1.0),), "seq"),
          ("token_sampled", (), "tok"), ("discounted", (("gamma", 0.0),), "tok"),
          ("vopd", (), "tok"), ("vopd", (("baseline_top_k", 2),), "tok"),
          ("full_reverse", (), "tok")]


@pytest.mark.parametrize("name,hparams,target", CLAIMS)
def test_estimator_is_unbiased_for_its_target(setup, name, hparams, target):
  _, _, g_seq, g_tok, _, _ = setup
  z = z_scores(setup, name, hparams, g_seq if target == "seq" else g_tok)
  assert np.max(np.abs(z)) < Z, z


@pytest.mark.parametrize("name,target", [("sequence", "tok"), ("token_sampled", "seq")])
def test_checks_have_power(setup, name, target):
  """The same statistic rejects the other target: sequence is not the token-level gradient."""
  _, _, g_seq, g_tok, _, _ = setup
  z = z_scores(setup, name, (), g_seq if target == "seq" else g_tok)
  assert np.max(np.abs(z)) > 4 * Z


def test_vopd_lowers_variance(setup):
  theta, teacher, _, _, tokens, _ = setup
  exact = {n: float(en.exact_moments(n, theta, teacher, TOY)[1]) for n in ("token_sampled", "vopd")}
  assert exact["vopd"] < 0.9 * exact["token_sampled"], exact
  mc = {}
  for n in ("token_sampled", "vopd"):
    g = en.per_sequence_grads(n, theta, teacher, TOY, (), tokens)
    mean, second = en.moments(TOY, g, tokens, jnp.full((N,), 1.0 / N))
    mc[n] = float(jnp.sum(second) - jnp.sum(mean ** 2))
    assert mc[n] == pytest.approx(exact[n], rel=0.1)
  assert mc["vopd"] < mc["token_sampled"]


def test_full_reverse_is_the_conditional_mean_of_token_sampled(setup):
  """Exactly (by enumeration): E[token_sampled] = E[full_reverse] = token-level gradient, and the
  analytic one has lower variance; sequence's exact mean is the sequence gradient."""
  theta, teacher, g_seq, g_tok, _, _ = setup
  m_ts, v_ts = en.exact_moments("token_sampled", theta, teacher, TOY)
  m_fr, v_fr = en.exact_moments("full_reverse", theta, teacher, TOY)
  m_sq, _ = en.exact_moments("sequence", theta, teacher, TOY)
  np.testing.assert_allclose(m_ts, g_tok, atol=2e-5)
  np.testing.assert_allclose(m_fr, g_tok, atol=2e-5)
  np.testing.assert_allclose(m_sq, g_seq, atol=2e-5)
  assert v_fr < v_ts


def test_control_toy_variance_grows_with_gamma():
  env = control1d.Control()
  params = control1d.init_policy(jax.random.key(0), env)
  assert 3000 < sum(x.size for x in jax.tree.leaves(params)) < 6000
  var = {g: np.mean([float(control1d.output_grad_variance(params, env, jax.random.key(i), g))
                     for i in range(8)]) for g in (0.0, 1.0)}
  assert var[1.0] > 10 * var[0.0], var


def test_control_toy_distillation_reaches_target():
  env = control1d.Control()
  params = control1d.init_policy(jax.random.key(0), env)
  before = np.asarray(control1d.terminal_error(params, env))
  params, err = control1d.train(params, env, jax.random.key(1), 0.0, steps=200, lr=1e-2)
  after = np.asarray(control1d.terminal_error(params, env))
  assert np.all(after < 0.5) and np.all(before > 2.0), (before, after)
