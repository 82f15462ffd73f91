"""Science MCQ (SciKnowEval Chemistry, CaOPD/SDFT format) as a tfds builder over manual_dir.

Source columns (HF save_to_disk folders `eval_data/`, `train_data/`):
  eval : `prompt` = [system, user] messages, `answer` = gold letter ("A".."D").
  train (SDFT format): `messages` (or `prompt`) + demonstration `output_text`; `answer` is
         optional there (the released SDFT train data has none) and is then taken from the
         demo's last <answer>X</answer>, else left ''.
Features (tfds name `caopd_science`):
  id       int64  row index in the source split
  messages str    JSON list of {role, content} (decoded to a list by `loader.Source`)
  answer   str    gold letter, stripped and upper-cased ('' only in train without any answer)
  demo     str    demonstration (`output_text`, or `golden_response` joined by newlines); '' if none
Splits: `eval` and/or `train`, whichever folders exist.
"""

from __future__ import annotations

import json

from caopd_jax.data import manual_hf
from caopd_jax.data.hf_arrow import DataFormatError, require_columns

DEMO_COLUMNS = ("output_text", "golden_response", "demo")


class CaopdScience(manual_hf.ManualHFBuilder):
  TASK_DIR = "science_data"
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_hf.manual_instructions(TASK_DIR)
  TEXT_FEATURES = ("messages", "answer", "demo")
  JSON_FEATURES = ("messages",)
  DESCRIPTION = "Science MCQ (SciKnowEval Chemistry) in the CaOPD/SDFT format."

  @classmethod
  def normalize(cls, table, split, where):
    hint = ("Science data needs `prompt` or `messages` (chat messages) and, for eval, `answer` "
            "(the gold letter); train may add the demonstration `output_text`.")
    require_columns(table, [("messages", "prompt")] + (["answer"] if split == "eval" else []),
                    where, hint)
    cols = set(table.column_names)
    msg_col = "messages" if "messages" in cols else "prompt"
    demo_col = next((c for c in DEMO_COLUMNS if c in cols), None)
    out = []
    for i, row in enumerate(table.to_pylist()):
      messages = manual_hf.as_messages(row[msg_col], where, i, msg_col)
      demo = manual_hf.as_text(row[demo_col], where, i, demo_col) if demo_col else ""
      if "answer" in cols:
        answer = row["answer"]
        if not isinstance(answer, str) or not answer.strip():
          raise DataFormatError(f"{where} row {i}: column 'answer' must be a non-empty string "
                                f"(the gold option letter), got {answer!r}.")
        answer = answer.strip().upper()
      else:
        answer = manual_hf.answer_from_demo(demo)
      out.append({"id": i, "messages": json.dumps(messages, ensure_ascii=False),
                  "answer": answer, "demo": demo})
    return out
