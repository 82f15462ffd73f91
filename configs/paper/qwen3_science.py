"""CaOPD / OPD of a Qwen3 student on science MCQ (SciKnowEval Chemistry), as in the paper.

  python run.py --config=configs/paper/qwen3_science.py:size=0.6b --workdir=/ckpt/caopd_sci_0.6b \\
      --config.init_from=/models/Qwen3-0.6B --config.data.manual_dir=/data/caopd
Arguments and defaults: configs/paper/common.py; deviations: docs/paper_configs.md.
"""

from configs.paper import common


def get_config(arg=None):
  return common.real_opd("science", arg)
