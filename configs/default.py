"""The embedded default job (`python run.py`): base -> OPD -> CaOPD on the arithmetic task and
the calibration table (accuracy, ECE, Brier, SPR, OCG, AUROC, mean confidence) on held-out data.

Every stage is its own config (configs/base.py, opd.py, caopd.py); this one composes them and
shares the task, seed, data and evaluation settings.
"""

import ml_collections

from configs import base, caopd, common, opd


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = "caopd_pipeline"
  c.seed = 0
  c.data_dir = ""  # '' -> WORKDIR/tfds
  c.task = common.arithmetic_task()
  c.dtype = "float32"  # evaluation compute dtype
  c.mesh = (1, -1, 1)
  c.eval = common.evaluation(splits=("test", "ood"))
  c.base = base.get_config()
  c.opd = opd.get_config()
  c.caopd = caopd.get_config()
  return c
