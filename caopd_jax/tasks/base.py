"""`Task`: what a task gives the one OPD program (caopd_jax/jobs/opd.py), by name.

A task turns its records into text and says how a response is judged:
  sources(data_dir, splits)       {split: random-access records} (`data.BatchIterator` reads them)
  student_text(tok, r)            the student prompt, with the confidence instruction
  teacher_parts(tok, r, context)  (head, tail): the teacher context around its middle part
                                  (solution, confidence and CaOPD note; caopd_jax.contexts)
  solution_text(r)                the demonstration, without its confidence line
  response_text(r, c)             a correct response stating confidence c (SFT warm-up)
  verification                    "tokens": in the graph, correct iff the completion starts with
                                  encode(target_text(r)) (caopd_jax.opd.verify); "text": on the
                                  host, is_correct(decoded response, gold(r))
  cut                             CaOPD cuts the completion at the "first" or "last" marker
  eval_correct(text, gold)        how evaluation scores a decoded response (default is_correct)
`PlainTask` (plain-text templates over a CharTokenizer) and `ChatTask` (the model's chat
template) implement the text. Options come from `config.task` (defaults live in configs); a task
lists their names in OPTIONS and every one must be given.
"""

CONFIDENCE_PREFIX = "\nConfidence: "


class Task:
  name = ""
  OPTIONS: tuple[str, ...] = ()
  verification = "tokens"
  marker = "Confidence:"  # host-side cut marker (case-insensitive)
  cut = "first"
  confidence_prefix = CONFIDENCE_PREFIX
  note = "\nNote: The empirical confidence for this question is {confidence}. Use it."

  def __init__(self, cfg):
    given = set(cfg) - {"name"}
    missing, unknown = set(self.OPTIONS) - given, given - set(self.OPTIONS)
    if missing or unknown:
      raise ValueError(f"config.task for task {self.name!r}: missing {sorted(missing)}, unknown "
                       f"{sorted(unknown)}; its options are {sorted(self.OPTIONS)}.")
    if self.verification not in ("tokens", "text") or self.cut not in ("first", "last"):
      raise ValueError(f"Task {self.name!r}: verification must be 'tokens' or 'text' and cut "
                       f"'first' or 'last', got {self.verification!r}, {self.cut!r}.")
    self.cfg = cfg

  # ---- data ----------------------------------------------------------------------------------
  def sources(self, data_dir: str, splits) -> dict:
    raise NotImplementedError

  # ---- text ----------------------------------------------------------------------------------
  def student_text(self, tokenizer, record) -> str:
    raise NotImplementedError

  def teacher_parts(self, tokenizer, record, context) -> tuple[str, str]:
    raise NotImplementedError

  def solution_text(self, record) -> str:
    raise NotImplementedError

  def response_text(self, record, confidence: str) -> str:
    return self.solution_text(record) + self.confidence_prefix + confidence

  def note_parts(self) -> tuple[str, str]:
    pre, post = self.note.split("{confidence}")
    return pre, post

  def new_tokenizer(self):
    raise ValueError(f"Task {self.name!r} has no tokenizer of its own: start from a HF model "
                     "directory (config.init_from) that holds one.")

  # ---- verification --------------------------------------------------------------------------
  def target_text(self, record) -> str:
    raise NotImplementedError(f"Task {self.name!r} does not verify in the graph.")

  can_corrupt = False  # `corrupt` is implemented (SFT label noise, sft.answer_noise)
  LEVELS = ("difficulty",)  # what SFT label noise can be indexed by (sft.noise_by)

  def level(self, record, by: str) -> int:
    """The record's level under `by`, one of LEVELS other than "difficulty" (0 = easiest)."""
    raise ValueError(f"Task {self.name!r} has no level {by!r}; valid: {self.LEVELS}.")

  def corrupt(self, record, rng):
    """The record with a wrong answer of the same form (noisy SFT labels)."""
    raise NotImplementedError(f"Task {self.name!r} cannot corrupt answers.")

  def gold(self, record):
    raise NotImplementedError(f"Task {self.name!r} does not verify on the host.")

  def is_correct(self, text: str, gold) -> bool:
    raise NotImplementedError(f"Task {self.name!r} does not verify on the host.")

  def eval_correct(self, text: str, gold) -> bool:
    return self.is_correct(text, gold)
