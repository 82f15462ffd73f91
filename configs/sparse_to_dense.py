"""Sparse-to-dense ("Beyond GRPO and On-Policy Distillation", arXiv 2605.12483) on the embedded
task (experiments/sparse_to_dense.py), at one budget of rollout steps (prompts x K per step):

  (a) GRPO on the student for `budget` steps;
  (b) GRPO on the larger teacher base for `split[0]` x budget steps, then a forward-KL warm-up of
      the student on that teacher's rollouts (`prefix_source="teacher"`), then OPD on the
      student's own rollouts scored by the RL'd teacher (the rest of the budget).

  python -m experiments.sparse_to_dense --config=configs/sparse_to_dense.py --out=DIR
  python -m experiments.sparse_to_dense --config=configs/sparse_to_dense.py:quick --out=DIR

The student and the teacher base are SFT models of the task (configs/base.py): the student
smaller, the teacher base the default 0.8M model trained to moderate accuracy, so RL has room.
`student_dir` / `teacher_dir` reuse existing HF models. Every stage is the `opd` job.

Arguments (`:key=value,...`): quick (a smoke run: tiny steps and data).
"""

import ml_collections

from caopd_jax import config_utils
from configs import base, common

C = ml_collections.ConfigDict


def get_config(arg=None):
  a = config_utils.parse_arg(arg, quick=False)
  c = C()
  c.seed = 0
  c.data_dir = ""  # '' -> OUT/tfds
  c.task = common.arithmetic_task()
  c.student = base.get_config()
  c.student.model = common.small_model()
  c.student_dir = ""
  c.teacher = base.get_config()
  c.teacher.steps = 800
  c.teacher_dir = ""
  c.budget = 600  # rollout steps of 4 prompts x 8 samples, the same for (a) and (b)
  c.split = (1 / 3, 1 / 3, 1 / 3)  # (b): teacher GRPO, warm-up, OPD fractions of the budget
  o = common.opd(teacher_context="none", log_every=10, checkpoint_every=200, report_objectives=())
  o.task = c.task
  o.eval.update(dict(splits=("test",)))
  c.opd = o
  # GRPO's lr: at 5e-4 (Adam) GRPO wrecks even the 0.988 teacher (rollout accuracy 0.98 -> 0.56
  # in 10 steps, 0 by step 70: the update is lr-sized on every parameter however sparse the
  # group-normalised signal); at 3e-5 it holds it (0.988 after 60 steps). experiments/README.md.
  c.grpo = C(dict(lr=3e-5, hparams=C(dict(reduction="token_mean", kl_coef=0.0))))
  # Distillation lr 3e-4: at 1e-3 a fresh Adam state knocks the student down first (the
  # estimator-capability runs: rollout accuracy 0.47 -> ~0.05 in 100 steps before forward KL
  # recovers), too long for a 200-step stage.
  c.distill = C(dict(lr=3e-4, objective="full_forward"))
  if a.quick:
    c.student.steps = c.teacher.steps = 20
    c.task.num_train = 500
    c.budget = 9
    o.log_every = 1
    o.eval.limit = 40
  c.lock()
  return c
