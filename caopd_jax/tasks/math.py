"""`math`: math word problems (GSM8K / MATH style; caopd_jax/data/math.py), judged by math-verify.

Prompt: the question, "Please reason step by step, and put your final answer within \\boxed{}."
(the usual math-OPD instruction) and the confidence instruction. Verifier: the response up to
its last "Confidence:" (so the stated confidence is never read as the answer) and the gold
answer are parsed by the `math-verify` package (boxed / final-answer extraction, LaTeX and plain
expressions, symbolic equivalence) and compared with its `verify`. math-verify bounds parsing
with signal.alarm, which works only in the main thread; in the iteration's pure_callback thread
it runs without that timeout. The CaOPD cut is at the LAST "Confidence:" (a reasoning trace may
say "confidence" before the answer).
"""

import logging
import threading

from caopd_jax.tasks.chat import ChatTask

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
logging.getLogger("math_verify").setLevel(logging.ERROR)  # one warning per threaded call


def math_correct(text: str, gold: str) -> bool:
  """math-verify's judgement of `text` (a response without its confidence line) against `gold`."""
  from math_verify import parse, verify  # pylint: disable=g-import-not-at-top
  timeout = 5 if threading.current_thread() is threading.main_thread() else None
  target = parse(text, parsing_timeout=timeout)
  if not target:
    return False
  golds = parse(f"${gold}$", parsing_timeout=timeout) or parse(gold, parsing_timeout=timeout)
  return bool(golds) and bool(verify(golds, target, timeout_seconds=timeout))


class Math(ChatTask):
  name = "math"
  dataset = "math"
  cut = "last"

  def _split(self, record):
    before, content = super()._split(record)
    return before, content.rstrip() + "\n\n" + INSTRUCTION

  def gold(self, record):
    return record["answer"]

  def is_correct(self, text, gold):
    return math_correct(self.strip_confidence(text), gold)

  def gold_demo(self, record):
    return f"The final answer is \\boxed{{{record['answer']}}}."
