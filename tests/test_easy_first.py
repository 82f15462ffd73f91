"""SFT easy first (sft.easy_first): the first frac x steps draw only records of level <= max_level,
then the whole split; off (frac=0) it is the plain stream. The reason it exists, checked by
enumeration: on 2-digit additions the units digit of the sum carries no information about one
operand's units digit alone, on carry-free ones it does."""

import itertools

import numpy as np
import pytest

from caopd_jax import data, tasks
from caopd_jax.jobs.validate import validate
from caopd_jax.jobs.sft import batch_rows
from caopd_jax.jobs.validate import ConfigError
from configs import common

TASK = tasks.get(common.arithmetic_task(min_digits=2, max_digits=2))
RECORDS = [{"id": i, "question": f"{a}+{b}", "answer": str(a + b), "difficulty": 2}
           for i, (a, b) in enumerate(itertools.product(range(10, 100, 3), range(10, 100, 7)))]
LEVELS = [2]


def config(**easy_first):
  c = common.sft(task=common.arithmetic_task(min_digits=2, max_digits=2), steps=100,
                 batch_size=16)
  c.easy_first.update(easy_first)
  return c


def test_the_easy_steps_draw_only_easy_records_then_the_whole_split():
  rows_at = batch_rows(config(frac=0.3, by="carries", max_level=0), TASK, RECORDS, LEVELS)
  carries = lambda step: [TASK.level(r, "carries") for r in rows_at(step)]
  assert all(max(carries(s)) == 0 for s in range(30))
  later = np.concatenate([carries(s) for s in range(30, 100)])
  assert later.max() == 2 and 0.2 < np.mean(later == 0) < 0.5  # the split's mix again
  assert [r["id"] for r in rows_at(7)] == [r["id"] for r in rows_at(7)]  # a function of the step
  # every easy record is reachable: the easy stream is a permutation of the subset
  easy = {r["id"] for r in RECORDS if TASK.level(r, "carries") == 0}
  seen = {r["id"] for s in range(30) for r in rows_at(s)}
  assert seen <= easy and len(seen) >= min(len(easy), 16 * 30) * 0.95


def test_off_is_the_plain_stream():
  rows_at = batch_rows(config(frac=0.0, by="carries"), TASK, RECORDS, LEVELS)
  plain = data.BatchIterator(RECORDS, 16, seed=0)
  for s in (0, 5, 99):
    assert rows_at(s) == plain.batch(s)


def test_max_level_counts_carries_inclusively():
  rows_at = batch_rows(config(frac=1.0, by="carries", max_level=1), TASK, RECORDS, LEVELS)
  got = np.concatenate([[TASK.level(r, "carries") for r in rows_at(s)] for s in range(50)])
  assert got.max() == 1 and got.min() == 0


def test_no_easy_record_or_a_bad_level_is_a_config_error():
  hard = [r for r in RECORDS if TASK.level(r, "carries") == 2]
  with pytest.raises(ConfigError, match="no training record"):
    batch_rows(config(frac=0.5, by="carries", max_level=1), TASK, hard, LEVELS)
  with pytest.raises(ConfigError, match="easy_first"):
    validate(config(frac=0.5, by="digits"))
  with pytest.raises(ConfigError, match="easy_first"):
    validate(config(frac=1.5, by="carries"))
  validate(config(frac=0.0, by="digits"))  # off: its `by` is not read (a task without carries)


def mutual_information(pairs):
  """I(X; Y) in nats of the empirical joint of (x, y) pairs."""
  joint = {}
  for p in pairs:
    joint[p] = joint.get(p, 0) + 1
  n = len(pairs)
  px, py = {}, {}
  for (x, y), c in joint.items():
    px[x] = px.get(x, 0) + c
    py[y] = py.get(y, 0) + c
  return sum(c / n * np.log(c * n / (px[x] * py[y])) for (x, y), c in joint.items())


def test_the_units_digit_says_nothing_of_one_operand_digit_except_without_carries():
  every = [(a, b) for a in range(10, 100) for b in range(10, 100)]
  units = lambda ab: [(a % 10, (a + b) % 10) for a, b in ab]
  carry_free = [(a, b) for a, b in every
                if TASK.level({"question": f"{a}+{b}"}, "carries") == 0]
  assert mutual_information(units(every)) < 1e-12
  # carry-free: P(a0) = (10 - a0) / 55, the units digit uniform on [a0, 9] given a0, and
  # P(units = y) = (y + 1) / 55, so I = H(units) - H(units | a0) in closed form (0.295 nats)
  h_units = -sum((y + 1) / 55 * np.log((y + 1) / 55) for y in range(10))
  h_given = sum((10 - a) / 55 * np.log(10 - a) for a in range(10))
  assert mutual_information(units(carry_free)) == pytest.approx(h_units - h_given, rel=1e-9)
  assert h_units - h_given > 0.25
