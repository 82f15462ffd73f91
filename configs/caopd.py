"""CaOPD: OPD with the student's empirical success rate P_acc written into the student
completion, the teacher's demonstration confidence and a teacher note (caopd_jax.iteration).

  python run.py --config=configs/caopd.py --workdir=/tmp/caopd --config.init_from=/tmp/base/model
"""

from configs import opd


def get_config(arg=None):
  c = opd.get_config(arg)
  c.caopd = True
  return c
