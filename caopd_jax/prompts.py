"""Plain-text prompt templates for the embedded tasks, and their host-side tokenisation.

Student prompt carries the confidence instruction; responses end with "Confidence: X.XX".
Teacher contexts (privileged) follow the CaOPD templates:
  demo (SDFT):             question, "Example response:" demo, Confidence, [note], own-response instruction
  correct_solution (SDPO): question, "Correct solution:" solution, Confidence, [note], solve instruction
The teacher context is assembled in-graph from segments (caopd_jax.iteration) so its confidence
value, its note and (for correct_solution) its solution can be filled in per rollout; the
host-side `teacher_text` renders the same string for SFT data and for tests.
"""

import dataclasses

import numpy as np

from caopd_jax.tokenizers import pad_left, pad_right

MODES = ("demo", "correct_solution")


@dataclasses.dataclass(frozen=True)
class Templates:
  """Every template; the response is "{answer}" + confidence_prefix + "{confidence}", so the
  confidence prefix is both the replacement marker and the end of the verified answer."""
  student: str = "Q: {question}\nAnswer, then give your confidence (0.0-1.0).\nA: "
  demo_head: str = "Q: {question}\nExample response: "
  solution_head: str = "Q: {question}\nCorrect solution: "
  confidence_prefix: str = "\nConfidence: "
  note: str = "\nNote: The empirical confidence for this question is {confidence}. Use it."
  demo_tail: str = "\nNow answer with a response of your own.\nA: "
  solution_tail: str = "\nCorrectly solve the original question.\nA: "
  # "lsb": numbers are written least-significant digit first, the order in which small
  # transformers learn addition quickly (Lee et al. 2023, "Teaching arithmetic to small
  # transformers"); "msb": as usual.
  answer_order: str = "msb"
  # Zero-pad both operands of "a+b" to the same width ("37+05"), so a digit's position in the
  # question depends only on the difficulty level, not on the other operand's length.
  pad_operands: bool = False

  def written_question(self, question: str) -> str:
    """The question as it appears in prompts."""
    if not self.pad_operands:
      return question
    ops = [c for c in question if not c.isdigit()]
    if len(ops) != 1:
      raise ValueError(f"pad_operands needs a binary question like '37+5', got {question!r}.")
    a, b = question.split(ops[0])
    width = max(len(a), len(b))
    return a.zfill(width) + ops[0] + b.zfill(width)

  def head_text(self, mode: str, question: str) -> str:
    """The teacher context up to its demonstration / solution."""
    return self.head(mode).format(question=self.written_question(question))

  def written(self, answer: str) -> str:
    """The answer as it appears in responses and demonstrations."""
    if self.answer_order not in ("msb", "lsb"):
      raise ValueError(f"answer_order must be 'msb' or 'lsb', got {self.answer_order!r}.")
    return answer[::-1] if self.answer_order == "lsb" else answer

  @property
  def response(self):
    return "{answer}" + self.confidence_prefix + "{confidence}"

  @property
  def marker(self):
    return self.confidence_prefix

  @property
  def answer_end(self):  # what follows the answer (part of the exact-match verifier's target)
    return self.confidence_prefix

  def pieces(self):
    """The templates' constant phrases: single tokens for a CharTokenizer (short sequences)."""
    out = []
    for text in (self.student, self.demo_head, self.solution_head, self.confidence_prefix,
                 *self.note_parts(), self.demo_tail, self.solution_tail):
      out += [p for p in text.replace("{question}", "\0").split("\0") if p]
    return tuple(dict.fromkeys(out))

  def head(self, mode):
    return {"demo": self.demo_head, "correct_solution": self.solution_head}[_check(mode)]

  def tail(self, mode):
    return {"demo": self.demo_tail, "correct_solution": self.solution_tail}[_check(mode)]

  def note_parts(self):
    pre, post = self.note.split("{confidence}")
    return pre, post


def _check(mode):
  if mode not in MODES:
    raise ValueError(f"Unknown teacher context {mode!r}; valid: {MODES}.")
  return mode


def student_text(t: Templates, question: str) -> str:
  return t.student.format(question=t.written_question(question))


def response_text(t: Templates, answer: str, confidence: str) -> str:
  return t.response.format(answer=t.written(answer), confidence=confidence)


def teacher_text(t: Templates, mode: str, question: str, solution: str, confidence: str,
                 note: bool) -> str:
  """The full teacher context string (what the in-graph assembly produces, gaps removed);
  `solution` as written (see Templates.written)."""
  out = t.head_text(mode, question) + solution + t.confidence_prefix + confidence
  if note:
    out += t.note.format(confidence=confidence)
  return out + t.tail(mode)


def encode_prompts(tokenizer, t: Templates, records, mode: str, widths):
  """Host-side arrays for a batch of records {question, answer}.

  widths: dict with student, head, demo, target (static sizes: one compile per run).
  Returns student_prompt/student_valid [B, Ws] (left-padded), head/head_valid [B, Wh]
  (left-padded teacher context start), demo/demo_valid [B, Wd] (the demonstration's answer),
  target [B, Wt] (answer + answer_end tokens, -1 padded: the exact-match verifier's target).
  """
  enc = tokenizer.encode
  out = {}
  out["student_prompt"], out["student_valid"] = pad_left(
      [enc(student_text(t, r["question"])) for r in records], widths["student"], tokenizer.pad_id)
  out["head"], out["head_valid"] = pad_left(
      [enc(t.head_text(mode, r["question"])) for r in records], widths["head"],
      tokenizer.pad_id)
  out["demo"], out["demo_valid"] = pad_right([enc(t.written(r["answer"])) for r in records], widths["demo"],
                                             tokenizer.pad_id)
  out["target"], _ = pad_right([enc(t.written(r["answer"]) + t.answer_end) for r in records],
                               widths["target"], -1)
  too_long = [r["question"] for r in records
              if len(enc(t.written(r["answer"]) + t.answer_end)) > widths["target"]]
  if too_long:
    raise ValueError(f"Answers longer than widths['target']={widths['target']}: {too_long[:3]}.")
  return out


def encode_constants(tokenizer, t: Templates, mode: str):
  """Row-constant segments (ids [1, L], valid [1, L]) of the teacher context."""
  pre, post = t.note_parts()
  seg = lambda s: (np.asarray([tokenizer.encode(s)], np.int32), np.ones((1, len(tokenizer.encode(s))), bool))
  return {"confidence_prefix": seg(t.confidence_prefix), "note_pre": seg(pre),
          "note_post": seg(post), "tail": seg(t.tail(mode)), "marker": tokenizer.encode(t.marker)}


def auto_widths(tokenizer, t: Templates, records, mode: str, round_to: int = 8):
  """Static widths that fit every record (rounded up so nearby datasets share a compile)."""
  up = lambda n: -(-max(n, 1) // round_to) * round_to
  enc = lambda s: len(tokenizer.encode(s))
  return {
      "student": up(max(enc(student_text(t, r["question"])) for r in records)),
      "head": up(max(enc(t.head_text(mode, r["question"])) for r in records)),
      "demo": up(max(enc(t.written(r["answer"])) for r in records)),
      "target": up(max(enc(t.written(r["answer"]) + t.answer_end) for r in records)),
  }
