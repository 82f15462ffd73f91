"""Evaluation of a local HF model on a real eval split (job `evaluate`, caopd_jax/jobs/evaluate.py).

  python run.py --config=configs/paper/evaluate.py:task=science --workdir=/tmp/eval_sci \\
      --config.model=/models/Qwen3-0.6B --config.data.manual_dir=/work/shared/data/caopd_eval
Arguments: task=science|tooluse, thinking=1|0 (Qwen3 enable_thinking), limit=N.
"""

from configs.paper import common


def get_config(arg=None):
  a = common.parse_arg(arg, task="science", thinking="", limit="0")
  c = common.evaluation(a["task"], a["thinking"], limit=int(a["limit"]))
  del c["enabled"]
  c.job = "evaluate"
  c.model = ""  # local HF directory (required)
  c.tokenizer = ""  # '' -> model
  c.name = ""  # label in plots/logs; '' -> the model directory's name
  return c
