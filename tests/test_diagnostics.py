"""Per-token training diagnostics against numpy brute force; the train step's diag/ metrics;
the teacher-prefix batch and the length curriculum (caopd_jax.opd.curriculum)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from caopd_jax.diagnostics import token_stats as ts
from caopd_jax.models import ModelConfig, Transformer
from caopd_jax.objectives.chunked import project
from caopd_jax import tasks
from configs import common
from caopd_jax.train.step import init_state, make_opd_step

TASK = tasks.get(common.arithmetic_task(pad_operands=False, answer_order="msb"))
TOK = TASK.new_tokenizer()


@functools.lru_cache(maxsize=None)
def tiny_model():
  """(graphdef, params) of a 1-layer decoder over TOK, built once (eager init is slow)."""
  return nnx.split(Transformer(ModelConfig.tiny(vocab_size=TOK.vocab_size, num_layers=1),
                               rngs=nnx.Rngs(3)))


def _np_logsoftmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def brute_force(sl, tl, tokens, mask, k, edges_pairs):
  """Loops over tokens in float64."""
  lp, lq = _np_logsoftmax(sl.astype(np.float64)), _np_logsoftmax(tl.astype(np.float64))
  rows = {n: [] for n in ts.STATS}
  pos = []
  for b in range(sl.shape[0]):
    for t in range(sl.shape[1]):
      if not mask[b, t]:
        continue
      p, q = np.exp(lp[b, t]), np.exp(lq[b, t])
      sq = set(np.argsort(-q, kind="stable")[:k].tolist())
      sp = set(np.argsort(-p, kind="stable")[:k].tolist())
      y = tokens[b, t]
      rows["student_entropy"].append(-(p * lp[b, t]).sum())
      rows["teacher_entropy"].append(-(q * lq[b, t]).sum())
      rows["teacher_topk_mass"].append(sum(q[v] for v in sq))
      rows["student_on_teacher_topk"].append(sum(p[v] for v in sq))
      rows["topk_overlap"].append(len(sp & sq) / k)
      rows["log_ratio"].append(lp[b, t, y] - lq[b, t, y])
      rows["kl_reverse"].append((p * (lp[b, t] - lq[b, t])).sum())
      rows["kl_forward"].append((q * (lq[b, t] - lp[b, t])).sum())
      pos.append(t)
  out = {f"diag/{n}": np.mean(v) for n, v in rows.items()}
  r, pos = np.asarray(rows["log_ratio"]), np.asarray(pos)
  out["diag/neg_reward_frac"] = np.mean(r > 0)
  for a, b in edges_pairs:
    sel = (pos >= a) & (pos < b)
    out[f"diag/log_ratio_pos{a}-{b}"] = r[sel].mean() if sel.any() else 0.0
  return out


def test_token_diagnostics_match_numpy_brute_force():
  rs = np.random.RandomState(0)
  b, t, v, k = 3, 11, 17, 4
  sl = rs.randn(b, t, v).astype(np.float32) * 2
  tl = rs.randn(b, t, v).astype(np.float32) * 3
  tokens = rs.randint(0, v, (b, t))
  mask = rs.rand(b, t) < 0.8
  mask[0, :] = False   # an empty row
  got = ts.compute(jnp.asarray(sl), jnp.asarray(tl), jnp.asarray(tokens), jnp.asarray(mask),
                   top_k=k)
  buckets = ts.buckets_for(t)
  assert buckets == ((0, 1), (1, 2), (2, 4), (4, 8), (8, 11))
  want = brute_force(sl, tl, tokens, mask, k, buckets)
  assert set(got) == set(want)
  for name, value in want.items():
    np.testing.assert_allclose(float(got[name]), value, rtol=2e-5, atol=2e-6, err_msg=name)
  assert 0 < float(got["diag/neg_reward_frac"]) < 1


def test_chunked_diagnostics_equal_unchunked():
  rs = np.random.RandomState(1)
  b, t, d, v = 2, 13, 8, 23
  sh, th = rs.randn(b, t, d).astype(np.float32), rs.randn(b, t, d).astype(np.float32)
  sk, tk = rs.randn(d, v).astype(np.float32), rs.randn(d, v).astype(np.float32)
  tokens = jnp.asarray(rs.randint(0, v, (b, t)))
  mask = jnp.asarray(rs.rand(b, t) < 0.9)
  ref = ts.compute(project(sh, sk), project(th, tk), tokens, mask, top_k=5, skip_first=2)
  got = jax.jit(lambda *a: ts.chunked_metrics(*a, chunk_size=4, top_k=5, skip_first=2))(
      sh, sk, th, tk, tokens, mask)
  for name in ref:
    np.testing.assert_allclose(float(got[name]), float(ref[name]), rtol=1e-5, atol=1e-6,
                               err_msg=name)


def _opd_batch(rs, vocab, b=2, ps=5, pt=7, c=6):
  tok = lambda n: jnp.asarray(rs.randint(3, vocab, (b, n)))
  comp = tok(c)
  return {"student_tokens": jnp.concatenate([tok(ps), comp], 1),
          "student_valid": jnp.ones((b, ps + c), bool),
          "teacher_tokens": jnp.concatenate([tok(pt), comp], 1),
          "teacher_valid": jnp.ones((b, pt + c), bool),
          "completion_mask": jnp.asarray(rs.rand(b, c) < 0.9)}


def test_train_step_diagnostics_flag():
  """diagnostics=True adds diag/ metrics equal to the unchunked reference on the step's logits
  (and leaves the loss alone); with False no diag/ metric is traced."""
  rs = np.random.RandomState(2)
  graphdef, params = tiny_model()
  tparams = jax.tree.map(lambda x: 1.5 * x, params)   # a different teacher, no second init
  opt = optax.sgd(0.1)
  batch = _opd_batch(rs, TOK.vocab_size)
  kw = dict(objective="full_reverse", chunk_size=4, hparams={"skip_first": 1})
  plain = make_opd_step(graphdef, graphdef, opt, **kw)
  _, m1 = jax.eval_shape(plain, init_state(params, opt, teacher=tparams), batch)
  assert m1 and not any(k.startswith("diag/") for k in m1)
  step = jax.jit(make_opd_step(graphdef, graphdef, opt, diagnostics=True, diagnostics_top_k=5,
                               **kw))
  _, m2 = step(init_state(params, opt, teacher=tparams), batch)
  assert set(m1) < set(m2)
  from caopd_jax import objectives  # pylint: disable=g-import-not-at-top

  @jax.jit
  def reference(params, tparams, batch):  # unchunked, on the full models' logits
    c = batch["completion_mask"].shape[1]
    sl = nnx.merge(graphdef, params)(batch["student_tokens"])[:, -c - 1:-1]
    tl = nnx.merge(graphdef, tparams)(batch["teacher_tokens"])[:, -c - 1:-1]
    tokens = batch["student_tokens"][:, -c:]
    return (ts.compute(sl, tl, tokens, batch["completion_mask"], top_k=5, skip_first=1),
            objectives.compute("full_reverse", sl, tl, tokens, batch["completion_mask"],
                               skip_first=1)[0])

  ref, loss = reference(params, tparams, batch)
  assert {k for k in m2 if k.startswith("diag/")} == set(ref)
  for k, v in ref.items():
    np.testing.assert_allclose(float(m2[k]), float(v), rtol=1e-4, atol=1e-5, err_msg=k)
  np.testing.assert_allclose(float(m2["train/loss"]), float(loss), rtol=1e-5)


# ---- teacher-prefix batches (caopd_jax.opd.iteration) and the length curriculum ---------------------

def test_teacher_prefix_batch_decodes_to_teacher_samples():
  """Teacher rollouts are sampled with the teacher's privileged context (the same tokens as an
  independent encoding of it give) and the batch scores exactly those tokens: after the
  student's own prompt for the student, after that context for the teacher; max_completion
  cuts the loss mask."""
  from caopd_jax import contexts  # pylint: disable=g-import-not-at-top
  from caopd_jax.opd import prompts, verify  # pylint: disable=g-import-not-at-top
  from caopd_jax.opd.iteration import Iteration  # pylint: disable=g-import-not-at-top
  from caopd_jax.sampling import SamplingConfig, sample  # pylint: disable=g-import-not-at-top
  from caopd_jax.tokenizers import pad_left  # pylint: disable=g-import-not-at-top
  tok, ctx = TOK, contexts.get("demo")
  records = [{"id": 0, "question": "12+7", "answer": "19"}, {"id": 1, "question": "45+68", "answer": "113"}]
  k = 3
  graphdef, params = tiny_model()
  sampling = SamplingConfig(max_new_tokens=6, stop_ids=(tok.eos_id,), pad_id=tok.pad_id)
  it = Iteration(graphdef, graphdef, None, verify.make(TASK, tok, records, num_samples=k, width=6),
                 ctx, prompts.constants(tok, TASK, ctx, records, k), k, sampling,
                 prefix_source="teacher")
  p = prompts.encode(tok, TASK, records, ctx, prompts.widths(tok, TASK, records, ctx))
  p = jax.tree.map(jnp.asarray, {**p, "max_completion": np.array([2, 4], np.int32)})
  key = jax.random.key(5)
  state = init_state(params, optax.sgd(0.0), teacher=params)

  @jax.jit
  def run(state, p, key):
    samples, verdict = it.rollout(state, p, key)
    return (samples, verdict), it.batch(p, samples, verdict)

  (samples, verdict), (batch, metrics) = run(state, p, key)
  ctx_text = [prompts.teacher_text(tok, TASK, r, ctx, TASK.solution_text(r), "1.00", note=False)
              for r in records]
  ids, valid = pad_left([tok.encode(ctx_text[i // k]) for i in range(2 * k)], 64, tok.pad_id)
  ref = sample(graphdef, params, jnp.asarray(ids), jnp.asarray(valid), key, sampling)
  np.testing.assert_array_equal(samples.tokens, ref.tokens)
  c = batch["completion_mask"].shape[1]
  dec = lambda x, m: tok.decode(np.asarray(x)[np.asarray(m)], skip_special=False)
  for row in range(2 * k):
    comp = dec(samples.tokens[row], samples.mask[row])
    assert dec(batch["student_tokens"][row, -c:], batch["student_valid"][row, -c:]) == comp
    assert dec(batch["student_tokens"][row], batch["student_valid"][row]) == (
        TASK.student_text(tok, records[row // k]) + comp)
    assert dec(batch["teacher_tokens"][row], batch["teacher_valid"][row]) == ctx_text[row // k] + comp
  np.testing.assert_allclose(metrics["rollout/accuracy"], np.mean(verdict.correct))
  np.testing.assert_array_equal(batch["completion_mask"], np.asarray(samples.mask)
                                & (np.arange(c)[None] < np.repeat([2, 4], k)[:, None]))


def test_length_curriculum_rule():
  from caopd_jax.opd.curriculum import LengthCurriculum  # pylint: disable=g-import-not-at-top
  cur = LengthCurriculum(start=4, increment=4, max_len=10, every=5, h_min=0.5)
  assert cur.next_length(4, 0.6) == 8 and cur.next_length(8, 0.9) == 10
  assert cur.next_length(8, 0.4) == 8   # entropy below H_min: hold the length
  hist = [{"step": 5, "max_completion": 8}, {"step": 10, "max_completion": 8},
          {"step": 15, "max_completion": 10}]
  assert [LengthCurriculum.length_at(hist, s, 4) for s in (0, 4, 5, 12, 15, 40)] == [
      4, 4, 8, 8, 10, 10]
