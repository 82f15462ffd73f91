"""Math word problems (GSM8K- or MATH-style) from local files, as a tfds builder over manual_dir.

manual_dir holds one source per split, named by the split: `{split}.jsonl`, `{split}.parquet`,
or a HF save_to_disk folder `{split}/` or `{split}_data/` (splits train, test, eval; whichever
exist), or its parent holding `math_data/`. Columns:
  question  `question` | `problem` | `prompt`
  answer    `answer`: GSM8K's "reasoning ... #### 72" (the part after ####), or a bare final answer;
            else `final_answer`; else the last \\boxed{...} of `solution`
  demo      `solution` (MATH), else GSM8K's reasoning with "The final answer is \\boxed{72}."
Features (tfds name `caopd_math`): id, messages (JSON [user: question]), question, answer, demo.
"""

from __future__ import annotations

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq

from caopd_jax.data import hf_arrow, manual_hf
from caopd_jax.data.hf_arrow import DataFormatError, require_columns

SPLITS = ("train", "test", "eval")
_GSM8K = re.compile(r"####\s*(.+?)\s*$", re.S)


def last_boxed(text: str) -> str:
  """The content of the last \\boxed{...} (nested braces balanced), or ''."""
  start = text.rfind("\\boxed{")
  if start < 0:
    return ""
  i, depth = start + len("\\boxed{"), 1
  for j in range(i, len(text)):
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    if depth == 0:
      return text[i:j].strip()
  return ""


class CaopdMath(manual_hf.ManualHFBuilder):
  TASK_DIR = "math_data"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Pass manual_dir=<folder> holding {train,test,eval}.jsonl / .parquet or HF save_to_disk "
      "folders {split}/ or {split}_data/ (e.g. GSM8K or MATH exported locally), or its parent "
      "holding math_data/. Nothing is downloaded.")
  TEXT_FEATURES = ("messages", "question", "answer", "demo")
  JSON_FEATURES = ("messages",)
  DESCRIPTION = "Math word problems (GSM8K / MATH style) from local files."

  @classmethod
  def manual_instructions(cls) -> str:
    return cls.MANUAL_DOWNLOAD_INSTRUCTIONS

  @classmethod
  def _sources(cls, root):
    out = {}
    for split in SPLITS:
      for name in (f"{split}.jsonl", f"{split}.parquet", split, f"{split}_data"):
        if os.path.exists(os.path.join(root, name)):
          out[split] = os.path.join(root, name)
          break
    return out

  @classmethod
  def resolve_manual_dir(cls, manual_dir):
    root = os.fspath(manual_dir)
    if not os.path.isdir(root):
      raise FileNotFoundError(f"{root}: manual_dir does not exist. {cls.manual_instructions()}")
    for candidate in (root, os.path.join(root, cls.TASK_DIR)):
      if os.path.isdir(candidate) and cls._sources(candidate):
        return candidate
    raise FileNotFoundError(f"{root}: no math split files here (found: {sorted(os.listdir(root))}). "
                            f"{cls.manual_instructions()}")

  @classmethod
  def split_dirs(cls, manual_dir):
    return cls._sources(cls.resolve_manual_dir(manual_dir))

  @classmethod
  def source_fingerprint(cls, manual_dir):
    paths = []
    for _, path in sorted(cls.split_dirs(manual_dir).items()):
      paths += hf_arrow.data_files(path) if os.path.isdir(path) else [path]
    return hf_arrow.fingerprint(paths, {"builder": cls.name, "version": str(cls.VERSION)})

  @classmethod
  def read_split(cls, path, split):
    if path.endswith(".jsonl"):
      with open(path, encoding="utf-8") as f:
        try:
          rows = [json.loads(line) for line in f if line.strip()]
        except json.JSONDecodeError as e:
          raise DataFormatError(f"{path}: not JSON lines ({e}).") from e
      if not rows:
        raise DataFormatError(f"{path}: the split has no rows.")
      table = pa.Table.from_pylist(rows)
    elif path.endswith(".parquet"):
      try:
        table = pq.read_table(path)
      except Exception as e:  # pylint: disable=broad-except
        raise DataFormatError(f"{path}: not a parquet file ({e}).") from e
    else:
      table, _ = hf_arrow.read_save_to_disk(path)
    return cls.normalize(table, split, path)

  @classmethod
  def normalize(cls, table, split, where):
    require_columns(table, [("question", "problem", "prompt")], where,
                    "Math data needs a question (`question`, `problem` or `prompt`) and an answer "
                    "(`answer`, `final_answer`, or a `solution` with \\boxed{...}).")
    cols = set(table.column_names)
    qcol = next(c for c in ("question", "problem", "prompt") if c in cols)
    out = []
    for i, row in enumerate(table.to_pylist()):
      question = manual_hf.as_text(row[qcol], where, i, qcol).strip()
      raw = str(row.get("answer") or "") if "answer" in cols else ""
      solution = str(row.get("solution") or "") if "solution" in cols else ""
      gsm = _GSM8K.search(raw)
      if gsm:
        answer = gsm.group(1).replace(",", "").strip()
        demo = raw[:gsm.start()].strip() + f"\nThe final answer is \\boxed{{{answer}}}."
      else:
        answer = raw.strip() or str(row.get("final_answer") or "").strip() or last_boxed(solution)
        demo = solution
      if not question or not answer:
        raise DataFormatError(f"{where} row {i}: empty question or no answer (answer / "
                              "final_answer / \\boxed{} in solution).")
      out.append({"id": i, "messages": json.dumps([{"role": "user", "content": question}],
                                                  ensure_ascii=False),
                  "question": question, "answer": answer, "demo": demo})
    return out
