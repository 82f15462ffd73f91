"""`Objective`: one OPD loss = per-token statistics from logits + a combination step.

  loss, metrics = objective(student_logits, teacher_logits, tokens, mask, **hparams)
               == objective.combine(objective.token_stats(student_logits, teacher_logits, tokens,
                                                          **hparams), tokens, mask, **hparams)

`token_stats` is the only step that sees the vocabulary axis ([B, T, V] -> dict of [B, T]) and is
position-wise, so `chunked.py` can evaluate it chunk by chunk; `combine` does everything that
couples positions (masks, returns, importance weights, reductions) on [B, T] arrays.
Teacher logits are always stop-gradiented.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from caopd_jax.objectives import core, stats as st

# Hyperparameters every objective accepts, with their defaults.
COMMON_HPARAMS = {
    "reduction": "token_mean",        # see core.reduce_loss
    "temperature": 1.0,               # divides both models' logits
    "special_token_ids": (),          # first occurrence per row is masked out
    "skip_first": 0,                  # first n mask-valid tokens per row are masked out
    "behavior_logprobs": None,        # [B, T] log mu(y_t) of the sampler -> importance weights
    "is_clip": None,                  # truncation of the importance weights (None: no truncation)
}


@dataclasses.dataclass(frozen=True)
class Objective:
  """name; stats_fn(logp, logq, tokens, **own) -> dict of [B, T] (must hold logp_y, logq_y, kl);
  loss_fn(stats, mask, **own) -> (per-token loss [B, T], extra per-token metrics);
  defaults: the objective's own hyperparameters as ((name, default), ...);
  batch_inputs: ((hparam, batch key), ...) the OPD train step fills from the batch when present
  (per-row data such as GRPO's rewards)."""
  name: str
  stats_fn: Callable[..., dict]
  loss_fn: Callable[..., Any]
  defaults: tuple = ()
  doc: str = ""
  batch_inputs: tuple = ()

  def __post_init__(self):
    object.__setattr__(self, "__doc__", self.doc)   # help(OBJECTIVES[name]) shows the formula

  @property
  def hparams(self):
    return {**COMMON_HPARAMS, **dict(self.defaults)}

  def resolve(self, hparams):
    """Defaults filled in; unknown names or reductions raise ValueError listing the valid ones."""
    valid = self.hparams
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
      raise ValueError(f"objective {self.name!r}: unknown hparams {unknown}; valid: {sorted(valid)}")
    hp = {**valid, **hparams}
    if hp["reduction"] not in core.REDUCTIONS:
      raise ValueError(f"unknown reduction {hp['reduction']!r}; valid: {core.REDUCTIONS}")
    return hp

  def own(self, hp):
    return {k: hp[k] for k, _ in self.defaults}

  def token_stats(self, student_logits, teacher_logits, tokens, **hparams):
    """Per-token statistics (dict of float32 [B, T]) from aligned logits [B, T, V]."""
    hp = self.resolve(hparams)
    logp = st.log_probs(student_logits, hp["temperature"])
    logq = jax.lax.stop_gradient(st.log_probs(teacher_logits, hp["temperature"]))
    return self.stats_fn(logp, logq, tokens, **self.own(hp))

  def combine(self, stats, tokens, mask, denominator=None, **hparams):
    """(loss, metrics) from per-token statistics: mask, importance weights, reduction
    (divided by `denominator` when given: see core.denominator)."""
    hp = self.resolve(hparams)
    m = core.effective_mask(mask, tokens, hp["special_token_ids"], hp["skip_first"])
    w = core.importance_weights(stats["logp_y"], m, hp["behavior_logprobs"], hp["is_clip"])
    per_token, extra = self.loss_fn(stats, m, **self.own(hp))
    loss = core.reduce_loss(w * per_token, m, hp["reduction"], denominator)
    sg = jax.lax.stop_gradient
    log_ratio = sg(stats["logp_y"] - stats["logq_y"])
    metrics = {
        "loss": sg(loss).astype(jnp.float32),
        "kl_reverse": core.token_mean(sg(stats["kl"]), m),
        "log_ratio": core.token_mean(log_ratio, m),
        "num_tokens": jnp.sum(m.astype(jnp.float32)),
    }
    metrics.update({k: core.token_mean(sg(v), m) for k, v in extra.items()})
    if hp["behavior_logprobs"] is not None:
      metrics["is_weight"] = core.token_mean(w, m)
    return loss, metrics

  def __call__(self, student_logits, teacher_logits, tokens, mask, denominator=None, **hparams):
    stats = self.token_stats(student_logits, teacher_logits, tokens, **hparams)
    return self.combine(stats, tokens, mask, denominator, **hparams)
