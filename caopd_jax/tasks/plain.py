"""`PlainTask`: a task written in plain-text templates over a character tokenizer.

  student  "Q: {question}\\nAnswer, then give your confidence (0.0-1.0).\\nA: "
  teacher  "Q: {question}\\nExample response: " {solution} "\\nConfidence: " {c} [note]
           "\\nNow answer with a response of your own.\\nA: "      (demo; correct_solution alike)
The response is "{answer}\\nConfidence: {c}"; the in-graph verifier wants the completion to start
with "{answer}\\nConfidence: ". The templates' constant phrases are single tokens of the task's
CharTokenizer (`new_tokenizer`), which keeps toy sequences short.
"""

from caopd_jax.tasks.base import Task
from caopd_jax.tokenizers import CharTokenizer


class PlainTask(Task):
  student = "Q: {question}\nAnswer, then give your confidence (0.0-1.0).\nA: "
  # context name -> (head template, tail); other contexts use their own wording (`_templates`).
  contexts = {
      "demo": ("Q: {question}\nExample response: ", "\nNow answer with a response of your own.\nA: "),
      "correct_solution": ("Q: {question}\nCorrect solution: ",
                           "\nCorrectly solve the original question.\nA: "),
  }

  def question(self, record) -> str:
    return record["question"]

  def answer(self, record) -> str:
    return record["answer"]

  def student_text(self, tokenizer, record):
    return self.student.format(question=self.question(record))

  def _templates(self, context):
    if context.name in self.contexts:
      return self.contexts[context.name]
    return "Q: {question}" + context.intro, context.instruction + "A: "

  def teacher_parts(self, tokenizer, record, context):
    head, tail = self._templates(context)
    return head.format(question=self.question(record)), tail

  def solution_text(self, record):
    return self.answer(record)

  def target_text(self, record):
    return self.answer(record) + self.confidence_prefix

  def pieces(self) -> tuple[str, ...]:
    """The templates' constant phrases, in a fixed order (they become token ids)."""
    texts = [self.student, *(h for h, _ in self.contexts.values()), self.confidence_prefix,
             *self.note_parts(), *(t for _, t in self.contexts.values())]
    out = [p for text in texts for p in text.replace("{question}", "\0").split("\0") if p]
    return tuple(dict.fromkeys(out))

  def new_tokenizer(self):
    return CharTokenizer(pieces=self.pieces())
