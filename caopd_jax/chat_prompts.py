"""Real-data prompts (science MCQ, tool use) through the HF tokenizer's chat template.

Student prompt: the task's chat messages with the confidence instruction of the CaOPD code
(`CONFIDENCE_LINE`) in the user turn (tool use: before "\\n\\nBegin!", as released; science:
appended to the user turn). Teacher context (privileged), as one user turn after the task's
system message(s):
  demo:             {task}\\n\\nThis is an example for a response to the question:\\n{demo}
  correct_solution: {task}\\n\\nCorrect solution:\\n{solution}
followed by "\\nConfidence: {c}", [CaOPD note "\\n\\nNote: The empirical confidence for this
question is {c}. Output this exact value in the 'Confidence:' field."], the instruction
("\\n\\nNow answer with a response of your own, including the thinking process.\\n" or
"\\n\\nCorrectly solve the original question.\\n") and the rest of the chat template up to and
including its generation prompt. With the note, the string equals the released code's teacher
prompt; without it (OPD), c = 1.00 and the string is the released SDFT prompt.

For `caopd_jax.iteration.make_iteration` the teacher context is cut into segments:
  head   per row, left-padded: the template's start, system turn(s), "{task}" and the intro;
  demo   per row, right-padded: the demonstration without its confidence line, or (for
         correct_solution) replaced in-graph by the answer part of a verified rollout;
  constants (row-constant, `encode_chat_constants`): confidence_prefix, note_pre, note_post,
         tail (instruction + template end + generation prompt).
The head and tail come from rendering the template once with a sentinel where the middle goes,
so they are exactly what the template produces around it; `encode_chat_prompts` checks that the
tail is the same for every row.

Segments are tokenised separately. With a BPE tokenizer this differs from tokenising the whole
string at the segment boundaries: merges across a boundary are not formed (e.g. Qwen's
pre-tokenizer makes ">\\n" one piece in "</answer>\\nConfidence", but the demo ends at ">" and
the "\\nConfidence: " segment starts with "\\n"), and each segment starts a fresh
pre-tokenisation. The decoded text is identical (tests/test_real_data.py checks it); the token
ids differ only at the boundaries (measured on the eval rows with a Qwen-style BPE: exactly one
extra token per teacher context, at demo -> "\\nConfidence: "; the student completion has the
same junction before its "\\nConfidence: {P_acc}"). The model sees a valid, if non-canonical,
tokenisation.

Demonstrations: `record["demo"]` (science `output_text`, tool-use `golden_response`; train
splits). Rows without one (the public eval splits) fall back to a demonstration written from the
gold label when `demo_fallback="gold"` ("<answer>\\nX\\n</answer>"; "Action: a\\nAction Input:
{..}").
"""

import dataclasses
import json

import numpy as np

from caopd_jax.prompts import MODES
from caopd_jax.tokenizers import pad_left, pad_right
from caopd_jax.verifiers import mcq_correct, tooluse_correct

TASKS = ("science", "tooluse")
CONFIDENCE_LINE = ("Confidence: your confidence level (0.0-1.0) regarding the success of this "
                   "action, must be in numerical format, no other words or explanation.")
_BEGIN = "\n\nBegin!"
_SENTINEL = "\uE000CAOPD_MIDDLE\uE000"  # private-use characters: never in real data


@dataclasses.dataclass(frozen=True)
class ChatTemplates:
  """The real-data templates (wording of the released CaOPD code)."""
  confidence_line: str = CONFIDENCE_LINE
  demo_intro: str = "\n\nThis is an example for a response to the question:\n"
  solution_intro: str = "\n\nCorrect solution:\n"
  confidence_prefix: str = "\nConfidence: "
  note: str = ("\n\nNote: The empirical confidence for this question is {confidence}. "
               "Output this exact value in the 'Confidence:' field.")
  demo_instruction: str = ("\n\nNow answer with a response of your own, including the thinking "
                           "process.\n")
  solution_instruction: str = "\n\nCorrectly solve the original question.\n"
  marker: str = "Confidence:"  # the cut: last case-insensitive occurrence
  demo_fallback: str = "gold"  # "gold": write a demo from the gold label; "error": raise
  chat_kwargs: tuple = ()  # extra apply_chat_template kwargs, e.g. (("enable_thinking", False),)

  def intro(self, mode):
    return {"demo": self.demo_intro, "correct_solution": self.solution_intro}[_check_mode(mode)]

  def instruction(self, mode):
    return {"demo": self.demo_instruction,
            "correct_solution": self.solution_instruction}[_check_mode(mode)]

  def note_parts(self):
    pre, post = self.note.split("{confidence}")
    return pre, post


