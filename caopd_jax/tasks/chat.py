"""`ChatTask`: a real-data task rendered through the model's chat template (released CaOPD wording).

Student prompt: the record's chat messages with the confidence instruction `CONFIDENCE_LINE` in
the last user turn (before "\\n\\nBegin!" when present, else appended; the released
`_inject_inline_confidence`). Teacher context, one user turn after the leading system turn(s):
  {task}{intro}{solution}\\nConfidence: {c}[note]{instruction}
and the rest of the template up to its generation prompt. With the note this is the released
CaOPD teacher prompt; without it (OPD, c = 1.00) the released SDFT prompt. `teacher_parts`
renders the template once with a sentinel where the middle goes, so head and tail are exactly
what the template produces around it.

Segments are tokenised separately (caopd_jax.opd.prompts): with a BPE tokenizer merges across a
boundary are not formed (Qwen's ">\\n" at "</answer>" -> "\\nConfidence: ", one extra token per
teacher context on the eval rows). The decoded text is identical.

Demonstrations: `record["demo"]` (train splits); rows without one (the public eval splits) get
one written from the gold label when option demo_fallback == "gold" (`gold_demo`).
"""

import json

from caopd_jax import data
from caopd_jax.tasks.base import Task

CONFIDENCE_LINE = ("Confidence: your confidence level (0.0-1.0) regarding the success of this "
                   "action, must be in numerical format, no other words or explanation.")
_BEGIN = "\n\nBegin!"
_SENTINEL = "\uE000CAOPD_MIDDLE\uE000"  # private-use characters: never in real data


def inject_confidence(content: str, line: str = CONFIDENCE_LINE) -> str:
  """The released `_inject_inline_confidence`: the line before "\\n\\nBegin!", else appended."""
  if _BEGIN in content:
    return content.replace(_BEGIN, "\n" + line + _BEGIN, 1)
  return content + "\n" + line


class ChatTask(Task):
  verification = "text"
  cut = "last"
  dataset = ""  # the caopd_jax.data builder holding the records
  OPTIONS = ("manual_dir", "limit", "demo_fallback", "chat_template_kwargs")
  note = ("\n\nNote: The empirical confidence for this question is {confidence}. "
          "Output this exact value in the 'Confidence:' field.")

  def sources(self, data_dir, splits):
    kw = {"manual_dir": self.cfg.manual_dir} if self.cfg.manual_dir else {}
    out = {}
    for split in splits:
      src = data.get_source(self.dataset, split, data_dir, **kw)
      out[split] = data.head(src, self.cfg.limit) if self.cfg.limit else src
    return out

  def gold_demo(self, record) -> str:
    raise NotImplementedError

  # ---- text ----------------------------------------------------------------------------------
  def _split(self, record):
    """(leading messages, the content of the last user turn)."""
    messages = record["messages"]
    if isinstance(messages, str):
      messages = json.loads(messages)
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
      raise ValueError(f"{self.name} record {record.get('id')} has no user message.")
    return list(messages[:users[-1]]), messages[users[-1]]["content"]

  def render(self, tokenizer, messages) -> str:
    hf = getattr(tokenizer, "hf", None)
    if hf is None or not getattr(hf, "chat_template", None):
      raise ValueError(f"Task {self.name!r} needs a HF tokenizer with a chat template.")
    return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                  **dict(self.cfg.chat_template_kwargs))

  def student_messages(self, record):
    before, content = self._split(record)
    return before + [{"role": "user", "content": inject_confidence(content)}]

  def student_text(self, tokenizer, record):
    return self.render(tokenizer, self.student_messages(record))

  def teacher_parts(self, tokenizer, record, context):
    before, content = self._split(record)
    user = inject_confidence(content) + context.intro + _SENTINEL + context.instruction
    text = self.render(tokenizer, before + [{"role": "user", "content": user}])
    if text.count(_SENTINEL) != 1:
      raise ValueError("The chat template altered the teacher context (sentinel not found once).")
    head, tail = text.split(_SENTINEL)
    return head, tail

  def strip_confidence(self, text: str) -> str:
    """`text` up to its last case-insensitive marker (all of it if none), right-stripped."""
    pos = text.lower().rfind(self.marker.lower())
    return (text if pos < 0 else text[:pos]).rstrip()

  def solution_text(self, record):
    demo = self.strip_confidence(record.get("demo") or "")
    if demo:
      return demo
    if self.cfg.demo_fallback != "gold":
      raise ValueError(f"{self.name} record {record.get('id')} has no demonstration (eval splits "
                       "have none); use a train split or demo_fallback='gold'.")
    return self.gold_demo(record)
