"""A task's records as the fixed-width arrays the iteration reads, for any task and context.

  w = widths(tok, task, records, context, max_prompt_len=...)   # once: one compile per run
  prompts = encode(tok, task, batch_records, context, w)         # per step, on the host
  consts = constants(tok, task, context, records, num_samples)   # row-constant segments, tables

prompts: student_prompt/student_valid [B, Ws] (left-padded, left-truncated: the CaOPD code
truncates prompts on the left), head/head_valid [B, Wh] (the teacher context's start, left),
demo/demo_valid [B, Wd] (the demonstration, right-padded and -truncated), row int32 [B] (the
record ids host verifiers look up), target int32 [B, Wt] (in-graph verification: the answer's
tokens, -1 padded) and truncated bool [B] (a prompt or head longer than its width). A context
that `sees_student_prompt` needs no head or demo; `context=None` (evaluation) neither.
"""

import logging
from typing import NamedTuple

import numpy as np

from caopd_jax.opd.caopd import confidence_tables
from caopd_jax.tokenizers import pad_left, pad_right


class Constants(NamedTuple):
  confidence_prefix: tuple  # (ids [1, L], valid [1, L]): "\nConfidence: "
  note_pre: tuple  # CaOPD note before / after its value
  note_post: tuple
  tail: tuple  # the context's instruction and the template's end
  suffix: tuple  # (int32 [K+1, L], lengths [K+1]): "\nConfidence: {k/K}" + EOS, for (a)
  values: tuple  # (int32 [K+1, L], lengths [K+1]): "{k/K}", for (b) and (c)


def _segment(tokenizer, text):
  ids = tokenizer.encode(text)
  return np.asarray([ids], np.int32), np.ones((1, len(ids)), bool)


def _tails(tokenizer, task, records, context):
  tails = {task.teacher_parts(tokenizer, r, context)[1] for r in records}
  if len(tails) > 1:
    raise ValueError(f"Task {task.name!r} gives different teacher tails per record (the tail is "
                     f"one row-constant segment): {sorted(tails)[:2]}.")
  return tails.pop()


def constants(tokenizer, task, context, records, num_samples: int) -> Constants:
  """The row-constant segments and tables (no records: an empty tail, for compile-only plans)."""
  tail = "" if context.sees_student_prompt or not records else _tails(tokenizer, task,
                                                                      records[:1], context)
  pre, post = task.note_parts()
  suffix, values = confidence_tables(tokenizer, num_samples, task.confidence_prefix)
  return Constants(_segment(tokenizer, task.confidence_prefix), _segment(tokenizer, pre),
                   _segment(tokenizer, post), _segment(tokenizer, tail), suffix, values)


def widths(tokenizer, task, records, context=None, *, max_prompt_len: int = 0,
           max_demo_len: int = 0, round_to: int = 8) -> dict:
  """Static widths covering `records`, rounded up (nearby datasets share a compile) and capped
  (0: no cap) at max_prompt_len (student prompt, head) and max_demo_len (demo)."""
  def up(texts, cap):
    n = max(len(tokenizer.encode(s)) for s in texts)
    n = -(-max(n, 1) // round_to) * round_to
    return min(n, cap) if cap else n
  out = {"student": up([task.student_text(tokenizer, r) for r in records], max_prompt_len)}
  if context is not None and not context.sees_student_prompt:
    _tails(tokenizer, task, records, context)
    out["head"] = up([task.teacher_parts(tokenizer, r, context)[0] for r in records],
                     max_prompt_len)
    out["demo"] = up([task.solution_text(r) for r in records], max_demo_len)
  if task.verification == "tokens":
    out["target"] = up([task.target_text(r) for r in records], 0)
  return out


def overlong(tokenizer, task, records, context=None, *, max_prompt_len: int = 0,
             max_demo_len: int = 0) -> np.ndarray:
  """bool [N]: records whose student prompt or teacher head exceeds max_prompt_len (or whose
  demonstration exceeds max_demo_len); 0 disables a cap."""
  def longer(texts, cap):
    return np.array([bool(cap) and len(tokenizer.encode(s)) > cap for s in texts], bool)
  out = longer([task.student_text(tokenizer, r) for r in records], max_prompt_len)
  if context is not None and not context.sees_student_prompt:
    out |= longer([task.teacher_parts(tokenizer, r, context)[0] for r in records], max_prompt_len)
    out |= longer([task.solution_text(r) for r in records], max_demo_len)
  return out


def report_overlong(over, n: int, where: str, action: str, warn_above: float = 0.05):
  """Logs how many records are over the length caps (a warning above `warn_above` of them)."""
  k = int(np.sum(over))
  if not k:
    return
  verb = "dropped" if action == "drop" else "truncated (prompts on the left, demos on the right)"
  level = logging.WARNING if k > warn_above * n else logging.INFO
  logging.log(level, "%s: %d of %d records (%.1f%%) are longer than the length caps and are %s; "
              "raise max_prompt_len / max_demo_len or set overlong='drop'.", where, k, n,
              100 * k / n, verb)


def encode(tokenizer, task, records, context, widths) -> dict:
  """Host arrays for a batch of records (see the module docstring)."""
  enc = tokenizer.encode
  student = [enc(task.student_text(tokenizer, r)) for r in records]
  out = {}
  out["student_prompt"], out["student_valid"] = pad_left(student, widths["student"],
                                                         tokenizer.pad_id)
  truncated = np.array([len(s) > widths["student"] for s in student], bool)
  if "head" in widths:
    heads = [enc(task.teacher_parts(tokenizer, r, context)[0]) for r in records]
    out["head"], out["head_valid"] = pad_left(heads, widths["head"], tokenizer.pad_id)
    truncated |= np.array([len(h) > widths["head"] for h in heads], bool)
    out["demo"], out["demo_valid"] = pad_right([enc(task.solution_text(r)) for r in records],
                                               widths["demo"], tokenizer.pad_id)
  if "target" in widths:
    targets = [enc(task.target_text(r)) for r in records]
    if max(len(t) for t in targets) > widths["target"]:
      raise ValueError(f"Answers longer than widths['target']={widths['target']}.")
    out["target"], _ = pad_right(targets, widths["target"], -1)
  out["row"] = np.asarray([int(r["id"]) for r in records], np.int32)
  out["truncated"] = truncated
  return out


def teacher_text(tokenizer, task, record, context, solution: str, confidence: str,
                 note: bool) -> str:
  """The whole teacher context as one string (what the segments decode to)."""
  if context.sees_student_prompt:
    return task.student_text(tokenizer, record)
  head, tail = task.teacher_parts(tokenizer, record, context)
  middle = solution + task.confidence_prefix + confidence
  if note:
    middle += task.note.format(confidence=confidence)
  return head + middle + tail
