"""OPD estimators compared on capability: a fixed, stronger teacher distilled into a weaker
student with each estimator (experiments/estimator_capability.py).

  python -m experiments.estimator_capability --config=configs/estimator_capability.py --out=DIR
  python -m experiments.estimator_capability --config=configs/estimator_capability.py:quick --out=DIR

Teacher and student are SFT models of the embedded task (configs/base.py): the teacher is the
0.8M default model trained longer (2500 steps, seed 1; held-out accuracy 0.998), the student the
~0.33M `common.small_model` trained 1500 steps (0.533: 2-digit 0.964, 3-digit 0.102; it has not
learned carries across three digits). Every cell is the `opd` job from that student with the
fixed teacher, teacher context `none` (the teacher knows more because it is stronger, not because
it sees privileged context), the student's own rollouts, one estimator; 3 OPD seeds per cell.
`teacher_dir` / `student_dir` reuse existing HF models.

Arguments (`:key=value,...`): quick (tiny steps, one seed, three cells; a smoke run).
"""

import ml_collections

from caopd_jax import config_utils
from configs import base, common

C = ml_collections.ConfigDict


def get_config(arg=None):
  a = config_utils.parse_arg(arg, quick=False)
  c = C()
  c.seed = 0           # held-out entropy sampling
  c.data_dir = ""      # tfds output; '' -> OUT/tfds
  c.task = common.arithmetic_task()  # one task for teacher, student and OPD
  c.teacher = base.get_config()
  c.teacher.update(dict(seed=1, steps=2500))
  c.teacher_dir = ""   # an existing HF teacher instead ('' -> trained in OUT/teacher)
  c.student = base.get_config()
  c.student.model = common.small_model()
  c.student_dir = ""   # an existing HF student instead ('' -> trained in OUT/student)
  o = common.opd(teacher_context="none", steps=500, log_every=10, checkpoint_every=250)
  o.task = c.task
  o.teacher.kind = "fixed"
  o.optim.lr = 1e-3
  o.report_objectives = ()
  o.eval.update(dict(splits=("test",)))
  c.opd = o
  c.seeds = (0, 1, 2)  # OPD seeds (rollouts, data order); teacher and student are fixed
  # (label, objective, hparams, config overrides). "stop_ids" in special_token_ids: the
  # student tokenizer's stop tokens (EOS), Fu et al.'s special-token masking.
  c.cells = (
      ("token_sampled", "token_sampled", (), ()),
      ("discounted gamma=0.5", "discounted", (("gamma", 0.5),), ()),
      ("discounted gamma=1", "discounted", (("gamma", 1.0),), ()),
      ("vopd", "vopd", (), ()),
      ("full_reverse", "full_reverse", (), ()),
      ("topk_reverse K=4", "topk_reverse", (("k", 4),), ()),
      ("topk_reverse K=16", "topk_reverse", (("k", 16),), ()),
      ("full_forward", "full_forward", (), ()),
      ("gjsd beta=0.5", "gjsd", (("beta", 0.5),), ()),
      ("mix lam=0.5", "mix", (("lam", 0.5),), ()),
      ("token_sampled top-p 0.9", "token_sampled", (), (("sampling.top_p", 0.9),)),
      ("token_sampled top-p 0.9 + truncated IS", "token_sampled", (("is_clip", 1.0),),
       (("sampling.top_p", 0.9), ("importance_weights", True))),
      ("token_sampled + special-token mask", "token_sampled",
       (("special_token_ids", "stop_ids"),), ()),
  )
  # Gradient statistics at the student base: `steps` OPD steps at lr 0 (fresh rollouts, fixed
  # parameters) with compare_estimators -> per-batch gradient norm and cosine to the exact
  # full-vocabulary gradient of each cell's estimator.
  c.variance = C(dict(steps=24))
  c.heldout_prompts = 200  # held-out questions for the student's token entropy
  if a.quick:
    c.teacher.steps = c.student.steps = 20
    c.task.num_train = 500
    o.update(dict(steps=6, log_every=2, checkpoint_every=6))
    o.eval.limit = 40
    c.seeds = (0,)
    c.cells = c.cells[:1] + c.cells[7:8] + c.cells[11:12]
    c.variance.steps = 3
    c.heldout_prompts = 16
  c.lock()
  return c
