"""The OPD objectives against float64 numpy references of their formulas (values and gradients),
and the mask / reduction / temperature / importance-weight / registry semantics on hand-made
inputs. Unbiasedness of the sampled estimators is checked on the enumerable toy (test_toy.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caopd_jax.objectives import OBJECTIVES, compute, core, get_objective

B, T, V = 2, 4, 6


# ------------------------------------------------------------------ numpy references (float64)
def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_kl(lp, lq):                      # KL(p || q) along the last axis
  return (np.exp(lp) * (lp - lq)).sum(-1)


def np_per_token(name, s, t, tokens, **hp):
  lp, lq = np_log_softmax(s), np_log_softmax(t)
  if name == "full_reverse":
    return np_kl(lp, lq)
  if name == "full_forward":
    return np_kl(lq, lp)
  if name == "mix":
    return hp["lam"] * np_kl(lp, lq) + (1 - hp["lam"]) * np_kl(lq, lp)
  if name == "gjsd":
    b = hp["beta"]
    if b == 0:
      return np_kl(lq, lp)
    if b == 1:
      return np_kl(lp, lq)
    lm = np.log(b * np.exp(lq) + (1 - b) * np.exp(lp))
    return b * np_kl(lq, lm) + (1 - b) * np_kl(lp, lm)
  if name == "topk_reverse":
    idx = np.argsort(-t, axis=-1)[..., :hp["k"]]
    sp, sq = np.take_along_axis(lp, idx, -1), np.take_along_axis(lq, idx, -1)
    return np_kl(np_log_softmax(sp), np_log_softmax(sq))
  raise KeyError(name)


def np_reduce(x, m, reduction):
  x = np.where(m, x, 0.0)
  if reduction == "token_mean":
    return x.sum() / max(m.sum(), 1)
  rows = [(x[b].sum(), m[b].sum()) for b in range(x.shape[0]) if m[b].sum() > 0]
  if reduction == "sequence_sum":
    return np.mean([s for s, _ in rows])
  return np.mean([s / n for s, n in rows])


def fd_grad(f, x, eps=1e-5):
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[i] = eps
    g[i] = (f(x + d) - f(x - d)) / (2 * eps)
  return g


def random_inputs(seed=0, scale=2.0):
  r = np.random.default_rng(seed)
  s = scale * r.standard_normal((B, T, V))
  t = scale * r.standard_normal((B, T, V))
  tokens = r.integers(0, V, (B, T))
  mask = np.array([[0, 1, 1, 1], [1, 1, 0, 0]], bool)
  return s, t, tokens, mask


ANALYTIC = [("full_reverse", {}), ("full_forward", {}), ("mix", {"lam": 0.3}),
            ("gjsd", {"beta": 0.0}), ("gjsd", {"beta": 0.3}), ("gjsd", {"beta": 1.0}),
            ("topk_reverse", {"k": 3}), ("topk_reverse", {"k": V})]


@pytest.mark.parametrize("name,hp", ANALYTIC)
@pytest.mark.parametrize("reduction", core.REDUCTIONS)
def test_analytic_closed_forms(name, hp, reduction):
  s, t, tokens, mask = random_inputs()
  ref = lambda x: np_reduce(np_per_token(name, x, t, tokens, **hp), mask, reduction)
  fn = lambda x: compute(name, x, jnp.asarray(t, jnp.float32), tokens, mask, reduction=reduction,
                         **hp)[0]
  loss, grad = jax.value_and_grad(fn)(jnp.asarray(s, jnp.float32))
  np.testing.assert_allclose(loss, ref(s), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, fd_grad(ref, s), rtol=1e-3, atol=1e-5)


def test_gjsd_endpoints_and_scale():
  s, t, tokens, mask = (jnp.asarray(a) for a in random_inputs(1))
  s, t = s.astype(jnp.float32), t.astype(jnp.float32)
  val = lambda n, **hp: jax.value_and_grad(lambda x: compute(n, x, t, tokens, mask, **hp)[0])(s)
  for beta, exact in ((0.0, "full_forward"), (1.0, "full_reverse")):
    for a, b in zip(val("gjsd", beta=beta), val(exact)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(val("gjsd", beta=jnp.float32(beta)), val(exact)):   # traced beta path
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(val("gjsd", beta=jnp.float32(0.3))[0], val("gjsd", beta=0.3)[0],
                             rtol=1e-6)
  # Interior values shrink towards the endpoints: ~ beta KL(q||pi) near 0, (1-beta) KL(pi||q) near 1.
  np.testing.assert_allclose(val("gjsd", beta=1e-3)[0] / 1e-3, val("full_forward")[0], rtol=2e-2)
  np.testing.assert_allclose(val("gjsd", beta=1 - 1e-3)[0] / 1e-3, val("full_reverse")[0], rtol=2e-2)


def np_sampled(name, s, t, tokens, mask, gamma=None, baseline_top_k=None):
  """Per-token (surrogate value, gradient w.r.t. logits) of the score-function estimators."""
  lp, lq = np_log_softmax(s), np_log_softmax(t)
  lp_y = np.take_along_axis(lp, tokens[..., None], -1)[..., 0]
  r = (lp_y - np.take_along_axis(lq, tokens[..., None], -1)[..., 0]) * mask
  if name == "token_sampled":
    adv = -r
  elif name in ("discounted", "sequence"):
    g = 1.0 if name == "sequence" else gamma
    adv = np.zeros_like(r)
    for b in range(r.shape[0]):
      for i in range(r.shape[1]):
        adv[b, i] = -sum(g ** (j - i) * r[b, j] for j in range(i, r.shape[1]))
  elif name == "vopd":
    if baseline_top_k is None:
      base = np_kl(lp, lq)
    else:
      idx = np.argsort(-s, axis=-1)[..., :baseline_top_k]
      base = np_kl(np_log_softmax(np.take_along_axis(lp, idx, -1)),
                   np_log_softmax(np.take_along_axis(lq, idx, -1)))
    adv = -(r - base * mask)
  score = np.eye(s.shape[-1])[tokens] - np.exp(lp)        # d log pi(y) / d logits
  return -adv * lp_y, -adv[..., None] * score


SAMPLED = [("token_sampled", {}), ("sequence", {}), ("discounted", {"gamma": 0.6}),
           ("discounted", {"gamma": 0.0}), ("vopd", {}), ("vopd", {"baseline_top_k": 3})]


@pytest.mark.parametrize("name,hp", SAMPLED)
@pytest.mark.parametrize("reduction", core.REDUCTIONS)
def test_sampled_surrogates(name, hp, reduction):
  """Value and gradient equal -A_t log pi(y_t) and -A_t grad log pi(y_t) with A_t detached."""
  s, t, tokens, mask = random_inputs(2)
  per_tok, per_grad = np_sampled(name, s, t, tokens, mask, **hp)
  fn = lambda x: compute(name, x, jnp.asarray(t, jnp.float32), tokens, mask, reduction=reduction,
                         **hp)[0]
  loss, grad = jax.value_and_grad(fn)(jnp.asarray(s, jnp.float32))
  np.testing.assert_allclose(loss, np_reduce(per_tok, mask, reduction), rtol=1e-5, atol=1e-6)
  scale = np.where(mask, 1.0, 0.0)[..., None]
  if reduction == "token_mean":
    scale = scale / mask.sum()
  elif reduction == "sequence_mean":
    scale = scale / mask.sum(1)[:, None, None] / B
  else:
    scale = scale / B
  np.testing.assert_allclose(grad, per_grad * scale, rtol=1e-4, atol=1e-6)


def test_reductions_hand_made():
  x = jnp.array([[1., 2., 3., 4.], [10., 20., 30., 40.], [7., 7., 7., 7.]])
  m = jnp.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
  assert float(core.reduce_loss(x, m, "token_mean")) == pytest.approx(63 / 5)
  assert float(core.reduce_loss(x, m, "sequence_mean")) == pytest.approx((1.5 + 20) / 2)
  assert float(core.reduce_loss(x, m, "sequence_sum")) == pytest.approx((3 + 60) / 2)
  assert float(core.reduce_loss(x, jnp.zeros_like(m), "token_mean")) == 0.0


def test_effective_mask_hand_made():
  tokens = jnp.array([[7, 5, 7, 9, 7, 5], [5, 9, 9, 5, 7, 9]])
  mask = jnp.array([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], bool)
  m = lambda **kw: np.asarray(core.effective_mask(mask, tokens, **kw)).astype(int).tolist()
  assert m() == [[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
  # first occurrence *within the mask*: the 7 at position 0 of row 0 is outside it
  assert m(special_token_ids=(7,)) == [[0, 1, 0, 1, 1, 0], [1, 1, 1, 1, 0, 1]]
  assert m(special_token_ids=(7, 9)) == [[0, 1, 0, 0, 1, 0], [1, 0, 1, 1, 0, 1]]
  assert m(special_token_ids=jnp.array([9])) == [[0, 1, 1, 0, 1, 0], [1, 0, 1, 1, 1, 1]]
  assert m(skip_first=2) == [[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
  # both rules count over the original mask: row 1's first 5 is position 0 (also skipped), so the
  # 5 at position 3 stays; row 0's first valid 5 is position 1 (also skipped).
  assert m(skip_first=2, special_token_ids=(5,)) == [[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
  assert m(skip_first=1, special_token_ids=(9,)) == [[0, 0, 1, 0, 1, 0], [0, 0, 1, 1, 1, 1]]


def test_masks_flow_into_the_loss():
  s, t, tokens, mask = random_inputs(3)
  tokens[0, 2] = tokens[0, 3] = 4
  kl = np_per_token("full_reverse", s, t, tokens)
  eff = mask.copy()
  eff[0, 2] = False                       # first 4 inside the mask of row 0
  eff[0, 1] = eff[1, 0] = False           # skip_first=1
  loss, metrics = compute("full_reverse", s, t, tokens, mask, special_token_ids=(4,), skip_first=1)
  np.testing.assert_allclose(loss, np_reduce(kl, eff, "token_mean"), rtol=1e-5)
  assert float(metrics["num_tokens"]) == eff.sum()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_temperature_jit_metrics_and_teacher_is_detached(name):
  s, t, tokens, mask = (jnp.asarray(a, jnp.float32) for a in random_inputs(4))
  tokens, mask = tokens.astype(jnp.int32), mask.astype(bool)
  hp = {"k": 3} if name == "topk_reverse" else {}
  if name == "grpo":
    hp = dict(rewards=jnp.array([1.0, 0.0]), group_rewards=jnp.array([[1.0, 0.0]] * 2),
              kl_coef=0.1)
  fn = jax.jit(functools.partial(compute, name, temperature=2.0, **hp))
  loss, metrics = fn(s, t, tokens, mask)
  loss2, metrics2 = compute(name, s / 2, t / 2, tokens, mask, **hp)
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)
  assert {"loss", "kl_reverse", "log_ratio", "num_tokens"} <= set(metrics)
  assert all(v.shape == () and v.dtype == jnp.float32 for v in metrics.values())
  np.testing.assert_allclose(metrics["kl_reverse"], np_reduce(
      np_per_token("full_reverse", np.asarray(s) / 2, np.asarray(t) / 2, None), mask, "token_mean"),
      rtol=1e-5)
  g_teacher = jax.grad(lambda x: compute(name, s, x, tokens, mask, **hp)[0])(t)
  assert float(jnp.abs(g_teacher).max()) == 0.0


def test_importance_weights():
  s, t, tokens, mask = random_inputs(5)
  lp_y = np.take_along_axis(np_log_softmax(s), tokens[..., None], -1)[..., 0]
  shift = np.array([[0.5, -1.0, 2.0, 0.1], [-0.3, 0.2, 0.0, 0.0]])
  behavior = np.where(mask, lp_y - shift, -np.inf)   # -inf outside the mask must not leak NaNs
  w = np.exp(shift)
  for name in ("token_sampled", "full_reverse"):
    base_tok = np_sampled(name, s, t, tokens, mask)[0] if name != "full_reverse" else \
        np_per_token(name, s, t, tokens)
    for clip in (None, 1.5):
      wc = w if clip is None else np.minimum(w, clip)
      loss, metrics = compute(name, s, t, tokens, mask, behavior_logprobs=behavior, is_clip=clip)
      np.testing.assert_allclose(loss, np_reduce(wc * base_tok, mask, "token_mean"), rtol=1e-5)
      np.testing.assert_allclose(metrics["is_weight"], np_reduce(wc, mask, "token_mean"), rtol=1e-5)
    same = compute(name, s, t, tokens, mask, behavior_logprobs=np.where(mask, lp_y, 0.0))[0]
    np.testing.assert_allclose(same, compute(name, s, t, tokens, mask)[0], rtol=1e-5)
  g = jax.grad(lambda x: compute("token_sampled", x, t, tokens, mask,
                                 behavior_logprobs=behavior)[0])(jnp.asarray(s, jnp.float32))
  assert np.isfinite(np.asarray(g)).all()


def test_discounted_returns_against_loop():
  r = np.random.default_rng(0).standard_normal((3, 9))
  for gamma in (0.0, 0.3, 1.0):
    ref = np.zeros_like(r)
    acc = np.zeros(3)
    for i in reversed(range(9)):
      acc = r[:, i] + gamma * acc
      ref[:, i] = acc
    np.testing.assert_allclose(core.discounted_returns(r, gamma), ref, rtol=1e-5, atol=1e-6)


def test_unknown_names_and_hparams_raise():
  s, t, tokens, mask = random_inputs()
  with pytest.raises(ValueError, match="valid: .*token_sampled"):
    get_objective("reverse_kl")
  with pytest.raises(ValueError, match="valid: .*gamma"):
    compute("discounted", s, t, tokens, mask, gama=0.5)
  with pytest.raises(ValueError, match="valid: .*baseline_top_k"):
    compute("vopd", s, t, tokens, mask, k=4)
  with pytest.raises(ValueError, match="reduction"):
    compute("full_reverse", s, t, tokens, mask, reduction="mean")
  with pytest.raises(ValueError, match="beta"):
    compute("gjsd", s, t, tokens, mask, beta=1.5)
