"""Entry point: `python run.py --config=configs/NAME.py[:arg] --workdir=DIR`.

With no flags it runs the embedded default job (configs/default.py). The config's `job` field
names what runs (see `caopd_jax.jobs.JOBS`); every hyperparameter lives in the config, and any
field can be overridden from the command line, e.g. `--config.seed=3`.
"""

import os

from absl import app, flags
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_HERE, "configs", "default.py"), "Config file (path[:arg]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", os.path.join(_HERE, "workdir"),
                               "Directory for checkpoints, logs, plots and results.")


def main(argv):
  del argv
  from caopd_jax import jobs  # pylint: disable=g-import-not-at-top
  jobs.run(_CONFIG.value, os.path.abspath(_WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
