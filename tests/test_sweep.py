"""Config arguments, the sweep launcher and the results table.

The end-to-end tests run the smoke pipeline (base -> OPD -> CaOPD -> evaluation) once, then two
of the smoke config's sweep jobs (2 objectives x 2 learning rates; `--only` picks one of each
objective and learning rate) on the OPD stage, from that pipeline's base, side by side, and
gather one table. All four jobs are only printed here (docs/scaling.md shows the sweep run).
"""

import csv
import io
import json
import os
import pathlib
import subprocess
import sys

import pytest

from caopd_jax import config_utils

import background  # pylint: disable=g-bad-import-order
import fast_xla  # pylint: disable=g-bad-import-order

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
from experiments import gather, sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

# The two sweep jobs run (of the smoke config's four): both objectives and both learning rates.
JOBS = ("objective-full_forward.lr-0.0003", "objective-full_reverse.lr-0.001")

def test_parse_arg_types_defaults_and_errors():
  a = config_utils.parse_arg("lr=1e-3,steps=10,name=x,fast", lr=0.1, steps=1, name="a",
                             fast=False, other=None)
  assert (a.lr, a.steps, a.name, a.fast, a.other) == (1e-3, 10, "x", True, None)
  assert isinstance(a.lr, float) and isinstance(a.steps, int)
  assert config_utils.parse_arg("fast=no", fast=True).fast is False
  assert config_utils.parse_arg("other=3", other=None).other == 3  # None default: auto-typed
  assert config_utils.parse_arg("a=1,a=2", a=0).a == 2  # later wins
  assert config_utils.parse_arg(None, a=5).a == 5
  with pytest.raises(ValueError, match="valid"):
    config_utils.parse_arg("lr=1", steps=1)
  with pytest.raises(ValueError, match="integer"):
    config_utils.parse_arg("steps=1.5", steps=1)
  with pytest.raises(ValueError, match="boolean"):
    config_utils.parse_arg("fast=maybe", fast=False)
  assert config_utils.parse_arg("x=1,y=b", lazy=True).to_dict() == {"x": 1, "y": "b"}
  assert config_utils.merge_args("a=1,b=2", "b=3,c=4") == "a=1,b=3,c=4"


def test_smoke_config_args_and_sweep_definition():
  from configs import smoke  # pylint: disable=g-import-not-at-top
  default = smoke.get_config()
  assert default.job == "caopd_pipeline" and default.opd.objective.name == "full_forward"
  c = smoke.get_config("objective=full_reverse,lr=1e-3")
  assert c.opd.objective.name == c.caopd.objective.name == "full_reverse"
  assert c.opd.optim.lr == c.caopd.optim.lr == 1e-3
  s = smoke.get_config("stage=opd,init_from=/m")
  assert s.job == "opd" and s.init_from == "/m" and s.task.num_train == 400 and not s.caopd
  with pytest.raises(ValueError, match="stage"):
    smoke.get_config("stage=nope")
  jobs = config_utils.sweep_jobs(smoke)
  assert [j["values"] for j in jobs] == [
      {"objective": o, "lr": lr} for o in ("full_forward", "full_reverse") for lr in (3e-4, 1e-3)]
  assert len({j["name"] for j in jobs}) == 4


