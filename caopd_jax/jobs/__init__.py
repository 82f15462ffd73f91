"""Jobs that `run.py` can run, looked up by the config's `job` name."""

import importlib

from caopd_jax.data.hf_arrow import DataFormatError
from caopd_jax.jobs.validate import ConfigError, validate
from caopd_jax.opd.teachers import VocabularyMismatch
from caopd_jax.train.checkpoint import NoValidCheckpointError
from caopd_jax.train.loop import Diverged
from caopd_jax.workdir import ConfigChanged, WorkdirLocked

# name -> module in caopd_jax.jobs defining `main(config, workdir)`.
JOBS = {"caopd_pipeline": "pipeline", "sft": "sft", "opd": "opd", "evaluate": "evaluate"}
# Errors with a message that says what is wrong and what to do: run.py prints it, exits 2.
USER_ERRORS = (ConfigError, ConfigChanged, WorkdirLocked, NoValidCheckpointError, Diverged,
               VocabularyMismatch, DataFormatError, FileNotFoundError)


def run(config, workdir: str):
  name = config.job
  if name not in JOBS:
    raise ValueError(f"Unknown job {name!r}; valid jobs: {sorted(JOBS)}.")
  module = importlib.import_module(f"caopd_jax.jobs.{JOBS[name]}")
  return module.main(config, workdir)


__all__ = ["JOBS", "USER_ERRORS", "run", "validate"]
