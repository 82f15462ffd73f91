"""Tool use (ToolAlpaca, CaOPD/SDFT format) as a tfds builder over manual_dir.

Source columns (HF save_to_disk folders `eval_data/`, `train_data/`):
  required: `prompt` (str, the full task prompt incl. tool documentation and the question),
            `golden_answer` (list of {Action, Action_Input}, or a JSON string of it).
  optional: `instruction`, `name`, `description`, `nl_documentation` (str, '' when absent),
            `golden_response` (SDFT demonstration, list of str).
Features (tfds name `caopd_tooluse`):
  id               int64  row index in the source split
  messages         str    JSON [{"role": "user", "content": prompt}] (decoded by `loader.Source`)
  prompt, instruction, name, description, nl_documentation   str
  golden_answer    str    JSON list of {"Action": str, "Action_Input": str} (decoded by Source;
                          Action_Input is kept as the raw JSON text of the call arguments)
  golden_response  str    JSON list of str ([] when absent; decoded by Source)
  demo             str    golden_response joined by newlines ('' when absent)
Splits: `eval` and/or `train`, whichever folders exist.
"""

from __future__ import annotations

import json

from caopd_jax.data import manual_hf
from caopd_jax.data.hf_arrow import DataFormatError, require_columns

OPTIONAL_TEXT = ("instruction", "name", "description", "nl_documentation")


def _golden_answer(value, where, i):
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError as e:
      raise DataFormatError(f"{where} row {i}: column 'golden_answer' is a string but not JSON "
                            f"({e}).") from e
  if isinstance(value, dict):
    value = [value]
  if not isinstance(value, (list, tuple)):
    raise DataFormatError(f"{where} row {i}: column 'golden_answer' must be a list of "
                          f"{{Action, Action_Input}}, got {type(value).__name__}.")
  calls = []
  for c in value:
    if not (isinstance(c, dict) and isinstance(c.get("Action"), str)):
      raise DataFormatError(f"{where} row {i}: column 'golden_answer' has an entry without a "
                            f"string 'Action': {str(c)[:80]!r}.")
    args = c.get("Action_Input", "")
    if args is None:
      args = ""
    if not isinstance(args, str):
      args = json.dumps(args, ensure_ascii=False)
    calls.append({"Action": c["Action"], "Action_Input": args})
  return calls


class CaopdTooluse(manual_hf.ManualHFBuilder):
  TASK_DIR = "tooluse_data"
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_hf.manual_instructions(TASK_DIR)
  TEXT_FEATURES = ("messages", "prompt", *OPTIONAL_TEXT, "golden_answer", "golden_response",
                   "demo")
  JSON_FEATURES = ("messages", "golden_answer", "golden_response")
  DESCRIPTION = "Tool use (ToolAlpaca) in the CaOPD/SDFT format."

  @classmethod
  def normalize(cls, table, split, where):
    hint = ("Tool-use data needs `prompt` (str) and `golden_answer` (list of {Action, "
            "Action_Input}); optional: instruction, name, description, nl_documentation, "
            "golden_response.")
    require_columns(table, ["prompt", "golden_answer"], where, hint)
    cols = set(table.column_names)
    out = []
    for i, row in enumerate(table.to_pylist()):
      prompt = row["prompt"]
      if not isinstance(prompt, str) or not prompt:
        raise DataFormatError(f"{where} row {i}: column 'prompt' must be a non-empty string, "
                              f"got {type(prompt).__name__}.")
      rec = {"id": i, "prompt": prompt,
             "messages": json.dumps([{"role": "user", "content": prompt}], ensure_ascii=False)}
      for c in OPTIONAL_TEXT:
        rec[c] = manual_hf.as_text(row.get(c), where, i, c) if c in cols else ""
      rec["golden_answer"] = json.dumps(_golden_answer(row["golden_answer"], where, i),
                                        ensure_ascii=False)
      resp = (manual_hf.as_str_list(row["golden_response"], where, i, "golden_response")
              if "golden_response" in cols else [])
      rec["golden_response"] = json.dumps(resp, ensure_ascii=False)
      rec["demo"] = "\n".join(resp)
      out.append(rec)
    return out