def test_print_gives_one_command_per_job(capsys, tmp_path):
  assert sweep.main(["--config=configs/smoke.py", f"--workdir={tmp_path}", "--print"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 4
  assert all(l.startswith("python ") and " --workdir=" in l for l in lines)
  assert "--config=configs/smoke.py:objective=full_reverse,lr=0.001" in lines[3]
  assert not list(tmp_path.iterdir())  # nothing ran


def _env(cache=None):
  """Subprocess environment; `cache`: a JAX compilation cache shared by the pipeline and the
  sweep's jobs (they compile many identical programs)."""
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=fast_xla.added_to(env.get("XLA_FLAGS", "")))
  if cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def start_background():
  background.start("sweep", _swept)


@pytest.fixture(scope="module")
def swept():
  return background.result("sweep", _swept)


def _swept(tmp):
  tmp = pathlib.Path(tmp)
  data = tmp / "tfds"
  # The whole smoke pipeline, end to end (base -> OPD -> CaOPD -> evaluation); its base then
  # starts every job of the sweep.
  pipe = subprocess.run(
      [sys.executable, "run.py", f"--config=configs/smoke.py:data_dir={data}",
       f"--workdir={tmp / 'pipeline'}"],
      cwd=_ROOT, env=_env(tmp / "jax_cache"), capture_output=True, text=True, timeout=600)
  assert pipe.returncode == 0, pipe.stdout[-3000:] + pipe.stderr[-3000:]
  out = tmp / "sweep"
  proc = subprocess.run(
      [sys.executable, "experiments/sweep.py",
       f"--config=configs/smoke.py:stage=opd,init_from={tmp / 'pipeline' / 'base' / 'model'},"
       f"data_dir={data}",
       f"--workdir={out}", "--parallel=2", f"--only={','.join(JOBS)}", "--",
       "--config.steps=2", "--config.log_every=1", "--config.report_objectives=()",
       "--config.eval.enabled=false"],
      cwd=_ROOT, env=_env(tmp / "jax_cache"), capture_output=True, text=True, timeout=900)
  return out, proc, tmp / "pipeline", pipe.stdout


def test_smoke_pipeline_runs_end_to_end(swept):
  _, _, work, stdout = swept
  results = json.loads((work / "results.json").read_text())
  keys = {"accuracy", "ece", "brier", "spr", "ocg", "auroc", "mean_confidence", "adherence"}
  for stage in ("base", "opd", "caopd"):
    assert keys <= set(results[stage]), results[stage]
    assert all(0.0 <= results[stage][k] <= 1.0 for k in keys - {"ocg"})
  assert set(results["splits"]) == {"test", "ood"}
  for name in ("results.md", "reliability.png", "run_complete.json", "base/model/config.json",
               "opd/metrics.jsonl", "caopd/metrics.jsonl"):
    assert (work / name).exists(), name
  assert "| caopd |" in stdout  # the table was printed


def test_sweep_runs_the_selected_jobs_and_gathers_one_table(swept):
  out, proc = swept[:2]
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  jobs = json.loads((out / "sweep.json").read_text())["jobs"]
  assert sorted(j["name"] for j in jobs) == sorted(JOBS)  # --only: 2 of the 4 jobs
  for j in jobs:
    assert (out / j["name"] / "run_complete.json").exists()
    assert (out / j["name"] / "model" / "config.json").exists()
  rows = gather.collect(str(out))
  assert len(rows) == 2 and all(r["status"] == "done" and r["step"] == 2 for r in rows)
  by = {(r["objective"], r["lr"]): r for r in rows}
  assert set(by) == {("full_forward", 3e-4), ("full_reverse", 1e-3)}
  # the learning rate reached the optimizer, and the objective the loss
  ratio = by[("full_reverse", 1e-3)]["train/lr"] / by[("full_forward", 3e-4)]["train/lr"]
  assert abs(ratio - 1e-3 / 3e-4) < 1e-3
  assert by[("full_forward", 3e-4)]["train/loss"] != by[("full_reverse", 1e-3)]["train/loss"]
  md = gather.table(rows)
  assert md == proc.stdout.strip().split("\n\n")[-1].strip()  # the launcher printed it
  header = md.splitlines()[0]
  assert header.startswith("| job | objective | lr | stage | status |") and "train/loss" in header
  assert len(md.splitlines()) == 2 + 2
  table = list(csv.DictReader(io.StringIO(gather.table(rows, fmt="csv"))))
  assert len(table) == 2 and {t["objective"] for t in table} == {"full_forward", "full_reverse"}


def test_gather_cli_writes_csv(swept):
  out = swept[0]
  res = subprocess.run([sys.executable, "experiments/gather.py", str(out), "--csv",
                        f"--out={out / 'table.csv'}"], cwd=_ROOT, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr
  lines = (out / "table.csv").read_text().strip().splitlines()
  assert len(lines) == 3 and lines[0].startswith("job,objective,lr,stage,status,step,")
