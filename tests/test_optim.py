"""Optimizer/schedule construction from configs."""

import numpy as np
import pytest

from caopd_jax.train.optim import make_optimizer
from configs import common


def cfg(**kw):
  c = common.opd().optim  # every field the optimizer reads
  c.update({**dict(lr=2e-5, schedule="cosine", warmup_frac=0.1, grad_clip=1.0), **kw})
  return c


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
