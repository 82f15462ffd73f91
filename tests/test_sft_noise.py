"""SFT label noise (sft.answer_noise, sft.context_noise): answers are wrong by one digit at the
configured rate per difficulty and format; the contexts' own solutions stay right; no noise
changes nothing."""

import numpy as np
import pytest

from caopd_jax import jobs, tasks
from caopd_jax.jobs.sft import noise_at, sft_texts
from configs import common

TASK = tasks.get(common.arithmetic_task())
TOK = TASK.new_tokenizer()
PAIRS = list(zip(range(10, 90, 1), range(95, 15, -1))) + list(zip(range(100, 900, 8),
                                                                    range(950, 150, -8)))
RECORDS = [{"id": i, "question": f"{a}+{b}", "answer": str(a + b), "difficulty": len(str(a))}
           for i, (a, b) in enumerate(PAIRS)]


def texts(noise=(), mix=(("student", 1.0),), seed=0, context_noise=()):
  return sft_texts(RECORDS, TASK, TOK, np.random.default_rng(seed), mix=mix, habit=(0.5,),
                   levels=[2, 3], num_samples=8, note_prob=0.5, answer_noise=noise,
                   context_noise=context_noise)


def answer_of(response):
  return response.split(TASK.confidence_prefix)[0]


def test_corrupted_answers_differ_in_exactly_one_digit_at_the_rate():
  wrong = 0
  for seed in range(10):
    for r, (_, response) in zip(RECORDS, texts((0.3,), seed=seed)):
      right, shown = TASK.solution_text(r), answer_of(response)
      diff = sum(a != b for a, b in zip(right, shown))
      assert len(shown) == len(right) and diff in (0, 1)
      wrong += diff
  n = 10 * len(RECORDS)
  assert abs(wrong / n - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)  # binomial, 4 standard errors
  assert all(answer_of(t[1]) != TASK.solution_text(r)
             for r, t in zip(RECORDS, texts((1 - 1e-9,))))


def test_no_noise_is_the_clean_recipe_and_noise_follows_format_and_difficulty():
  mix = (("student", 0.5), ("demo", 0.25), ("correct_solution", 0.25))
  clean = sft_texts(RECORDS, TASK, TOK, np.random.default_rng(0), mix=mix, habit=(0.5,),
                    levels=[2, 3], num_samples=8, note_prob=0.5)
  assert texts(mix=mix) == texts((0.0,), mix=mix, context_noise=(0.0, 0.0)) == clean
  always = 1 - 1e-9
  # answer noise touches the student format only
  for r, (_, response) in zip(RECORDS, texts((always,), mix=(("demo", 1.0),))):
    assert answer_of(response) == TASK.solution_text(r)
  # context noise: per difficulty, the context's solution stays right in the prompt
  for r, (prompt, response) in zip(RECORDS, texts(mix=(("demo", 0.5), ("correct_solution", 0.5)),
                                                  context_noise=(0.0, always))):
    assert TASK.solution_text(r) in prompt
    assert (answer_of(response) == TASK.solution_text(r)) == (r["difficulty"] == 2)
  for r, (_, response) in zip(RECORDS, texts(context_noise=(always,))):
    assert answer_of(response) == TASK.solution_text(r)  # (student format: untouched)


@pytest.mark.parametrize("noise", [(-0.1,), (0.2, 1.0)])
def test_bad_noise_is_a_config_error(noise):
  c = common.sft(answer_noise=noise)
  with pytest.raises(jobs.USER_ERRORS, match="answer_noise"):
    jobs.validate(c)


def test_noise_starts_at_noise_from():
  c = common.sft(steps=100, noise_from=0.4, answer_noise=(0.3,), context_noise=(0.0, 0.2))
  assert [bool(noise_at(c, s)["answer_noise"]) for s in (0, 39, 40, 99)] == [0, 0, 1, 1]
  assert noise_at(c, 40) == dict(answer_noise=(0.3,), context_noise=(0.0, 0.2))
  assert noise_at(c, 39) == dict(answer_noise=(), context_noise=())
  with pytest.raises(jobs.USER_ERRORS, match="noise_from"):
    jobs.validate(common.sft(noise_from=1.0))


def _digit_sum(n):
  return sum(int(ch) for ch in str(n))


def test_carries_match_the_digit_sum_identity():
  # Kummer: carries of a + b = (s(a) + s(b) - s(a + b)) / 9; borrows of a - b (a >= b) likewise.
  rng = np.random.default_rng(0)
  for a, b in rng.integers(0, 10**5, size=(500, 2)):
    a, b = int(max(a, b)), int(min(a, b))
    assert TASK.level({"question": f"{a}+{b}"}, "carries") * 9 == (
        _digit_sum(a) + _digit_sum(b) - _digit_sum(a + b))
    assert TASK.level({"question": f"{a}-{b}"}, "carries") * 9 == (
        _digit_sum(a - b) + _digit_sum(b) - _digit_sum(a))


def test_noise_by_carries_follows_the_carry_count():
  rates = (0.0, 0.5, 0.9)
  pairs = np.random.default_rng(1).integers(10, 100, size=(300, 2))
  records = [{"id": i, "question": f"{a}+{b}", "answer": str(a + b), "difficulty": 2}
             for i, (a, b) in enumerate(pairs)]
  wrong, count = np.zeros(3), np.zeros(3)
  for seed in range(10):
    out = sft_texts(records, TASK, TOK, np.random.default_rng(seed), mix=(("student", 1.0),),
                    habit=(0.5,), levels=[2, 3], num_samples=8, note_prob=0.5,
                    answer_noise=rates, noise_by="carries")
    for r, (_, response) in zip(records, out):
      k = min(TASK.level(r, "carries"), 2)
      count[k] += 1
      wrong[k] += answer_of(response) != TASK.solution_text(r)
  assert wrong[0] == 0 and count.min() > 100
  for k in (1, 2):
    p = rates[k]
    assert abs(wrong[k] / count[k] - p) < 4 * np.sqrt(p * (1 - p) / count[k])


def test_unknown_noise_level_is_a_config_error():
  with pytest.raises(jobs.USER_ERRORS, match="noise_by"):
    jobs.validate(common.sft(noise_by="digits"))
  jobs.validate(common.sft(noise_by="carries"))
  with pytest.raises(jobs.USER_ERRORS, match="noise_by"):  # no carries for multiplication
    jobs.validate(common.sft(noise_by="carries", task=common.arithmetic_task(op="mul1")))
