"""Base student: supervised warm-up from scratch on the embedded task (caopd_jax.sft_data).

  python run.py --config=configs/base.py --workdir=/tmp/base
"""

import ml_collections

from configs import common


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = "sft"
  c.seed = 0
  c.data_dir = ""  # '' -> WORKDIR/tfds
  c.task = common.task()
  c.model = common.model()
  c.steps = 1500
  c.batch_size = 64
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=3e-3, schedule="cosine", warmup_frac=0.05, b1=0.9, b2=0.98,
      weight_decay=0.01, grad_clip=1.0))
  # Format mix (student, demo, correct_solution), the base's stated confidence per difficulty
  # level from task.min_digits up (its "habit"), the note probability in teacher-format
  # examples, K for the confidence grid.
  c.mix = (0.6, 0.2, 0.2)
  c.habit = (0.88, 0.62)
  c.note_prob = 0.5
  c.num_samples = 8
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  # Device mesh (data, fsdp, tensor); -1 = all remaining devices (caopd_jax.sharding).
  c.mesh = (1, -1, 1)
  c.eval = common.evaluation()
  return c
