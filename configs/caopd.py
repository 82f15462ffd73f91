"""CaOPD: OPD with the student's empirical success rate P_acc written into the student
completion, the teacher's stated confidence and a teacher note (caopd_jax.opd.caopd).

  python run.py --config=configs/caopd.py --workdir=/tmp/caopd --config.init_from=/tmp/base/model
"""

from configs import common


def get_config(arg=None):
  del arg
  return common.opd(caopd=True)
