"""Jobs that `run.py` can run, looked up by the config's `job` name."""

import importlib

# name -> module in caopd_jax.jobs defining `main(config, workdir)`.
JOBS = {
    "caopd_pipeline": "pipeline",
    "sft": "sft",
    "opd": "opd",
    "evaluate": "evaluate",
    "real_opd": "real_opd",
}


def run(config, workdir: str):
  name = config.job
  if name not in JOBS:
    raise ValueError(f"Unknown job {name!r}; valid jobs: {sorted(JOBS)}.")
  module = importlib.import_module(f"caopd_jax.jobs.{JOBS[name]}")
  return module.main(config, workdir)
