"""`science`: multiple-choice chemistry questions (SciKnowEval, CaOPD/SDFT format).

Two verifiers. `strict` (training rewards; the released training code's): the LAST
`<answer>X</answer>` (tag case-insensitive, content without '<', may span lines), stripped and
upper-cased, equals the gold letter. `released` (the released *evaluation*'s lenient parser,
`eval/chemistry_correctness.py`), in order: the FIRST `<answer>[A-D]</answer>`, an unclosed
`<answer>[A-D]` at a line end (truncated output), the last line that is a bare letter, the last
"Answer: X" / "answer is X". Option eval_parser picks the one evaluation uses (configs/paper use
`released` for the paper's tables). The CaOPD cut is at the LAST "Confidence:" (a thinking
trace may say "confidence" before the answer; the first would cut the answer away).
"""

import json
import re
from typing import Any, Mapping, Sequence

from caopd_jax.tasks.chat import ChatTask

_ANSWER_TAG_RE = re.compile(r"<answer>\s*([^<]*?)\s*</answer>", re.DOTALL | re.IGNORECASE)


def gold_letter(gold: Any) -> str:
  """'A', [{'Answer': 'A'}], {'Answer': 'A'} or the JSON string of the list form -> 'A'."""
  if isinstance(gold, str) and gold.lstrip().startswith(("[", "{")):
    try:
      gold = json.loads(gold)
    except json.JSONDecodeError:
      return gold.strip().upper()
  if isinstance(gold, Mapping):
    gold = gold.get("Answer", "")
  elif isinstance(gold, Sequence) and not isinstance(gold, str):
    gold = gold[0].get("Answer", "") if len(gold) and isinstance(gold[0], Mapping) else ""
  return str(gold if gold is not None else "").strip().upper()


def mcq_correct(text: str, gold: Any) -> bool:
  """True iff the last `<answer>...</answer>` content equals the gold letter; no tag or an
  empty gold -> False."""
  expected = gold_letter(gold)
  if not expected or not isinstance(text, str):
    return False
  matches = _ANSWER_TAG_RE.findall(text)
  return bool(matches) and matches[-1].strip().upper() == expected


_FIRST_TAG = re.compile(r"<answer>\s*([A-Da-d])\s*</answer>", re.IGNORECASE | re.DOTALL)
_UNCLOSED = re.compile(r"<answer>\s*([A-Da-d])\s*$", re.IGNORECASE | re.MULTILINE)
_ANSWER_IS = re.compile(r"[Aa]nswer(?:\s+is)?[:\s]+([A-Da-d])\b")


def released_letter(text: str) -> str | None:
  """The letter the released evaluation reads (module docstring), or None."""
  for pattern in (_FIRST_TAG, _UNCLOSED):
    m = pattern.search(text)
    if m:
      return m.group(1).upper()
  for line in reversed([line.strip() for line in text.strip().splitlines()]):
    if re.fullmatch(r"[A-Da-d]", line):
      return line.upper()
  found = _ANSWER_IS.findall(text)
  return found[-1].upper() if found else None


def released_correct(text: str, gold: Any) -> bool:
  expected = gold_letter(gold)
  return bool(expected) and isinstance(text, str) and released_letter(text) == expected


class Science(ChatTask):
  name = "science"
  dataset = "science"
  OPTIONS = ChatTask.OPTIONS + ("eval_parser",)

  def __init__(self, cfg):
    super().__init__(cfg)
    if cfg.eval_parser not in ("strict", "released"):
      raise ValueError(f"task.eval_parser must be 'strict' or 'released', got {cfg.eval_parser!r}.")

  def eval_correct(self, text, gold):
    return (released_correct if self.cfg.eval_parser == "released" else mcq_correct)(text, gold)

  def gold(self, record):
    return record["answer"]

  def is_correct(self, text, gold):
    return mcq_correct(text, gold)

  def gold_demo(self, record):
    return f"<answer>\n{record['answer']}\n</answer>"
