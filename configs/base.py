"""Base student: supervised warm-up from scratch on the embedded task (caopd_jax/jobs/sft.py).

  python run.py --config=configs/base.py --workdir=/tmp/base
"""

from configs import common


def get_config(arg=None):
  del arg
  return common.sft()
