"""Entry point: `python run.py --config=configs/NAME.py[:arg] --workdir=DIR`.

With no flags it runs the embedded default job (configs/default.py). The config's `job` field
names what runs (see `caopd_jax.jobs.JOBS`); every hyperparameter lives in the config, and any
field can be overridden from the command line, e.g. `--config.seed=3`. The whole config (every
stage of a pipeline) is validated before anything is read or trained; the workdir is locked for
the run and remembers the config that made it (caopd_jax.workdir): a rerun with a different
config stops at once unless --allow_config_change; a finished run exits 0 at once.
"""

import logging
import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_HERE, "configs", "default.py"), "Config file (path[:arg]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", os.path.join(_HERE, "workdir"),
                               "Directory for checkpoints, logs, plots and results.")
flags.DEFINE_bool("allow_config_change", False,
                  "Continue a workdir made by a different config (the old record is kept).")


class _QuietLibraries(logging.Filter):
  """Drops tensorflow_datasets' per-call INFO/WARNING chatter (dataset configs, info loading)."""

  def filter(self, record):
    return "tensorflow_datasets" not in record.pathname or record.levelno >= logging.ERROR


def _fail(message: str):
  print(f"\nError: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """absl flag parsing, with one clear line for a bad --config override or config argument."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    msg = e
    while isinstance(msg, BaseException) and msg.args:  # ml_collections nests its KeyError
      msg = msg.args[0]
    text = str(msg)
    bad = text.splitlines()[0].strip("'\" ") if text else ""
    hint = re.search(r'Did you mean "(\w+)"', text)
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    culprit = next((o for o in overrides if o.split(".")[-1] == bad), "")
    if culprit:
      near = f"; did you mean {culprit.rsplit('.', 1)[0]}.{hint.group(1)}?" if hint else ""
      _fail(f"{culprit} is not a key of the config{near} (run with --helpfull or read the "
            f"config file for its keys).")
    errors = re.findall(r"^\w*(?:Error|Exception): (.+)$", text, re.M)  # the config file's own
    _fail(f"{errors[-1]} (in {argv[1:] and ' '.join(argv[1:])})" if errors else
          f"the command-line flags could not be parsed: {' '.join(text.split())}")


def main(argv):
  del argv
  for handler in logging.getLogger().handlers + [absl_logging.get_absl_handler()]:
    handler.addFilter(_QuietLibraries())
  # pylint: disable=g-import-not-at-top
  from caopd_jax import distributed, jobs, workdir as workdir_lib
  from caopd_jax.train import checkpoint
  distributed.initialize()  # multi-process runs (TPU pod, SLURM, explicit); before any JAX use
  checkpoint.quiet_orbax_logging()
  if flags.FLAGS.allow_config_change:
    os.environ[workdir_lib.ALLOW_ENV] = "1"
  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  try:
    jobs.validate(config)  # every stage, before anything is read or trained
    with workdir_lib.lock(workdir):
      if workdir_lib.is_complete(workdir, config):
        logging.info("The run in %s is already complete; nothing to do.", workdir)
        return
      workdir_lib.check_config(workdir, config)
      jobs.run(config, workdir)
      workdir_lib.mark_complete(workdir, config)
  except jobs.USER_ERRORS as e:
    _fail(f"{e}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
