"""Runs (or prints) every job of a config file's sweep, one `python run.py` each.

  python experiments/sweep.py --config=configs/smoke.py --workdir=/tmp/sweep
  python experiments/sweep.py --config=configs/smoke.py --workdir=/tmp/sweep --print
  python experiments/sweep.py --config=configs/smoke.py:stage=opd,init_from=/tmp/base/model \
      --workdir=/tmp/sweep --parallel=2 -- --config.opd.steps=8

The config file defines `get_sweep(add[, arg])` (caopd_jax.config_utils); the argument after
the colon is passed to it and merged into every job's config argument. Job j runs
`python run.py --config=FILE:<arg_j> --workdir=WORKDIR/<name_j> [--config.x=y ...] [extra]`,
its output going to WORKDIR/<name_j>/run.log. Jobs run locally one after another (or
`--parallel` at a time); a finished job is skipped by run.py itself (WORKDIR/<name>/
run_complete.json), an interrupted one resumes. With --print nothing runs: one shell command
per job is printed, e.g. to submit with `sbatch --wrap` or a cluster launcher.
WORKDIR/sweep.json records the jobs (experiments/gather.py uses it for the table's columns).
At the end the gathered table is printed; the exit status is 1 if any job failed.
"""

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from caopd_jax import config_utils  # pylint: disable=g-import-not-at-top,wrong-import-position


def load_module(path: str):
  spec = importlib.util.spec_from_file_location(
      "sweep_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def commands(config: str, workdir: str, extra=(), python=sys.executable):
  """[(job, argv)] for every job of the sweep in `config` ('path[:arg]')."""
  path, _, arg = config.partition(":")
  jobs = config_utils.sweep_jobs(load_module(path), arg or None)
  rel = os.path.relpath(os.path.abspath(path), _ROOT)  # jobs run in the repository root
  path = os.path.abspath(path) if rel.startswith("..") else rel
  out = []
  for job in jobs:
    argv = [python, "run.py", f"--config={path}:{job['arg']}",
            f"--workdir={os.path.join(workdir, job['name'])}"]
    argv += [f"--{k}={v}" for k, v in job["overrides"].items()]
    argv += list(extra)
    out.append((job, argv))
  return out


def _tail(path, n=30):
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return ""


def run_local(cmds, workdir, parallel=1):
  """Runs the jobs, `parallel` at a time; returns {name: exit status}."""
  pending, running, status = list(cmds), {}, {}
  n = len(cmds)
  while pending or running:
    while pending and len(running) < max(parallel, 1):
      job, argv = pending.pop(0)
      jobdir = os.path.join(workdir, job["name"])
      os.makedirs(jobdir, exist_ok=True)
      log = open(os.path.join(jobdir, "run.log"), "a")
      print(f"[{n - len(pending)}/{n}] {job['name']}: {shlex.join(argv[1:])}", flush=True)
      running[job["name"]] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                               cwd=_ROOT), log, time.time())
    time.sleep(0.2)
    for name, (proc, log, t0) in list(running.items()):
      if proc.poll() is None:
        continue
      log.close()
      del running[name]
      status[name] = proc.returncode
      msg = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
      print(f"  {name}: {msg} in {time.time() - t0:.0f}s", flush=True)
      if proc.returncode:
        print(_tail(os.path.join(workdir, name, "run.log")), flush=True)
  return status


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="configs/NAME.py[:arg] defining get_sweep")
  parser.add_argument("--workdir", required=True, help="one sub-directory per job")
  parser.add_argument("--print", action="store_true", dest="print_only",
                      help="print one command per job instead of running them")
  parser.add_argument("--parallel", type=int, default=1, help="jobs at a time (local runs)")
  parser.add_argument("--only", default="",
                      help="run only the jobs whose name contains one of these (comma-separated)")
  parser.add_argument("extra", nargs="*", help="extra run.py flags (after --)")
  args = parser.parse_args(argv)
  workdir = os.path.abspath(args.workdir)
  cmds = commands(args.config, workdir, args.extra)
  if args.only:
    cmds = [(j, a) for j, a in cmds if any(o in j["name"] for o in args.only.split(","))]
  if args.print_only:
    for _, argv_ in cmds:
      print(shlex.join(["python"] + argv_[1:]))  # run from the repository root
    return 0
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump({"config": args.config, "jobs": [dict(j, command=shlex.join(a)) for j, a in cmds]},
              f, indent=1)
  status = run_local(cmds, workdir, args.parallel)
  from experiments import gather  # pylint: disable=g-import-not-at-top
  print("\n" + gather.table(gather.collect(workdir)))
  failed = sorted(k for k, v in status.items() if v)
  if failed:
    print(f"{len(failed)} job(s) failed: {failed}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
