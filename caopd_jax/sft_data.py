"""Supervised warm-up sequences for the embedded task (the "base student").

The warm-up stands in for pretraining + instruction tuning of a real LLM. It mixes three formats
(probabilities in the config):
  student:          student prompt -> "{answer}\\nConfidence: {habit(difficulty)}"
  demo / solution:  a privileged teacher context whose confidence c (and, with probability
                    `note_prob`, a note stating c) is drawn uniformly from the K-grid ->
                    "{answer}\\nConfidence: {c}"
so the base student answers with partial, difficulty-dependent accuracy and a confidence habit,
and, as a teacher, can use a demonstration and follow a stated confidence (the abilities an LLM
teacher brings to SDFT/CaOPD).
"""

import numpy as np

from caopd_jax.caopd import format_confidence
from caopd_jax.prompts import response_text, student_text, teacher_text
from caopd_jax.tokenizers import pad_right

FORMATS = ("student", "demo", "correct_solution")


def habit(difficulty: int, table, first_level: int = 1) -> str:
  """The base student's stated confidence at a difficulty level (table[0] is `first_level`)."""
  return f"{table[min(max(difficulty - first_level, 0), len(table) - 1)]:.2f}"


def sft_texts(records, templates, rng: np.random.Generator, *, mix, habit_table, num_samples: int,
              note_prob: float, first_level: int = 1):
  """[(prompt, response)] for a batch of records; `mix` = probabilities of FORMATS."""
  formats = rng.choice(len(FORMATS), size=len(records), p=np.asarray(mix) / np.sum(mix))
  out = []
  for r, f in zip(records, formats):
    if FORMATS[f] == "student":
      out.append((student_text(templates, r["question"]),
                  response_text(templates, r["answer"], habit(r["difficulty"], habit_table, first_level))))
    else:
      conf = format_confidence(int(rng.integers(num_samples + 1)), num_samples)
      note = bool(rng.random() < note_prob)
      out.append((teacher_text(templates, FORMATS[f], r["question"], templates.written(r["answer"]),
                               conf, note),
                  response_text(templates, r["answer"], conf)))
  return out


def encode_sft(tokenizer, texts, width: int):
  """{tokens, valid, loss_mask} [B, width]: prompt ++ response ++ EOS, loss on response + EOS."""
  seqs, starts = [], []
  for prompt, response in texts:
    p = tokenizer.encode(prompt)
    seqs.append(p + tokenizer.encode(response) + [tokenizer.eos_id])
    starts.append(len(p))
  too_long = max(len(s) for s in seqs)
  if too_long > width:
    raise ValueError(f"SFT sequence of {too_long} tokens exceeds the configured width {width}.")
  tokens, valid = pad_right(seqs, width, tokenizer.pad_id)
  loss_mask = valid & (np.arange(width)[None, :] >= np.asarray(starts)[:, None])
  return {"tokens": tokens, "valid": valid, "loss_mask": loss_mask}
