"""Gradient alignment (caopd_jax.diagnostics.alignment): the ideal direction against autodiff,
the score's fixed points, logit space against a brute-force parameter-space cosine, targeted
rollouts against exact enumeration on the toy, and the LM continuation against the sampler."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from caopd_jax import objectives
from caopd_jax.diagnostics import alignment as al, toy as dtoy
from caopd_jax.models import ModelConfig, Transformer
from caopd_jax.objectives.chunked import project
from caopd_jax.sampling import SamplingConfig, sample
from caopd_jax.toy import enumerable as en


@functools.lru_cache(maxsize=None)
def tiny_model():
  """(graphdef, params) of a 1-layer vocab-16 decoder, built once per module (eager init is the
  slowest part of these tests on a busy CPU)."""
  return nnx.split(Transformer(ModelConfig.tiny(vocab_size=16, num_layers=1), rngs=nnx.Rngs(0)))


def test_score_fixed_points():
  """cos(g, g) = 1 and cos(g*, -g*) = -1, for the ideal direction and every objective's."""
  rs = np.random.RandomState(0)
  b, t, v = 2, 5, 11
  sl, tl = jnp.asarray(rs.randn(b, t, v)), jnp.asarray(rs.randn(b, t, v) * 2)
  tokens, mask = jnp.asarray(rs.randint(0, v, (b, t))), jnp.ones((b, t), bool)
  logp = jax.nn.log_softmax(sl)
  cand, valid = al.candidates(logp, tokens, 3)
  ideal, _, _ = al.ideal_logit_grad(logp, cand, valid, jnp.asarray(rs.rand(b, t, 4)))
  grads = jax.jit(al.objective_logit_grads)(sl, tl, tokens, mask)
  for g in [ideal, *grads.values()]:
    np.testing.assert_allclose(al.cosine(g, g)[0], 1.0, rtol=1e-5)
  cos, ok = al.cosine(ideal, -ideal)
  np.testing.assert_allclose(cos, -1.0, rtol=1e-5)
  assert bool(jnp.all(ok))
  cos, ok = al.cosine(ideal, jnp.zeros_like(ideal))   # a zero direction is not scored
  assert not bool(jnp.any(ok)) and float(jnp.max(jnp.abs(cos))) == 0


def test_candidates_and_ideal_against_autodiff():
  rs = np.random.RandomState(1)
  v = 7
  z = jnp.asarray(rs.randn(4, v) * 2)
  logp = jax.nn.log_softmax(z)
  sampled = jnp.asarray([int(jnp.argmax(z[0])), 0, 3, 6])  # row 0: sampled = top-1 (a repeat)
  cand, valid = al.candidates(logp, sampled, 3)
  assert cand.shape == (4, 4) and list(np.asarray(valid[0])) == [True, False, True, True]
  for row in range(4):
    kept = np.asarray(cand[row])[np.asarray(valid[row])]
    assert len(set(kept)) == len(kept) and int(sampled[row]) in kept
  p = jnp.asarray(rs.rand(4, 4))
  ideal, pbar, cov = al.ideal_logit_grad(logp, cand, valid, p)
  # Reference: E_{v ~ softmax(z)} p_full(v) with p_full = p on the candidates and pbar elsewhere.
  for row in range(4):
    full = np.full(v, float(pbar[row]))
    for c, ok, pv in zip(np.asarray(cand[row]), np.asarray(valid[row]), np.asarray(p[row])):
      if ok:
        full[c] = pv
    ref = jax.grad(lambda zz: jnp.sum(jax.nn.softmax(zz) * full))(z[row])
    np.testing.assert_allclose(ideal[row], ref, atol=1e-6)
    kept = np.unique(np.asarray(cand[row])[np.asarray(valid[row])])
    np.testing.assert_allclose(cov[row], np.exp(logp[row])[kept].sum(), rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(ideal, -1), 0.0, atol=1e-6)


def test_windows_and_node_weights():
  w = al.depth_windows(20, first=1, growth=2.0)
  assert w == ((0, 1), (1, 3), (3, 7), (7, 15), (15, 20))
  assert al.depth_windows(4, 1, 1.0) == ((0, 1), (1, 2), (2, 3), (3, 4))
  assert al.Budget(horizon=20).rollouts_per_chain() == 5 * 5 * 16
  lengths = jnp.asarray([20, 9, 1, 4])
  pos, wts = jax.vmap(lambda k: al.select_nodes(k, lengths, w))(
      jax.random.split(jax.random.key(0), 4000))
  np.testing.assert_array_equal(wts[0], [[1, 2, 4, 8, 5], [1, 2, 4, 2, 0], [1, 0, 0, 0, 0],
                                         [1, 2, 1, 0, 0]])
  for k, (s, e) in enumerate(w):   # inside the reached part of the window
    live = wts[..., k] > 0
    assert bool(jnp.all(~live | ((pos[..., k] >= s) & (pos[..., k] < jnp.minimum(e, lengths)))))
  # Stratified estimate of a per-position quantity f(t) = t^2 is unbiased for its chain mean.
  f = pos.astype(jnp.float32) ** 2
  est = jnp.mean(jnp.sum(wts * f, -1) / jnp.sum(wts, -1), 0)
  want = [np.mean(np.arange(n) ** 2) for n in (20, 9, 1, 4)]
  np.testing.assert_allclose(est, want, rtol=0.03)


