"""The OPD batch and CaOPD's replacements on token ids, checked by decoding every sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from caopd_jax import contexts, tasks
from caopd_jax.models import ModelConfig, Transformer
from caopd_jax.opd import caopd as ops, prompts, verify
from caopd_jax.jobs.validate import ConfigError, validate
from caopd_jax.opd.iteration import Iteration
from caopd_jax.sampling import SampleOutput, SamplingConfig
from caopd_jax.tokenizers import CharTokenizer, pad_right
from caopd_jax.train.step import init_state, make_opd_step
from configs import common

TASK = tasks.get(common.arithmetic_task(answer_order="msb", pad_operands=False))
TOK = CharTokenizer()
K = 4


def decode_valid(ids, valid):
  return TOK.decode(np.asarray(ids)[np.asarray(valid)], skip_special=False)


def test_format_confidence_matches_paper_grid():
  assert [ops.format_confidence(k, 8) for k in range(9)] == [
      "0.00", "0.12", "0.25", "0.38", "0.50", "0.62", "0.75", "0.88", "1.00"]


@pytest.mark.parametrize("last", [False, True])
def test_find_marker_against_python(last):
  rs = np.random.RandomState(0)
  toks = rs.randint(0, 4, (50, 12))
  valid = rs.rand(50, 12) < 0.9
  marker = [1, 2]
  found, start = ops.find_marker(jnp.asarray(toks), jnp.asarray(valid), marker, last=last)
  for b in range(50):
    hits = [i for i in range(11) if toks[b, i] == 1 and toks[b, i + 1] == 2 and valid[b, i:i + 2].all()]
    assert bool(found[b]) == bool(hits)
    if hits:
      assert int(start[b]) == (hits[-1] if last else hits[0])


@pytest.mark.parametrize("last", [False, True])
def test_cut_and_splice_cases(last):
  texts = ["122\nConfidence: 0.9", "12 \n", "7\nxx Confidence: 1Confidence: 0.3", ""]
  ids, mask = pad_right([TOK.encode(t) + [TOK.eos_id] for t in texts], 40, TOK.pad_id)
  (suf, suf_len), _ = ops.confidence_tables(TOK, 8)
  cut = ops.completion_cut(jnp.asarray(ids), jnp.asarray(mask), TOK.encode("Confidence:"),
                           stop_ids=(TOK.eos_id,), strip_ids=tuple(TOK.encode(" \n")), last=last)
  new, valid = ops.splice(jnp.asarray(ids), cut, suf, suf_len, jnp.array([5, 8, 0, 3]), TOK.pad_id)
  got = [decode_valid(new[i], valid[i]) for i in range(4)]
  third = "7\nxx Confidence: 1" if last else "7\nxx"
  assert got == ["122\nConfidence: 0.62<eos>", "12\nConfidence: 1.00<eos>",
                 third + "\nConfidence: 0.00<eos>", "\nConfidence: 0.38<eos>"]


RECORDS = [{"id": 0, "question": "12+7", "answer": "19"},
           {"id": 1, "question": "345+678", "answer": "1023"}]


def fake_samples(correct, extras=None):
  """K completions per prompt: correct ones answer right (then extras[b][k]), all say 0.99."""
  texts = []
  for b, r in enumerate(RECORDS):
    for k in range(K):
      extra = extras[b][k] if extras else ""
      ans = r["answer"] + extra if correct[b][k] else "0"
      texts.append(TASK.response_text({"answer": ans}, "0.99"))
  ids, mask = pad_right([TOK.encode(t) + [TOK.eos_id] for t in texts], 24, TOK.pad_id)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  return SampleOutput(ids, mask, jnp.full(ids.shape, -0.5), jnp.zeros(ids.shape),
                      jnp.sum(mask, -1))


def make(context_name, caopd, loss_on="completion"):
  context = contexts.get(context_name)
  graphdef, params = nnx.split(Transformer(ModelConfig.tiny(vocab_size=TOK.vocab_size)))
  opt = optax.sgd(0.0)
  step = make_opd_step(graphdef, graphdef, opt, objective="full_forward")
  sampling = SamplingConfig(max_new_tokens=24, stop_ids=(TOK.eos_id,))
  it = Iteration(graphdef, graphdef, step,
                 verify.make(TASK, TOK, RECORDS, num_samples=K, width=24), context,
                 prompts.constants(TOK, TASK, context, RECORDS, K), K, sampling, caopd=caopd,
                 loss_on=loss_on)
  widths = prompts.widths(TOK, TASK, RECORDS, context)
  p = jax.tree.map(jnp.asarray, prompts.encode(TOK, TASK, RECORDS, context, widths))
  return it, p, init_state(params, opt, teacher=params)


@pytest.mark.parametrize("caopd", [False, True])
def test_batch_student_and_teacher_text(caopd):
  it, p, _ = make("demo", caopd)
  correct = [[True, False, True, False], [False, False, False, False]]
  samples = fake_samples(correct)
  verdict = it.verify(p, samples)
  np.testing.assert_array_equal(verdict.correct, correct)  # the in-graph exact-match verifier
  batch, metrics = it.batch(p, samples, verdict)
  c = batch["completion_mask"].shape[1]
  ctx = contexts.get("demo")
  for row in range(2 * K):
    b = row // K
    p_acc = ops.format_confidence(sum(correct[b]), K)
    ans = RECORDS[b]["answer"] if correct[b][row % K] else "0"
    completion = decode_valid(batch["student_tokens"][row, -c:], batch["completion_mask"][row])
    assert completion == TASK.response_text({"answer": ans}, p_acc if caopd else "0.99") + "<eos>"
    student = decode_valid(batch["student_tokens"][row], batch["student_valid"][row])
    assert student == TASK.student_text(TOK, RECORDS[b]) + completion
    teacher = decode_valid(batch["teacher_tokens"][row], batch["teacher_valid"][row])
    want = prompts.teacher_text(TOK, TASK, RECORDS[b], ctx, RECORDS[b]["answer"],
                                p_acc if caopd else "1.00", note=caopd)
    assert teacher == want + completion
    assert ("empirical confidence for this question is " + p_acc in teacher) == caopd
  np.testing.assert_allclose(metrics["rollout/accuracy"], 2 / 8)
  # Sampler log-probs travel with unmodified (OPD) completions only: CaOPD edits them.
  assert ("behavior_logprobs" in batch) == (not caopd)
  if not caopd:
    np.testing.assert_array_equal(np.asarray(batch["behavior_logprobs"])[:, :24],
                                  np.asarray(samples.logprobs))


@pytest.mark.parametrize("caopd", [False, True])
def test_answer_only_loss_counts_the_answer_tokens_alone(caopd):
  """loss_on="answer": the loss mask keeps each completion's answer, not its stated confidence
  (OPD's sampled one or CaOPD's spliced P_acc); the sequences themselves are unchanged."""
  correct = [[True, False, True, False], [False, False, False, False]]
  samples = fake_samples(correct, [["\n7", "", "", ""], [""] * K])
  full = make("demo", caopd)[0]
  it, p, _ = make("demo", caopd, loss_on="answer")
  verdict = it.verify(p, samples)
  batch, _ = it.batch(p, samples, verdict)
  ref, _ = full.batch(p, samples, verdict)
  c = batch["completion_mask"].shape[1]
  for row in range(2 * K):
    b = row // K
    ans = RECORDS[b]["answer"] + ("\n7" if row == 0 else "") if correct[b][row % K] else "0"
    assert decode_valid(batch["student_tokens"][row, -c:], batch["completion_mask"][row]) == ans
  for key in ("student_tokens", "student_valid", "teacher_tokens", "teacher_valid"):
    np.testing.assert_array_equal(batch[key], ref[key])
  with pytest.raises(ValueError, match="loss_on"):
    make("demo", caopd, loss_on="confidence")
  c = common.opd(caopd=caopd, loss_on="confidence")
  with pytest.raises(ConfigError, match="loss_on='confidence'"):
    validate(c)


def test_correct_solution_uses_the_first_verified_rollout_else_the_demo():
  it, p, _ = make("correct_solution", True)
  correct = [[False, True, False, True], [False, False, False, False]]
  extras = [["", "\nfirst", "", "\nsecond"], [""] * K]  # the two verified rollouts differ
  samples = fake_samples(correct, extras)
  # (the extras fail exact match: the verdict's `correct` is set by hand, its cut is the verifier's)
  verdict = it.verify(p, samples)._replace(correct=jnp.asarray(correct))
  batch, metrics = it.batch(p, samples, verdict)
  c = batch["completion_mask"].shape[1]
  ctx = contexts.get("correct_solution")
  for row, solution in ((0, "19\nfirst"), (K, "1023")):  # prompt 1: nothing verified -> demo
    b = row // K
    teacher = decode_valid(batch["teacher_tokens"][row, :-c], batch["teacher_valid"][row, :-c])
    assert teacher == prompts.teacher_text(TOK, TASK, RECORDS[b], ctx, solution,
                                           ops.format_confidence(sum(correct[b]), K), note=True)
  np.testing.assert_allclose(metrics["rollout/solution_from_rollout"], 0.5)


@pytest.mark.parametrize("caopd", [False, True])
def test_none_context_teacher_sees_the_student_prompt(caopd):
  it, p, _ = make("none", caopd)
  samples = fake_samples([[True, False, True, True], [False] * K])
  batch, _ = it.batch(p, samples, it.verify(p, samples))
  np.testing.assert_array_equal(batch["teacher_tokens"], batch["student_tokens"])
  np.testing.assert_array_equal(batch["teacher_valid"], batch["student_valid"])
  assert "head" not in p and "demo" not in p


def test_fused_iteration_runs_and_p_acc_on_grid():
  it, p, state = make("demo", True)
  new_state, metrics = jax.jit(it)(state, p)
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["train/loss"]))
  assert np.round(float(metrics["rollout/accuracy"]) * 2 * K, 5) % 1 == 0  # k/K per prompt
  assert not np.array_equal(np.asarray(new_state.rng), np.asarray(state.rng))
