"""Teachers for OPD: the EMA self-teacher, or a separate (fixed) checkpoint.

  kind="ema"    the teacher starts as a copy of the student and follows
                theta_T <- (1 - a) theta_T + a theta_S after every step (SDFT's
                `ref_model_mixup_alpha`, a = ema_alpha; a = 0 keeps the base model frozen).
  kind="fixed"  a different local HF checkpoint (any size or family of the decoder) that uses the
                student's tokenizer; never updated (ema_alpha = 0).

`make_opd_step(graphdef, teacher.graphdef, ..., ema_alpha=teacher.ema_alpha)` and
`init_state(params, optimizer, teacher=teacher.params)` take the result. Distillation compares
the two models' next-token distributions id by id, so a separate teacher must share the
student's vocabulary, special tokens and (padded) output size: `check_compatible` raises
`VocabularyMismatch` listing every disagreement otherwise.
"""

from typing import Any, NamedTuple

import jax.numpy as jnp
from flax import nnx

from caopd_jax.models import Transformer, load_hf, presets
from caopd_jax.tokenizers import load_tokenizer

KINDS = ("ema", "fixed")


class VocabularyMismatch(ValueError):
  """Student and teacher do not share one vocabulary (token ids mean different things)."""


class Teacher(NamedTuple):
  kind: str
  graphdef: Any
  params: Any  # nnx.State
  ema_alpha: float
  path: str = ""


def _special_map(tok):
  hf = getattr(tok, "hf", None)
  out = {"eos": tok.eos_id, "pad": tok.pad_id, "bos": tok.bos_id}
  if hf is not None:
    out.update({f"special {t!r}": i for t, i in zip(hf.all_special_tokens, hf.all_special_ids)})
  return out


def _vocab(tok):
  hf = getattr(tok, "hf", None)
  if hf is not None:
    return hf.get_vocab()
  return {tok.decode([i], skip_special=False): i for i in range(tok.vocab_size)}


def compatibility_problems(student_tok, teacher_tok, student_vocab_size=None,
                           teacher_vocab_size=None) -> list[str]:
  """Human-readable disagreements between two tokenizers (and the models' output sizes)."""
  problems = []
  sv, tv = _vocab(student_tok), _vocab(teacher_tok)
  if sv != tv:
    s_inv, t_inv = {i: s for s, i in sv.items()}, {i: s for s, i in tv.items()}
    ids = sorted(set(s_inv) | set(t_inv))
    diff = [i for i in ids if s_inv.get(i) != t_inv.get(i)]
    examples = ", ".join(f"id {i}: {s_inv.get(i)!r} vs {t_inv.get(i)!r}" for i in diff[:3])
    problems.append(f"vocabulary: {len(sv)} vs {len(tv)} tokens, {len(diff)} ids differ "
                    f"({examples})")
  ss, ts = _special_map(student_tok), _special_map(teacher_tok)
  for key in sorted(set(ss) | set(ts)):
    if ss.get(key) != ts.get(key):
      problems.append(f"{key} token id: student {ss.get(key)} vs teacher {ts.get(key)}")
  if (student_vocab_size is not None and teacher_vocab_size is not None
      and student_vocab_size != teacher_vocab_size):
    problems.append(f"model output size (config vocab_size): student {student_vocab_size} vs "
                    f"teacher {teacher_vocab_size}")
  return problems


def check_compatible(student_tok, teacher_tok, student_vocab_size=None, teacher_vocab_size=None,
                     names=("student", "teacher")):
  """Raises VocabularyMismatch listing every disagreement; returns None when compatible."""
  problems = compatibility_problems(student_tok, teacher_tok, student_vocab_size,
                                    teacher_vocab_size)
  if problems:
    raise VocabularyMismatch(
        f"The {names[1]} cannot teach the {names[0]}: they do not share one vocabulary.\n  - "
        + "\n  - ".join(problems)
        + "\nOPD compares next-token distributions id by id, so both models need the same "
        "tokenizer (same ids and special tokens) and the same output size. Use a teacher from the "
        "same model family, or the EMA self-teacher (kind='ema').")


def make_teacher(kind: str, graphdef, params, *, path: str = "", tokenizer=None,
                 ema_alpha: float = 0.01, dtype=jnp.float32, abstract: bool = False,
                 **load_kw) -> Teacher:
  """The teacher for `kind` (see the module docstring). For kind="fixed", `path` is a local HF
  directory (its tokenizer files are compared with `tokenizer`, the student's), loaded with
  `load_hf(path, dtype, **load_kw)` (e.g. mesh=: born sharded; abstract: only its shapes, from
  its config.json or a preset); an empty path freezes a copy of the student's parameters."""
  if kind not in KINDS:
    raise ValueError(f"Unknown teacher kind {kind!r}; valid: {KINDS}.")
  if kind == "ema":
    if path:
      raise ValueError("kind='ema' starts from the student; use kind='fixed' for a teacher path.")
    return Teacher("ema", graphdef, params, float(ema_alpha))
  if not path:
    return Teacher("fixed", graphdef, params, 0.0)
  if abstract:
    load_kw.pop("mesh", None)
    cfg = presets.model_config(path, jnp.dtype(dtype).name, **load_kw)
    return Teacher("fixed", *nnx.split(nnx.eval_shape(lambda: Transformer(cfg))), 0.0, path)
  model = load_hf(path, dtype=dtype, **load_kw)
  if tokenizer is not None:
    try:
      teacher_tok = load_tokenizer(path)
    except Exception as e:  # pylint: disable=broad-except
      raise VocabularyMismatch(f"Cannot check the teacher at {path!r} against the student's "
                               f"tokenizer: its tokenizer does not load ({e}).") from e
    student_size = nnx.merge(graphdef, params).cfg.vocab_size
    check_compatible(tokenizer, teacher_tok, student_size, model.cfg.vocab_size)
  t_graphdef, t_params = nnx.split(model)
  return Teacher("fixed", t_graphdef, t_params, 0.0, path)
