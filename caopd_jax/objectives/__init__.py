"""The OPD estimator registry.

  loss, metrics = compute(name, student_logits, teacher_logits, tokens, mask, **hparams)

student_logits[b, t] and teacher_logits[b, t] ([B, T, V], float) predict tokens[b, t]; mask [B, T]
marks the completion tokens that count. grad(loss) w.r.t. student_logits is the estimator.
metrics: loss, kl_reverse (mean full-vocabulary KL_t), log_ratio (mean sampled r_t), num_tokens,
plus objective extras (advantage, baseline, kl_forward, is_weight, ratio, clip_fraction) — float32 scalars.
Hyperparameters: `OBJECTIVES[name].hparams` (shared ones in `COMMON_HPARAMS`). For long
sequences with large vocabularies use `chunked_objective` (hidden states + output kernels).
"""
from caopd_jax.objectives import analytic, grpo, sampled
from caopd_jax.objectives.base import COMMON_HPARAMS, Objective
from caopd_jax.objectives.chunked import chunked_objective
from caopd_jax.objectives.core import REDUCTIONS

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    sampled.TOKEN_SAMPLED, sampled.SEQUENCE, sampled.DISCOUNTED, sampled.VOPD,
    analytic.FULL_REVERSE, analytic.FULL_FORWARD, analytic.GJSD, analytic.TOPK_REVERSE,
    analytic.MIX, grpo.GRPO)}


def get_objective(name) -> Objective:
  """The registered objective; unknown names raise ValueError listing the valid ones."""
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; valid: {sorted(OBJECTIVES)}")
  return OBJECTIVES[name]


def compute(name, student_logits, teacher_logits, tokens, mask, **hparams):
  """(loss, metrics) of objective `name`; unknown hparams raise ValueError listing valid ones."""
  return get_objective(name)(student_logits, teacher_logits, tokens, mask, **hparams)


__all__ = ["OBJECTIVES", "COMMON_HPARAMS", "REDUCTIONS", "Objective", "get_objective", "compute",
           "chunked_objective"]