def _check_mode(mode):
  if mode not in MODES:
    raise ValueError(f"Unknown teacher context {mode!r}; valid: {MODES}.")
  return mode


def _check_task(task):
  if task not in TASKS:
    raise ValueError(f"Unknown task {task!r}; valid: {TASKS}.")
  return task


# ---- text ------------------------------------------------------------------------------------
def inject_confidence(content: str, line: str = CONFIDENCE_LINE) -> str:
  """The released `_inject_inline_confidence`: the line before "\\n\\nBegin!", else appended."""
  if _BEGIN in content:
    return content.replace(_BEGIN, "\n" + line + _BEGIN, 1)
  return content + "\n" + line


def _split_messages(record, task):
  """(leading system messages, the task's user content) of a record."""
  messages = record["messages"]
  if isinstance(messages, str):
    messages = json.loads(messages)
  users = [i for i, m in enumerate(messages) if m["role"] == "user"]
  if not users:
    raise ValueError(f"{task} record {record.get('id')} has no user message.")
  last = users[-1]
  return list(messages[:last]), messages[last]["content"]


def task_content(t: ChatTemplates, record, task) -> str:
  """The user turn the student sees (with the confidence instruction)."""
  _check_task(task)
  return inject_confidence(_split_messages(record, task)[1], t.confidence_line)


def student_messages(t: ChatTemplates, record, task):
  before, _ = _split_messages(record, task)
  return before + [{"role": "user", "content": task_content(t, record, task)}]


def gold(record, task):
  """The verifier's gold: the answer letter (science) or the golden calls (tool use)."""
  return record["answer"] if _check_task(task) == "science" else record["golden_answer"]


def verify_text(task, text: str, gold_value) -> bool:
  return (mcq_correct if _check_task(task) == "science" else tooluse_correct)(text, gold_value)


def strip_confidence(t: ChatTemplates, text: str) -> str:
  """`text` up to its last case-insensitive marker (all of it if none), right-stripped."""
  pos = text.lower().rfind(t.marker.lower())
  return (text if pos < 0 else text[:pos]).rstrip()


def demo_text(t: ChatTemplates, record, task) -> str:
  """The demonstration without its confidence line (see the module docstring for fallbacks)."""
  demo = strip_confidence(t, record.get("demo") or "")
  if demo:
    return demo
  if t.demo_fallback != "gold":
    raise ValueError(f"{task} record {record.get('id')} has no demonstration (eval splits have "
                     "none); use a train split or demo_fallback='gold'.")
  if _check_task(task) == "science":
    return f"<answer>\n{record['answer']}\n</answer>"
  calls = record["golden_answer"]
  calls = json.loads(calls) if isinstance(calls, str) else calls
  return f"Action: {calls[0]['Action']}\nAction Input: {calls[0]['Action_Input']}"


def render(tokenizer, t: ChatTemplates, messages) -> str:
  """The chat template with its generation prompt (HF tokenizers; `chat_kwargs` passed on)."""
  hf = getattr(tokenizer, "hf", None)
  if hf is None or not getattr(hf, "chat_template", None):
    raise ValueError("Real-data prompts need a HF tokenizer with a chat template.")
  return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                **dict(t.chat_kwargs))


def student_text(tokenizer, t: ChatTemplates, record, task) -> str:
  return render(tokenizer, t, student_messages(t, record, task))


def teacher_messages(t: ChatTemplates, record, task, mode, middle: str):
  before, _ = _split_messages(record, task)
  content = task_content(t, record, task) + t.intro(mode) + middle + t.instruction(mode)
  return before + [{"role": "user", "content": content}]


def teacher_parts(tokenizer, t: ChatTemplates, record, task, mode) -> tuple[str, str]:
  """(head, tail): the rendered teacher context before and after its middle part."""
  text = render(tokenizer, t, teacher_messages(t, record, task, mode, _SENTINEL))
  if text.count(_SENTINEL) != 1:
    raise ValueError("The chat template altered the teacher context (sentinel not found once).")
  head, tail = text.split(_SENTINEL)
  return head, tail


