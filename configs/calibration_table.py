"""The calibration table over seeds, the OOD split and a continual-learning run
(experiments/calibration_table.py).

  python -m experiments.calibration_table --config=configs/calibration_table.py --workdir=/tmp/ct
  python -m experiments.calibration_table --config=configs/calibration_table.py:quick --workdir=/tmp/ctq

Each seed runs the default pipeline (configs/default.py: base -> OPD -> CaOPD) with that seed
for the model initialisation, data order and rollouts (the generated task is shared). The
continual-learning run trains a base on both operations, then OPD or CaOPD on task A and then
on task B, measuring calibration on both tasks after each stage.
"""

import ml_collections

from configs import default


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1, 2)
  c.pipeline = default.get_config()
  # Confidence readouts (eval.confidence) every seed's models are evaluated with besides the
  # pipeline's own ("mean"), which comes first in results.md.
  c.readouts = ("sampled", "greedy")
  c.continual = ml_collections.ConfigDict(dict(
      enabled=True, seeds=(0,), task_a="add", task_b="sub",
      # the base on both operations sees each half as often as the default's base sees
      # addition: with the default's 1200 steps it reached only 0.526 on addition (an earlier
      # session's run; README "Continual learning")
      base_steps=2400))
  if arg == "quick":  # a few-minute smoke version (tiny model, few steps; numbers meaningless)
    from configs import smoke  # pylint: disable=g-import-not-at-top
    c.seeds = (0, 1)
    c.pipeline = smoke.get_config()
    c.continual.base_steps = 0
  elif arg:
    raise ValueError(f"Unknown argument {arg!r}; valid: '' or 'quick'.")
  c.lock()
  return c
