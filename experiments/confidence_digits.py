r"""What a model states as its confidence's first digit, as the OPD student and as the teacher.

For held-out questions, the next-token distribution after `answer + "\nConfidence: "` in the
student's format (no context) and in the teacher's (the `demo` context, whose demonstration states
`--stated`, 1.00 as in OPD), and after `"\nConfidence: 0."` the most likely next tokens. A base
trained on the default recipe states 0.88 as the student and copies the demonstration's 1.00 as
the teacher; an OPD student that takes the "0." branch learns the teacher's continuation "00"
there (README, "An OPD seed that learns to say 0.00").

  python -m experiments.confidence_digits --data_dir=/tmp/ct6/tfds \
      --models=/tmp/ho/k8/seed_5/base/model,/tmp/ho/k8/seed_5/opd/model
"""

import os

from absl import app, flags
import jax.numpy as jnp
import numpy as np

from caopd_jax import contexts, data, tasks
from caopd_jax.models.hf_io import load_hf
from caopd_jax.opd.prompts import teacher_text
from caopd_jax.tokenizers import load_tokenizer
from configs import default

_MODELS = flags.DEFINE_list("models", None, "HF model directories (the arithmetic task's tokens)")
_DATA = flags.DEFINE_string("data_dir", None, "tfds directory of the default job's task")
_SPLIT = flags.DEFINE_string("split", "test", "split whose first --num questions are probed")
_NUM = flags.DEFINE_integer("num", 200, "questions")
_STATED = flags.DEFINE_string("stated", "1.00", "the confidence the teacher's demonstration states")

FORMATS = ("student", "teacher")


def prefixes(task, tokenizer, records, fmt: str, stated: str = "1.00", after: str = ""):
  """Prompt + correct answer + confidence prefix (+ `after`), one string per record."""
  if fmt not in FORMATS:
    raise ValueError(f"Unknown format {fmt!r}; valid: {FORMATS}.")
  ctx = contexts.get("demo")
  out = []
  for r in records:
    head = (task.student_text(tokenizer, r) if fmt == "student" else
            teacher_text(tokenizer, task, r, ctx, task.solution_text(r), stated, False))
    out.append(head + task.solution_text(r) + task.confidence_prefix + after)
  return out


def next_token_probs(model, tokenizer, texts, batch_size: int = 64) -> np.ndarray:
  """float64 [N, V]: softmax of the logits at each text's last token (right-padded batches)."""
  out = []
  for i in range(0, len(texts), batch_size):
    ids = [tokenizer.encode(t) for t in texts[i:i + batch_size]]
    width = max(len(x) for x in ids)
    tokens = np.full((len(ids), width), tokenizer.pad_id, np.int32)
    valid = np.zeros((len(ids), width), bool)
    for b, x in enumerate(ids):
      tokens[b, :len(x)], valid[b, :len(x)] = x, True
    logits = model(jnp.asarray(tokens), valid=jnp.asarray(valid))
    last = np.asarray(logits, np.float64)[np.arange(len(ids)), valid.sum(1) - 1]
    p = np.exp(last - last.max(-1, keepdims=True))
    out.append(p / p.sum(-1, keepdims=True))
  return np.concatenate(out)


def probe(model, tokenizer, task, records, stated: str = "1.00") -> list[dict]:
  """One row per format: mean P("1"), P("0") as the first digit; top-3 next tokens after "0."."""
  rows = []
  d0, d1 = tokenizer.encode("0")[0], tokenizer.encode("1")[0]
  for fmt in FORMATS:
    first = next_token_probs(model, tokenizer, prefixes(task, tokenizer, records, fmt, stated)).mean(0)
    after = next_token_probs(model, tokenizer,
                             prefixes(task, tokenizer, records, fmt, stated, "0.")).mean(0)
    top = [(tokenizer.decode([int(i)]), float(after[i])) for i in np.argsort(-after)[:3]]
    rows.append(dict(format=fmt, p1=float(first[d1]), p0=float(first[d0]), after_0=top))
  return rows


def main(_):
  missing = [p for p in _MODELS.value if not os.path.exists(os.path.join(p, "config.json"))]
  if missing:  # before the task's data is read (or generated) under --data_dir
    raise FileNotFoundError(f"Not HF model directories (no config.json): {missing}.")
  task = tasks.get(default.get_config().task)
  records = data.records(task.sources(_DATA.value, (_SPLIT.value,))[_SPLIT.value])[:_NUM.value]
  print(f"| model | format | P('1') | P('0') | after '0.' (top 3) |\n|---|---|---|---|---|")
  for path in _MODELS.value:
    model, tokenizer = load_hf(path), load_tokenizer(path)
    for r in probe(model, tokenizer, task, records, _STATED.value):
      top = ", ".join(f"{t!r} {p:.2f}" for t, p in r["after_0"])
      print(f"| {path} | {r['format']} | {r['p1']:.3f} | {r['p0']:.3f} | {top} |", flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["models", "data_dir"])
  app.run(main)