def teacher_text(tokenizer, t: ChatTemplates, record, task, mode, solution: str,
                 confidence: str, note: bool) -> str:
  """The whole teacher context as one string (what the segments decode to)."""
  middle = solution + t.confidence_prefix + confidence
  if note:
    middle += t.note.format(confidence=confidence)
  return render(tokenizer, t, teacher_messages(t, record, task, mode, middle))


# ---- tokens ------------------------------------------------------------------------------------
def chat_widths(tokenizer, t: ChatTemplates, records, task, mode, *, max_prompt_len=1024,
                max_demo_len=1024, round_to: int = 64):
  """Static widths {student, head, demo} covering `records`, capped (prompts are left-truncated,
  demos right-truncated), rounded up so nearby datasets share a compile."""
  up = lambda n, cap: min(-(-max(n, 1) // round_to) * round_to, cap)
  enc = lambda s: len(tokenizer.encode(s))
  return {
      "student": up(max(enc(student_text(tokenizer, t, r, task)) for r in records), max_prompt_len),
      "head": up(max(enc(teacher_parts(tokenizer, t, r, task, mode)[0]) for r in records),
                 max_prompt_len),
      "demo": up(max(enc(demo_text(t, r, task)) for r in records), max_demo_len),
  }


def encode_chat_prompts(tokenizer, t: ChatTemplates, records, task, mode, widths):
  """Host arrays for make_iteration: student_prompt/student_valid [B, Ws] (left-padded and
  -truncated), head/head_valid [B, Wh] (left), demo/demo_valid [B, Wd] (right), row int32 [B]
  (the record id the text verifier looks up)."""
  enc = tokenizer.encode
  out = {}
  out["student_prompt"], out["student_valid"] = pad_left(
      [enc(student_text(tokenizer, t, r, task)) for r in records], widths["student"],
      tokenizer.pad_id)
  parts = [teacher_parts(tokenizer, t, r, task, mode) for r in records]
  tails = {tail for _, tail in parts}
  if len(tails) > 1:
    raise ValueError("The chat template gives different teacher tails per row: "
                     f"{sorted(tails)[:2]}.")
  out["head"], out["head_valid"] = pad_left([enc(h) for h, _ in parts], widths["head"],
                                            tokenizer.pad_id)
  out["demo"], out["demo_valid"] = pad_right([enc(demo_text(t, r, task)) for r in records],
                                             widths["demo"], tokenizer.pad_id)
  out["row"] = np.asarray([int(r["id"]) for r in records], np.int32)
  return out


def encode_chat_constants(tokenizer, t: ChatTemplates, records, task, mode, note: bool = True):
  """Row-constant segments (ids [1, L], valid [1, L]) for make_iteration(constants=...).

  `note` must equal make_iteration's `caopd`: with the note, the tail's leading whitespace
  ("\n\n") moves to the end of note_post, so "field.\n\n" is tokenised as one string (as in
  the whole-string tokenisation) and only the demo -> "\nConfidence: " boundary differs."""
  _, tail = teacher_parts(tokenizer, t, records[0], task, mode)
  pre, post = t.note_parts()
  if note:
    lead = tail[:len(tail) - len(tail.lstrip())]
    post, tail = post + lead, tail[len(lead):]

  def seg(s):
    ids = tokenizer.encode(s)
    return np.asarray([ids], np.int32), np.ones((1, len(ids)), bool)

  return {"confidence_prefix": seg(t.confidence_prefix), "note_pre": seg(pre),
          "note_post": seg(post), "tail": seg(tail)}


def make_text_verifier(task, records):
  """`(row_id, text) -> bool` over `records` (looked up by their `id`)."""
  golds = {int(r["id"]): gold(r, task) for r in records}

  def verifier(row, text):
    return verify_text(task, text, golds[int(row)])

  return verifier


def stop_ids(tokenizer) -> tuple[int, ...]:
  """EOS plus the usual end-of-turn tokens the vocabulary has (<|im_end|>, <|endoftext|>, ...)."""
  ids = {tokenizer.eos_id}
  hf = getattr(tokenizer, "hf", None)
  if hf is not None:
    vocab = hf.get_vocab()
    ids |= {vocab[s] for s in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")
            if s in vocab}
  return tuple(sorted(ids))