def _node_vectors(rs, sl, tokens, rows, pos, name="full_reverse"):
  """Ideal and objective direction at nodes (rows, pos) for random p_succ and teacher."""
  b, t, v = sl.shape
  tl = jnp.asarray(rs.randn(b, t, v) * 2)
  mask = jnp.ones((b, t), bool)
  logp = jax.nn.log_softmax(sl[rows, pos])
  cand, valid = al.candidates(logp, tokens[rows, pos], 3)
  ideal, pbar, _ = al.ideal_logit_grad(logp, cand, valid, jnp.asarray(rs.rand(len(rows), 4)))
  spec = ((name, name, ()),)
  grads = jax.jit(al.objective_logit_grads, static_argnums=4)(sl, tl, tokens, mask, spec)
  d = grads[name][rows, pos]
  return ideal, d, tl, cand, valid, pbar


def test_logit_alignment_equals_parameter_space_at_output_layer():
  """Exact case: the output kernel (and a logit bias) at nodes with fixed features h. The
  general case (all parameters) differs; it is checked against an independent autodiff
  reference and shown to differ from the logit cosine."""
  rs = np.random.RandomState(2)
  graphdef, params = tiny_model()
  model = nnx.merge(graphdef, params)
  b, t = 3, 6
  tokens = jnp.asarray(rs.randint(3, 16, (b, t)))
  h = jax.jit(lambda p: nnx.merge(graphdef, p).hidden(tokens)[0])(params)
  kernel = model.output_kernel()
  rows, pos = jnp.asarray([0, 1, 2, 2, 0]), jnp.asarray([0, 3, 5, 1, 4])
  sl = project(h, kernel)
  names = ("full_reverse", "full_forward", "token_sampled")
  vecs = [_node_vectors(rs, sl, tokens, rows, pos, name)[:2] for name in names]

  @jax.jit
  def exact_case(kernel, vecs):
    out = []
    for ideal, d in vecs:
      out.append((al.cosine(ideal, d)[0],
                  al.param_space_cosines(lambda k: project(h, k), kernel, rows, pos, ideal, d)[0],
                  al.param_space_cosines(lambda p: project(h, p[0]) + p[1],
                                         (kernel, jnp.zeros(16)), rows, pos, ideal, d)[0]))
    return out

  for name, (want, got_w, got_wb) in zip(names, exact_case(kernel, vecs)):
    np.testing.assert_allclose(got_w, want, atol=2e-5, err_msg=name)
    np.testing.assert_allclose(got_wb, want, atol=2e-5, err_msg=name)

  # General case: every parameter (features depend on theta; tied embeddings).
  full_logits = lambda p: nnx.merge(graphdef, p)(tokens)
  sl = jax.jit(full_logits)(params)
  ideal, d, tl, cand, valid, pbar = _node_vectors(rs, sl, tokens, rows, pos)
  got, ok = jax.jit(al.param_space_cosines, static_argnums=0)(full_logits, params, rows, pos,
                                                              ideal, d)
  assert bool(jnp.all(ok))
  logit_cos = al.cosine(ideal, d)[0]
  assert float(jnp.max(jnp.abs(got - logit_cos))) > 1e-3
  k = 1  # independent reference at node (rows[1], pos[1]): grads of the node's two objectives
  r, s = int(rows[k]), int(pos[k])
  pi = jnp.exp(jax.nn.log_softmax(sl[r, s]))
  full = jnp.full((16,), pbar[k]).at[cand[k]].set(ideal[k][cand[k]] / pi[cand[k]] + pbar[k])
  node_mask = jnp.zeros((b, t), bool).at[r, s].set(True)

  @jax.jit
  def reference(p):
    success = lambda p: jnp.sum(jax.nn.softmax(full_logits(p)[r, s]) * full)
    loss = lambda p: objectives.compute("full_reverse", full_logits(p), tl, tokens, node_mask)[0]
    ga, gb = jax.grad(success)(p), jax.grad(loss)(p)
    dot = lambda x, y: sum(jnp.vdot(u, w) for u, w in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
    return -dot(ga, gb) / jnp.sqrt(dot(ga, ga) * dot(gb, gb))

  ref = reference(params)
  np.testing.assert_allclose(got[k], ref, atol=1e-4)


def test_param_space_cosine_leaves_out_degenerate_directions_like_logit_space():
  """A direction of norm ~1e-13 (e_y - pi where the student is sure of y) has a defined but
  meaningless angle: both spaces must mark it not-ok and give 0, or the comparison of the two
  spaces reports a spurious difference of up to 2 (seen in the gradient-alignment experiment)."""
  rs = np.random.RandomState(3)
  kernel = jnp.asarray(rs.randn(8, 16), jnp.float32)
  h = jnp.asarray(rs.randn(2, 5, 8), jnp.float32)
  rows, pos = jnp.asarray([0, 1, 1]), jnp.asarray([2, 0, 4])
  ideal = jnp.asarray(rs.randn(3, 16), jnp.float32)
  d = jnp.asarray(rs.randn(3, 16), jnp.float32).at[1].multiply(1e-14)  # node 1: degenerate
  want, want_ok = al.cosine(ideal, d)
  got, ok = al.param_space_cosines(lambda k: project(h, k), kernel, rows, pos, ideal, d)
  np.testing.assert_array_equal(np.asarray(ok), [True, False, True])
  np.testing.assert_array_equal(np.asarray(ok), np.asarray(want_ok))
  assert float(got[1]) == 0.0 and float(want[1]) == 0.0
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_targeted_success_converges_on_enumerable_toy():
  """Monte Carlo p_succ at every node and candidate -> exact p_succ; RMS error ~ 1/sqrt(n)."""
  toy = en.Toy(vocab=3, horizon=4)
  theta, _ = en.init_tables(jax.random.key(0), toy, student_scale=1.0, student_noise=1.0)
  succ = dtoy.sum_mod_success(toy)
  exact = dtoy.exact_success(toy, theta, succ)
  _, _, comps, _ = en.sample(jax.random.key(1), theta, theta, toy, 24)
  windows = al.depth_windows(toy.horizon, 1, 2.0)
  pos, wts = al.select_nodes(jax.random.key(2), jnp.full((24,), toy.horizon), windows)
  assert pos.shape == (24, 3) and bool(jnp.all(wts > 0))
  cand = jnp.broadcast_to(jnp.arange(3), (24, 3, 3))
  want = exact[np.asarray(toy.prefix_index(comps))[np.arange(24)[:, None], np.asarray(pos)]]
  cont = dtoy.continuation(toy, theta, succ)

  groups = jax.jit(jax.vmap(lambda k: al.success_at_nodes(cont, k, comps, pos, cand, 16,
                                                          windows)))
  raw = np.asarray(groups(jax.random.split(jax.random.key(3), 64)))   # 64 estimates, n = 16 each
  errs = {}
  for n in (16, 64, 256, 1024):
    p = raw.reshape(n // 16, 64 // (n // 16), *raw.shape[1:]).mean(0)  # 64*16/n estimates of n
    errs[n] = np.sqrt(np.mean((p - want) ** 2))
    theory = np.sqrt(np.mean(want * (1 - want)) / n)
    assert 0.75 < errs[n] / theory < 1.3, (n, errs[n], theory)
  for n in (16, 64, 256):
    assert 1.5 < errs[n] / errs[4 * n] < 2.7, errs   # ~ sqrt(4) per 4x rollouts


def test_lm_completion_matches_direct_sampler():
  """Prefix + candidate assembly, left alignment and continuation: greedy continuations equal
  the sampler run on each row's explicit prompt ++ prefix; a stop candidate ends the row."""
  rs = np.random.RandomState(3)
  graphdef, params = tiny_model()
  n, p, e, horizon, start = 3, 5, 4, 7, 1
  prompt = jnp.asarray(rs.randint(3, 16, (n, p)))
  pvalid = jnp.asarray([[False, True, True, True, True], [True] * 5, [False, False, True, True, True]])
  samp = SamplingConfig(max_new_tokens=1, temperature=0.0, stop_ids=(2,), pad_id=0)
  complete = al.make_lm_completion(graphdef, params, prompt, pvalid, samp, horizon)
  rows = jnp.asarray([0, 1, 2, 1])
  prefix = jnp.asarray(rs.randint(3, 16, (4, e)))
  plen = jnp.asarray([3, 2, 4, 2])   # prompt + prefix = 7 tokens in rows 0-2
  prefix = prefix.at[3, 1].set(2)   # row 3's candidate is the stop token
  comp, mask = jax.jit(complete, static_argnums=4)(jax.random.key(0), rows, prefix, plen, start)
  n_new = horizon - start - 1
  ctx = jnp.stack([jnp.concatenate([prompt[int(rows[i])][pvalid[int(rows[i])]],
                                    prefix[i, :int(plen[i])]]) for i in range(3)])
  ref = sample(graphdef, params, ctx, jnp.ones(ctx.shape, bool), jax.random.key(0),
               SamplingConfig(max_new_tokens=n_new, temperature=0.0, stop_ids=(2,)))
  for i in range(4):
    l = int(plen[i])
    np.testing.assert_array_equal(comp[i, :l], prefix[i, :l])
    np.testing.assert_array_equal(mask[i, :l], True)
    if i == 3:
      assert not bool(jnp.any(mask[i, l:]))
      continue
    np.testing.assert_array_equal(comp[i, l:], ref.tokens[i, :horizon - l])
    np.testing.assert_array_equal(mask[i, l:], np.arange(horizon - l) < int(ref.lengths[i]))
