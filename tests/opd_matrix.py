"""The OPD job on every task (tests/test_opd_job.py), run in a background subprocess.

Each registered task runs one iteration of the OPD job for OPD and for CaOPD, each with an EMA
and with a fixed teacher. `python tests/opd_matrix.py OUT` builds its own tiny models under OUT
and writes each run to OUT/<case>; the tests read the runs' files.
"""

import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from caopd_jax import jobs, tasks  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs.paper import common as paper  # pylint: disable=g-import-not-at-top,wrong-import-position

from shared_eval import EVAL_DIR, FOUND  # pylint: disable=g-import-not-at-top,wrong-import-position


def cases():
  """(task, caopd, teacher) of the matrix: every task x {OPD, CaOPD} x {EMA, fixed teacher}."""
  for name in sorted(tasks.TASKS):
    for caopd in (False, True):
      yield from ((name, caopd, teacher) for teacher in ("ema", "fixed"))


def case_id(name, caopd, teacher):
  return f"{name}-{caopd}-{teacher}"


def one_step_config(name, env, caopd, teacher, tmp=None):
  """A one-step OPD job of task `name` on the tiny models of `env`."""
  if name == "arithmetic":
    root, student, fixed = env
    c = common.opd(data_dir=str(root / "tfds"))
    c.task.update(dict(num_train=40, num_test=8, num_ood=4))
  elif name == "math":  # no math data is shared: a few GSM8K-style records written here
    from test_math import write_math  # pylint: disable=g-import-not-at-top
    student, fixed = env["student"], env["teacher"]
    c = common.opd(data_dir=str(tmp / "tfds"), max_prompt_len=96, max_demo_len=32)
    c.task = paper.task(name, manual_dir=write_math(str(tmp / "math_data")))
  else:
    student, fixed = env["student"], env["teacher"]
    c = common.opd(data_dir=env["tfds"], train_split="eval", max_prompt_len=96, max_demo_len=32)
    c.task = paper.task(name, manual_dir=EVAL_DIR, limit=4)
  c.update(dict(init_from=student, caopd=caopd, steps=1, num_samples=2, prompts_per_step=2,
                report_objectives=(), log_every=1, checkpoint_every=1))
  c.teacher.update(dict(kind=teacher, path=fixed if teacher == "fixed" else ""))
  c.sampling.max_new_tokens = 6
  c.eval.enabled = False
  return c


def arithmetic_models(root):
  """(root, student dir, teacher dir): tiny random decoders over the arithmetic task's tokens."""
  from hf_fixtures import tiny_model_dir  # pylint: disable=g-import-not-at-top
  tok = tasks.get(common.arithmetic_task()).new_tokenizer()
  return root, tiny_model_dir(root / "student", tok, 0), tiny_model_dir(root / "teacher", tok, 1, 24)


def main(out):
  out = pathlib.Path(out)
  arith = arithmetic_models(out / "arith")
  real = None
  if FOUND:
    import real_env  # pylint: disable=g-import-not-at-top
    real = real_env.build(out / "real")
  for name, caopd, teacher in cases():
    env = arith if name == "arithmetic" else real
    if env is None:
      continue
    d = out / case_id(name, caopd, teacher)
    d.mkdir()
    jobs.run(one_step_config(name, env, caopd, teacher, d), str(d / "w"))


if __name__ == "__main__":
  main(sys.argv[1])
