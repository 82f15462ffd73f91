"""Evaluation of a local HF model on a real eval split (job `evaluate`, caopd_jax/jobs/evaluate.py).

  python run.py --config=configs/paper/evaluate.py:task=science --workdir=/tmp/eval_sci \\
      --config.model=/models/Qwen3-0.6B --config.task.manual_dir=../shared/data/caopd_eval
Arguments: task=science|tooluse, thinking=true|false (Qwen3 enable_thinking), limit=N.
"""

import ml_collections

from caopd_jax import config_utils
from configs.paper import common


def get_config(arg=None):
  a = config_utils.parse_arg(arg, task="science", thinking=None, limit=0)
  config_utils.check_choice("task", a.task, ("science", "tooluse"))
  thinking = None if a.thinking is None else config_utils.as_bool("thinking", a.thinking)
  c = ml_collections.ConfigDict()
  c.job = "evaluate"
  c.task = common.task(a.task, thinking)
  c.data_dir = ""  # tfds output; '' -> WORKDIR/tfds
  c.model = ""  # local HF directory (required)
  c.tokenizer = ""  # '' -> model
  c.name = ""  # label in plots/logs; '' -> the model directory's name
  c.dtype = "bfloat16"
  c.mesh = (1, -1, 1)
  c.eval = common.evaluation(limit=a.limit)
  return c
