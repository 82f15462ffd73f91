"""CaOPD replacement on token ids and the assembled OPD batch, checked by decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from caopd_jax import caopd as ops
from caopd_jax.iteration import make_iteration
from caopd_jax.models import ModelConfig, Transformer
from caopd_jax.prompts import Templates, auto_widths, encode_prompts, response_text, teacher_text
from caopd_jax.rollouts import Rollouts
from caopd_jax.sampling import SampleOutput, SamplingConfig
from caopd_jax.tokenizers import CharTokenizer, pad_right
from caopd_jax.train_step import init_state, make_opd_step

TOK = CharTokenizer()
T = Templates()
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


def test_replace_completion_confidence_cases():
  texts = ["122\nConfidence: 0.9", "12 \n", "7\nxx Confidence: 1Confidence: 0.3", ""]
  ids, mask = pad_right([TOK.encode(t) + [TOK.eos_id] for t in texts], 40, TOK.pad_id)
  (suf, suf_len), _ = ops.confidence_tables(TOK, 8)
  new, valid = ops.replace_completion_confidence(
      jnp.asarray(ids), jnp.asarray(mask), jnp.array([5, 8, 0, 3]), TOK.encode("Confidence:"),
      suf, suf_len, stop_ids=(TOK.eos_id,), strip_ids=tuple(TOK.encode(" \n")))
  got = [decode_valid(new[i], valid[i]) for i in range(4)]
  assert got == ["122\nConfidence: 0.62<eos>", "12\nConfidence: 1.00<eos>",
                 "7\nxx\nConfidence: 0.00<eos>", "\nConfidence: 0.38<eos>"]


RECORDS = [{"question": "12+7", "answer": "19"}, {"question": "345+678", "answer": "1023"}]


def fake_rollouts(correct, extra=""):
  """K completions per prompt: correct ones answer right (then `extra`), all say 0.99."""
  texts = []
  for b, r in enumerate(RECORDS):
    for k in range(K):
      ans = r["answer"] + extra if correct[b][k] else "0"
      texts.append(response_text(T, ans, "0.99"))
  ids, mask = pad_right([TOK.encode(t) + [TOK.eos_id] for t in texts], 24, TOK.pad_id)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  return SampleOutput(ids, mask, jnp.zeros(ids.shape), jnp.zeros(ids.shape),
                      jnp.sum(mask, -1)), jnp.asarray(correct)


def make(mode, caopd):
  model = Transformer(ModelConfig.tiny(vocab_size=TOK.vocab_size))
  graphdef, params = nnx.split(model)
  opt = optax.sgd(0.0)
  step = make_opd_step(graphdef, graphdef, opt, objective="full_forward")
  sampling = SamplingConfig(max_new_tokens=24, stop_ids=(TOK.eos_id,))
  it = make_iteration(graphdef, step, TOK, T, num_samples=K, sampling=sampling, caopd=caopd, mode=mode)
  prompts = encode_prompts(TOK, T, RECORDS, mode, auto_widths(TOK, T, RECORDS, mode))
  return it, jax.tree.map(jnp.asarray, prompts), init_state(params, opt, teacher=params)


@pytest.mark.parametrize("caopd", [False, True])
def test_batch_student_and_teacher_text(caopd):
  it, prompts, _ = make("demo", caopd)
  correct = [[True, False, True, False], [False, False, False, False]]
  samples, corr = fake_rollouts(correct)
  batch, metrics = it.build_batch(prompts, samples, corr)
  c = batch["completion_mask"].shape[1]
  for row in range(2 * K):
    b = row // K
    p_acc = ops.format_confidence(sum(correct[b]), K)
    conf = p_acc if caopd else "0.99"
    ans = RECORDS[b]["answer"] if correct[b][row % K] else "0"
    completion = decode_valid(batch["student_tokens"][row, -c:], batch["completion_mask"][row])
    assert completion == response_text(T, ans, conf) + "<eos>"
    student = decode_valid(batch["student_tokens"][row], batch["student_valid"][row])
    assert student == T.student.format(question=RECORDS[b]["question"]) + completion
    teacher = decode_valid(batch["teacher_tokens"][row], batch["teacher_valid"][row])
    ctx = teacher_text(T, "demo", RECORDS[b]["question"], RECORDS[b]["answer"],
                       p_acc if caopd else "1.00", note=caopd)
    assert teacher == ctx + completion
    assert ("empirical confidence for this question is " + p_acc in teacher) == caopd
  np.testing.assert_allclose(metrics["rollout/accuracy"], 2 / 8)
  # Sampler log-probs travel with unmodified (OPD) completions only: CaOPD edits them.
  assert ("behavior_logprobs" in batch) == (not caopd)


def test_correct_solution_uses_a_verified_rollout_else_the_demo():
  it, prompts, _ = make("correct_solution", True)
  correct = [[False, False, True, True], [False, False, False, False]]
  samples, corr = fake_rollouts(correct, extra="\nok")
  batch, metrics = it.build_batch(prompts, samples, corr)
  c = batch["completion_mask"].shape[1]
  # prompt 0: the solution is rollout 2's answer part ("19\nok"); prompt 1: none correct -> demo.
  for row, solution in ((0, "19\nok"), (K, "1023")):
    b = row // K
    teacher = decode_valid(batch["teacher_tokens"][row, :-c], batch["teacher_valid"][row, :-c])
    assert teacher == teacher_text(T, "correct_solution", RECORDS[b]["question"], solution,
                                   ops.format_confidence(sum(correct[b]), K), note=True)
  np.testing.assert_allclose(metrics["rollout/solution_from_rollout"], 0.5)


def test_fused_iteration_runs_and_p_acc_on_grid():
  it, prompts, state = make("demo", True)
  r = jax.jit(it.rollout)(state, prompts, jax.random.key(0))
  assert isinstance(r, Rollouts)
  assert set(np.round(np.asarray(r.p_acc) * K, 6)) <= set(range(K + 1))
  new_state, metrics = jax.jit(it.iteration)(state, prompts)
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["train/loss"]))
  assert not np.array_equal(np.asarray(new_state.rng), np.asarray(state.rng))
