"""Optimizer/schedule construction from configs."""

import ml_collections
import numpy as np
import pytest

from caopd_jax.optim import make_optimizer


def cfg(**kw):
  base = dict(name="adamw", lr=2e-5, schedule="cosine", warmup_frac=0.1, grad_clip=1.0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_cosine_with_warmup_matches_formula():
  _, sched = make_optimizer(cfg(), 100)
  lr = np.array([float(sched(i)) for i in range(101)])
  np.testing.assert_allclose(lr[:11], 2e-5 * np.arange(11) / 10, rtol=1e-5)
  np.testing.assert_allclose(lr[10:], 1e-5 * (1 + np.cos(np.pi * np.arange(91) / 90)), atol=1e-9)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_tiny_runs_have_valid_schedules(steps):
  for schedule in ("cosine", "linear", "constant"):
    _, sched = make_optimizer(cfg(schedule=schedule), steps)
    assert all(np.isfinite(float(sched(i))) for i in range(steps + 1))


def test_unknown_names_raise():
  with pytest.raises(ValueError, match="valid"):
    make_optimizer(cfg(name="adafactor"), 10)
  with pytest.raises(ValueError, match="valid"):
    make_optimizer(cfg(schedule="exp"), 10)
