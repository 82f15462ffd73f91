"""The one OPD program on every task: one-iteration runs of the OPD job on every registered task x
{OPD, CaOPD} x {EMA, fixed teacher} (tests/opd_matrix.py, run in the background), a brand-new
task defined here, outside the package, registered and run end to end (base -> OPD -> CaOPD ->
evaluation) through the job `run.py` runs, and the compile-only planner."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from caopd_jax import jobs, tasks
from caopd_jax.tasks.plain import PlainTask
from configs import common, smoke

import background  # pylint: disable=g-bad-import-order
import opd_matrix  # pylint: disable=g-bad-import-order
import shared_eval  # pylint: disable=g-bad-import-order
from opd_matrix import one_step_config  # pylint: disable=g-bad-import-order

_HERE = os.path.dirname(os.path.abspath(__file__))


def _runs(tmp):
  """Runs tests/opd_matrix.py in a subprocess (on the core the in-process tests leave idle)."""
  log = os.path.join(tmp, "log.txt")
  with open(log, "w") as f:
    proc = subprocess.run([sys.executable, os.path.join(_HERE, "opd_matrix.py"), tmp],
                          stdout=f, stderr=subprocess.STDOUT, timeout=1200,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  with open(log, errors="replace") as f:
    return pathlib.Path(tmp), proc.returncode, f.read()


def start_background():
  background.start("opd_matrix", _runs)


@pytest.fixture(scope="module")
def matrix_runs():
  root, rc, log = background.result("opd_matrix", _runs)
  assert rc == 0, log[-4000:]
  return root


@pytest.mark.parametrize("name,caopd,teacher", list(opd_matrix.cases()))
def test_every_task_runs_an_iteration_of_the_opd_job(matrix_runs, name, caopd, teacher):
  if name != "arithmetic" and not shared_eval.FOUND:
    pytest.skip(shared_eval.REASON)
  w = matrix_runs / opd_matrix.case_id(name, caopd, teacher) / "w"
  with open(w / "metrics.jsonl") as f:
    (m,) = [json.loads(line) for line in f]
  assert m["step"] == 1 and np.isfinite(m["train/loss"]) and m["train/grad_norm"] > 0
  assert 0 <= m["rollout/accuracy"] <= 1
  assert ("rollout/marker_found" in m) == (tasks.TASKS[name].verification == "text")
  assert os.path.exists(w / "model" / "config.json")


# ---- a task defined outside the package --------------------------------------------------------
class Reverse(PlainTask):
  """Spell a word backwards: 'Q: abc\\n...A: ' -> 'cba\\nConfidence: c'."""
  name = "reverse_test_task"
  OPTIONS = ("num_train", "num_test", "seed")

  def sources(self, data_dir, splits):
    rng = np.random.default_rng(self.cfg.seed)
    words = ["".join(rng.choice(list("abcdef"), size=int(rng.integers(2, 4))))
             for _ in range(self.cfg.num_train + self.cfg.num_test)]
    recs = [{"id": i, "question": w, "answer": w[::-1]} for i, w in enumerate(words)]
    return {s: {"train": recs[:self.cfg.num_train], "test": recs[self.cfg.num_train:]}[s]
            for s in splits}


def test_a_new_task_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
  monkeypatch.setitem(tasks.TASKS, Reverse.name, Reverse)
  c = smoke.get_config()
  task = common.C(dict(name=Reverse.name, num_train=64, num_test=8, seed=0))
  with c.unlocked():
    c.task = task
    c.eval.update(dict(splits=("test",), group_by="", batch_size=8))
  with pytest.raises(jobs.USER_ERRORS, match="Task.corrupt"):  # the default's noise is arithmetic's
    jobs.validate(c)
  with c.unlocked():
    c.base.update(dict(noise_by="difficulty", answer_noise=(), context_noise=()))
  with pytest.raises(jobs.USER_ERRORS, match="easy_first.by='carries'"):  # so is its curriculum
    jobs.validate(c)
  with c.unlocked():
    c.base.easy_first.by = "difficulty"
  jobs.validate(c)
  jobs.run(c, str(tmp_path))
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert set(results["splits"]["test"]) == {"base", "opd", "caopd"}
  for stage in ("opd", "caopd"):
    with open(tmp_path / stage / "metrics.jsonl") as f:
      logged = [json.loads(line) for line in f]
    assert logged[-1]["step"] == 4 and np.isfinite(logged[-1]["train/loss"])
  with open(tmp_path / "eval" / "caopd_test_responses.jsonl") as f:
    golds = [json.loads(line)["gold"] for line in f]
  assert golds[0] == Reverse(task).target_text(Reverse(task).sources("", ("test",))["test"][0])


# ---- the compile-only planner --------------------------------------------------------------------
def test_planner_reports_the_trainers_compiled_memory(arithmetic_models, tmp_path):
  """caopd_jax.plan lowers the step the train loop runs (from abstract shapes) and reports that
  program's own memory analysis; a too-small HBM is flagged."""
  import jax  # pylint: disable=g-import-not-at-top
  from caopd_jax import plan  # pylint: disable=g-import-not-at-top
  from caopd_jax.jobs import opd  # pylint: disable=g-import-not-at-top
  from caopd_jax.train.loop import compile_step  # pylint: disable=g-import-not-at-top
  c = one_step_config("arithmetic", arithmetic_models, True, "ema")
  run = opd.setup(c, str(tmp_path))
  batch = run.get_batch(0)
  step, _, _ = compile_step(run.iteration, run.mesh, run.state, batch)
  with jax.set_mesh(run.mesh):
    mem = step.lower(run.state, jax.tree.map(jax.numpy.asarray, batch)).compile().memory_analysis()
  p = plan.plan(c, str(tmp_path), hbm_gib=1.0)
  assert (p["argument_bytes"], p["output_bytes"], p["temp_bytes"], p["alias_bytes"]) == (
      mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes,
      mem.alias_size_in_bytes)
  assert p["fits"] and p["peak_bytes"] > 0 and p["model_flops"] > 0
  small = plan.verdict(p, p["peak_bytes"] / plan.GIB / 2)
  assert not small["fits"] and "DOES NOT FIT" in plan.report(small)
