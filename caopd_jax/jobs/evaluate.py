"""Job `evaluate`: a HF model on a task's eval splits (configs/paper/evaluate.py).

  python run.py --config=configs/paper/evaluate.py:task=science --config.model=/models/Qwen3-0.6B \\
      --workdir=/tmp/eval_qwen3_0.6b
Writes WORKDIR/eval/{name}_{split}.json, _responses.jsonl, _reliability.png (caopd_jax.evaluation).
"""

from caopd_jax import evaluation


def main(config, workdir):
  if not config.model:
    raise ValueError("Set --config.model to a local HF model directory.")
  return evaluation.evaluate_model(config.model, config, workdir, name=config.name,
                                   tokenizer_dir=config.tokenizer)
