"""`science`: multiple-choice chemistry questions (SciKnowEval, CaOPD/SDFT format).

Verifier (released code): the LAST `<answer>X</answer>` (tag case-insensitive, content without
'<', may span lines), stripped and upper-cased, equals the gold letter (stripped, upper-cased).
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


class Science(ChatTask):
  name = "science"
  dataset = "science"

  def gold(self, record):
    return record["answer"]

  def is_correct(self, text, gold):
    return mcq_correct(text, gold)

  def gold_demo(self, record):
    return f"<answer>\n{record['answer']}\n</answer>"
