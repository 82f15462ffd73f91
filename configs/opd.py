"""OPD (SDFT-style self-distillation) from the base student on the embedded task.

The teacher is the student's EMA conditioned on a demonstration whose confidence reads 1.00;
objective by name from caopd_jax.objectives (default, as in the CaOPD code: full-vocabulary
KL(teacher || student) = `full_forward`, per-sequence token mean). Every key: configs/common.py.

  python run.py --config=configs/opd.py --workdir=/tmp/opd --config.init_from=/tmp/base/model
"""

from configs import common


def get_config(arg=None):
  del arg
  return common.opd()
