"""Entry point: `python run.py --config=configs/NAME.py[:arg] --workdir=DIR`.

With no flags it runs the embedded default job (configs/default.py). The config's `job` field
names what runs (see `caopd_jax.jobs.JOBS`); every hyperparameter lives in the config, and any
field can be overridden from the command line, e.g. `--config.seed=3`.
"""

import logging
import os

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_HERE, "configs", "default.py"), "Config file (path[:arg]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", os.path.join(_HERE, "workdir"),
                               "Directory for checkpoints, logs, plots and results.")


class _QuietLibraries(logging.Filter):
  """Drops tensorflow_datasets' per-call INFO/WARNING chatter (dataset configs, info loading)."""

  def filter(self, record):
    return "tensorflow_datasets" not in record.pathname or record.levelno >= logging.ERROR


def main(argv):
  del argv
  for handler in logging.getLogger().handlers + [absl_logging.get_absl_handler()]:
    handler.addFilter(_QuietLibraries())
  # pylint: disable=g-import-not-at-top
  from caopd_jax import checkpoint, distributed
  distributed.initialize()  # multi-process runs (TPU pod, SLURM, explicit); before any JAX use
  checkpoint.quiet_orbax_logging()
  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  fingerprint = checkpoint.config_fingerprint(config)  # before jobs fill in defaults
  if checkpoint.is_complete(workdir, fingerprint):
    logging.info("The run in %s is already complete; nothing to do.", workdir)
    return
  from caopd_jax import jobs
  jobs.run(config, workdir)
  checkpoint.mark_complete(workdir, fingerprint)


if __name__ == "__main__":
  app.run(main)
