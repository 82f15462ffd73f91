"""The math task: math-verify judgement on hand-written responses, GSM8K / MATH files through the
data layer, one OPD / CaOPD step and the evaluation harness (Pass@k) on a few local rows."""

import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from caopd_jax import data, evaluation, tasks
from caopd_jax.data.math import last_boxed
from caopd_jax.tasks.math import math_correct
from configs.paper import common as paper

CASES = [  # (response, gold, correct)
    ("So x = 3, and the answer is \\boxed{3}.", "3", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),  # fraction vs decimal
    ("The final answer is $\\dfrac{2}{4}$", "\\frac12", True),  # LaTeX vs LaTeX
    ("The answer is 72.", "72", True),  # plain text
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),  # symbolic equivalence
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{3}", "4", False),  # wrong
    ("I am not sure.", "5", False),  # no answer
    ("\\boxed{7}\nConfidence: 0.9", "0.9", False),  # the stated confidence is not the answer
    ("\\boxed{0.9}\nConfidence: 0.2", "0.9", True),
]


@pytest.mark.parametrize("text,gold,want", CASES)
def test_math_verifier(text, gold, want):
  task = tasks.get(paper.task("math"))
  assert task.is_correct(text, gold) is want
  assert task.eval_correct(text, gold) is want


def test_last_boxed_and_plain_math_correct():
  assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
  assert last_boxed("none") == "" and last_boxed("\\boxed{unclosed") == ""
  assert math_correct("x", "y") is False


def write_math(root):
  """GSM8K-style jsonl (train), MATH-style parquet (test)."""
  os.makedirs(root, exist_ok=True)
  gsm = [{"question": f"Tom has {a} apples and gets {b} more. How many?",
          "answer": f"He has {a} + {b} = {a + b}.\n#### {a + b}"} for a, b in
         ((2, 3), (5, 7), (11, 4), (6, 6), (9, 1), (3, 8))]
  with open(os.path.join(root, "train.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in gsm)
  rows = [{"problem": f"What is {a}/{b}?", "solution": f"Divide: \\boxed{{\\frac{{{a}}}{{{b}}}}}"}
          for a, b in ((1, 2), (3, 4), (2, 5))]
  pq.write_table(pa.Table.from_pylist(rows), os.path.join(root, "test.parquet"))
  return root


def test_math_files_through_the_data_layer(tmp_path):
  root = write_math(str(tmp_path / "math_data"))
  train = list(data.get_source("math", "train", str(tmp_path / "tfds"), manual_dir=root))
  test = list(data.get_source("math", "test", str(tmp_path / "tfds"), manual_dir=str(tmp_path)))
  assert train[0]["answer"] == "5" and "\\boxed{5}" in train[0]["demo"]
  assert train[0]["messages"] == [{"role": "user", "content": train[0]["question"]}]
  assert test[1]["answer"] == "\\frac{3}{4}" and test[1]["demo"].startswith("Divide")
  with open(os.path.join(root, "test.parquet"), "wb") as f:
    f.write(b"not parquet")
  with pytest.raises(data.DataFormatError, match="not a parquet file"):
    data.get_source("math", "test", str(tmp_path / "tfds2"), manual_dir=root)


def math_config(env, root, tfds, **overrides):
  c = paper.real_opd("math", "size=0.6b")
  with c.unlocked():
    c.task.update(dict(manual_dir=root))
    c.update(dict(train_split="train", data_dir=tfds, init_from=env["student"], dtype="float32",
                  num_samples=2, prompts_per_step=2, steps=1, max_prompt_len=128,
                  max_demo_len=48, chunk_size=32, export_dtype="float32"))
    c.sampling.update(dict(max_new_tokens=8, decode_segments=1))
    c.eval.update(dict(splits=("test",), num_samples=4, k=(1, 2, 4), batch_size=12,
                       max_prompt_len=128))
    c.eval.sampling.update(dict(max_new_tokens=8, decode_segments=1))
    c.update(overrides)
  return c


def test_math_pass_at_k(real_env, tmp_path):
  """Pass@k / Avg@n of sampled responses against the brute-force formula (the OPD job on math
  runs in tests/test_opd_job.py's task matrix)."""
  root = write_math(str(tmp_path / "math_data"))
  c = math_config(real_env, root, str(tmp_path / "tfds"), caopd=True)
  out = evaluation.evaluate_model(real_env["student"], c, str(tmp_path / "e"), name="m")
  result, scored = out["test"]
  assert result["n"] == 3 * 4 and {"pass@1", "pass@2", "pass@4", "avg@4"} <= set(result)
  per_q = np.asarray(scored["correct"]).reshape(3, 4).sum(1)  # 4 samples per question, in a row
  want = np.mean([1 - math.comb(4 - int(c_), 2) / math.comb(4, 2) for c_ in per_q])
  np.testing.assert_allclose(result["pass@2"], want)
  np.testing.assert_allclose(result["avg@4"], np.mean(scored["correct"]))
  with open(tmp_path / "e" / "eval" / "m_test.json") as f:
    saved = json.load(f)
  assert saved["pass@4"] == result["pass@4"] and saved["task"] == "math"
