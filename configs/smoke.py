"""The default pipeline shrunk to run end to end in well under a minute (tests use it).

  python run.py --config=configs/smoke.py --workdir=/tmp/smoke

Arguments (`configs/smoke.py:key=value,...`, caopd_jax.config_utils.parse_arg):
  stage      pipeline (default: base -> OPD -> CaOPD -> calibration table), or one stage on its
             own: base | opd | caopd (with the smoke task / model; opd and caopd need init_from)
  objective  the OPD / CaOPD objective (caopd_jax.objectives), default full_forward
  lr         the OPD / CaOPD learning rate, default 3e-4
  init_from  HF directory of a trained base (stage=opd|caopd)
  data_dir   shared tfds directory ('' -> WORKDIR/tfds)

Sweep (get_sweep): 2 objectives x 2 learning rates for the OPD and CaOPD stages,
  python experiments/sweep.py --config=configs/smoke.py --workdir=/tmp/smoke_sweep
  python experiments/gather.py /tmp/smoke_sweep
"""

from caopd_jax import config_utils
from configs import default

STAGES = ("pipeline", "base", "opd", "caopd")


def get_config(arg=None):
  a = config_utils.parse_arg(arg, stage="pipeline", objective="full_forward", lr=3e-4,
                             init_from="", data_dir="")
  if a.stage not in STAGES:
    raise ValueError(f"Unknown stage {a.stage!r}; valid: {STAGES}.")
  c = default.get_config()
  c.task.update(dict(max_digits=2, ood_digits=1, num_train=400, num_test=40, num_ood=20))
  c.eval.update(dict(batch_size=40))
  c.eval.sampling.max_new_tokens = 16
  c.base.model.update(dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                           head_dim=16, intermediate_size=64))
  c.base.update(dict(steps=20, batch_size=16, log_every=10, checkpoint_every=10))
  for stage in (c.opd, c.caopd):
    stage.update(dict(steps=4, num_samples=4, prompts_per_step=2, log_every=2, checkpoint_every=2))
    stage.sampling.max_new_tokens = 16
    stage.objective.name = a.objective
    stage.optim.lr = a.lr
  c.data_dir = a.data_dir
  if a.stage == "pipeline":
    return c
  s = c[a.stage]  # one stage on its own, with the pipeline's shared settings
  s.update(dict(seed=c.seed, data_dir=c.data_dir))
  s.task = c.task
  if a.stage != "base":
    s.init_from, s.eval = a.init_from, c.eval
  return s


def get_sweep(add, arg=None):
  """2 objectives x 2 learning rates for the OPD / CaOPD stages (one pipeline per job)."""
  del arg
  for objective in ("full_forward", "full_reverse"):
    for lr in (3e-4, 1e-3):
      add(objective=objective, lr=lr)
