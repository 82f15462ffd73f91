"""Gradient alignment by teacher context on the embedded task (experiments/gradient_alignment.py).

  python -m experiments.gradient_alignment --config configs/gradient_alignment.py --out DIR
  python -m experiments.gradient_alignment --config configs/gradient_alignment.py:quick --out DIR

The task (digits, answer order, templates) is the smoke pipeline's (configs/smoke.py), read at run
time; the bases are trained here with a slightly larger model and more data than smoke's (a
1-layer, 32-wide model does not learn 2-digit addition in a few hundred steps). Two bases:
`student` (a weak one: mixed correct and incorrect rollouts) and `teacher` (trained longer, the
"strong" teacher); with `student.dir` / `teacher.dir` set, existing HF models are used instead.
`bases_dir` ('' -> OUT/bases) caches them, so configs/objective_grid.py can share them.

Arguments (`:key=value,...`): quick (fewer questions and rollouts; a ~1-2 min smoke run).
"""

import ml_collections

from caopd_jax import config_utils
from configs import common, smoke


# SFT steps of the weak student. The base's accuracy jumps between ~1200 steps (6% of rollouts
# correct) and 1500 (97%); 1350 gives the mixed correct / incorrect rollouts the experiment needs
# (2026-11-23, rollout accuracy printed by `python -m experiments.gradient_alignment
# --config configs/gradient_alignment.py:quick --out /tmp/gaq --config.bases_dir=/tmp/bq
# --config.student.steps=N`: 1100 / 1200 -> 6%, 1350 -> 69%, 1500 -> 97%; the full run at 900
# steps: 11%).
STUDENT_STEPS = 1350


def small_base(steps):
  """The smoke task's base stage (configs/smoke.py), with a model that can learn it."""
  c = smoke.get_config("stage=base")
  c.model.update(dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                      intermediate_size=128))
  c.task.update(dict(num_train=4000, num_test=200))
  c.update(dict(steps=steps, batch_size=64, log_every=100, checkpoint_every=steps))
  # clean labels, as measured (the default job's carry-dependent noise is not part of this base)
  c.update(dict(noise_by="difficulty", answer_noise=(), context_noise=(), noise_from=0.0))
  return c


def get_config(arg=None):
  a = config_utils.parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.bases_dir = ""             # '' -> OUT/bases (OUT/bases/tfds holds the data)
  c.base = small_base(STUDENT_STEPS)  # training recipe of both bases (steps set per role)
  c.student = ml_collections.ConfigDict(dict(dir="", steps=STUDENT_STEPS))
  c.teacher = ml_collections.ConfigDict(dict(dir="", steps=1500))
  c.split = "test"             # questions from the held-out split
  c.num_questions = 32
  c.num_samples = 4            # student rollouts per question
  c.sampling = common.sampling(max_new_tokens=16)
  # Targeted rollouts (caopd_jax.diagnostics.alignment.Budget); horizon 0 = the longest
  # verifier target of the chosen questions (answer + the confidence marker).
  c.budget = ml_collections.ConfigDict(dict(horizon=0, num_candidates=4, num_rollouts=16,
                                            first=1, growth=2.0))
  # (label, objective, hparams) scored at every node.
  c.objectives = (("full_reverse", "full_reverse", ()), ("full_forward", "full_forward", ()),
                  ("token_sampled", "token_sampled", ()), ("vopd", "vopd", ()),
                  ("topk_reverse", "topk_reverse", (("k", 8),)), ("mix", "mix", (("lam", 0.5),)))
  # Teacher -> contexts. "self": the student itself (self-distillation; "none" would be 0).
  c.contexts = ml_collections.ConfigDict(dict(self=("demo", "correct_solution"),
                                              strong=("demo", "correct_solution", "none")))
  c.param_nodes = 24           # nodes per (teacher, context, objective) for the parameter check
  if a.quick:
    c.num_questions = 8
    c.budget.num_rollouts = 8
    c.param_nodes = 8
  c.lock()
  return c
