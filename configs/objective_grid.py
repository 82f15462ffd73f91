"""The 2x2 of prefix source x KL direction, the lambda mix and the entropy-gated length curriculum
on the embedded task (experiments/objective_grid.py).

  python -m experiments.objective_grid --config configs/objective_grid.py --out DIR
  python -m experiments.objective_grid --config configs/objective_grid.py:quick --out DIR

Every cell is the `opd` job (caopd_jax/jobs/opd.py, configs/opd.py: prefix_source, objective,
curriculum, diagnostics) from the same base student, with the smoke pipeline's task read at run
time. The base is the weak student of configs/gradient_alignment.py (`bases_dir` shares it;
`base_dir` uses an existing HF model).

Arguments (`:key=value,...`): quick (fewer steps and cells; a smoke run).
"""

import ml_collections

from caopd_jax import config_utils
from configs import gradient_alignment, smoke


def get_config(arg=None):
  a = config_utils.parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.bases_dir = ""                 # '' -> OUT/bases (shared with gradient_alignment)
  c.base = gradient_alignment.small_base(gradient_alignment.STUDENT_STEPS)
  c.base_dir = ""                  # an existing HF base student instead
  o = smoke.get_config("stage=opd")
  o.task = c.base.task             # the base's data
  o.update(dict(steps=60, num_samples=4, prompts_per_step=4, log_every=5, checkpoint_every=60,
                diagnostics=True, report_objectives=()))
  o.sampling.max_new_tokens = 16
  o.curriculum.update(dict(start=4, increment=2, every=10, h_min=0.3, eval_prompts=32))
  o.eval.update(dict(enabled=False, splits=("test",), batch_size=100, limit=0))  # (evaluated by
  # the experiment itself, with these settings)
  c.opd = o
  # (label, prefix_source, objective, hparams, curriculum)
  c.cells = (
      ("teacher x forward (SFT/KD)", "teacher", "full_forward", (), False),
      ("teacher x reverse", "teacher", "full_reverse", (), False),
      ("student x forward (on-policy SFT)", "student", "full_forward", (), False),
      ("student x reverse (OPD)", "student", "full_reverse", (), False),
      ("student x mix lam=0.5", "student", "mix", (("lam", 0.5),), False),
      ("student x reverse + curriculum", "student", "full_reverse", (), True),
  )
  c.heldout_prompts = 200          # held-out questions for entropy / length
  if a.quick:
    o.update(dict(steps=6, log_every=2, checkpoint_every=6))
    o.curriculum.every = 2
    c.cells = (c.cells[0], c.cells[3], c.cells[5])
    c.heldout_prompts = 64
    o.eval.limit = 64
  c.lock()
  return c
