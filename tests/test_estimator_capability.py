"""configs/estimator_capability.py: every cell is a valid OPD job with the cell's estimator,
hyperparameters and overrides (the experiment itself is run by hand; experiments/README.md)."""

import pytest

from caopd_jax import jobs, objectives
from configs import estimator_capability as cfg_lib
from experiments import estimator_capability as ec


@pytest.fixture(scope="module")
def cfg():
  return cfg_lib.get_config()


def test_every_cell_is_a_valid_opd_job_with_its_estimator(cfg):
  assert len({c[0] for c in cfg.cells}) == len(cfg.cells)
  for cell in cfg.cells:
    c = ec.cell_config(cfg, cell, seed=2, student="/s", teacher="/t", data_dir="/d",
                       stop_ids=(2,))
    jobs.validate(c)
    assert (c.objective.name, c.seed, c.init_from, c.teacher.path, c.teacher.kind) == (
        cell[1], 2, "/s", "/t", "fixed")
    hp = c.objective.hparams.to_dict()
    objectives.get_objective(cell[1]).resolve(hp)  # unknown hparams would raise
    for k, v in cell[2]:
      assert hp[k] == ((2,) if v == "stop_ids" else v)
    for path, v in cell[3]:
      node = c
      for p in path.split("."):
        node = node[p]
      assert node == v


def test_the_fu_et_al_fixes_change_only_what_they_name(cfg):
  by_label = {cell[0]: ec.cell_config(cfg, cell, seed=0, student="/s", teacher="/t",
                                      data_dir="/d", stop_ids=(2,)) for cell in cfg.cells}
  plain = by_label["token_sampled"]
  top_p = by_label["token_sampled top-p 0.9"]
  is_ = by_label["token_sampled top-p 0.9 + truncated IS"]
  masked = by_label["token_sampled + special-token mask"]
  assert (plain.sampling.top_p, top_p.sampling.top_p, is_.sampling.top_p) == (1.0, 0.9, 0.9)
  assert (plain.importance_weights, top_p.importance_weights, is_.importance_weights) == (
      False, False, True)
  assert tuple(masked.objective.hparams.special_token_ids) == (2,)
  assert masked.sampling.top_p == 1.0 and not masked.importance_weights
