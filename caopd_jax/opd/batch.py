"""The OPD batch from K rollouts per prompt, built as a `Draft` and then assembled.

  draft(prompts, samples, verdict, context, consts, K) -> (Draft, metrics)
  caopd.transform(draft, ...)                           (CaOPD only)
  assemble(draft, K) -> batch                           (the format of caopd_jax.train.step)

A `Draft` keeps the teacher context as named per-prompt segments (head, solution,
confidence_prefix, value, tail; caopd_jax.contexts) so that a transform can replace one of them;
`assemble` repeats per-prompt parts K times and concatenates. OPD: the completion is the sampled
tokens, the context states "1.00" and the sampler's log-probs travel along (importance weights).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from caopd_jax.contexts.base import pad_to
from caopd_jax.opd.caopd import broadcast_rows, table_segment
from caopd_jax.sharding import BATCH, constrain


class Draft(NamedTuple):
  student_prompt: tuple  # (ids, valid) [B, Ws], left-padded
  completion: tuple  # (ids, valid) [N, C]; row b*K + k is rollout k of prompt b
  context: dict | None  # name -> (ids, valid) [B, Li], in order; None: the student prompt
  behavior_logprobs: jax.Array | None  # float32 [N, C]: the sampler's log-probs (OPD only)


def teacher_context(prompts, verdict, context, consts, num_samples: int):
  """(segments {name: (ids, valid) [B, Li]} or None, metrics): the OPD teacher context of each
  prompt; None when the teacher sees the student prompt. `verdict` None: no verified rollouts."""
  if context.sees_student_prompt:
    return None, {}
  b = prompts["student_prompt"].shape[0]
  solution, metrics = context.solution(prompts, verdict, num_samples)
  return {"head": (prompts["head"], prompts["head_valid"]), "solution": solution,
          "confidence_prefix": broadcast_rows(consts.confidence_prefix, b),
          "value": table_segment(*consts.values, jnp.full((b,), num_samples, jnp.int32)),
          "tail": broadcast_rows(consts.tail, b)}, metrics


def draft(prompts, samples, verdict, context, consts, num_samples: int):
  """(the OPD Draft, context metrics) of `samples` (prompt-major, K per prompt)."""
  ctx, metrics = teacher_context(prompts, verdict, context, consts, num_samples)
  student = (prompts["student_prompt"], prompts["student_valid"])
  return Draft(student, (samples.tokens, samples.mask), ctx, samples.logprobs), metrics


def context_tokens(student_prompt, context):
  """(ids, valid) [B, Wt] of an assembled teacher context (`teacher_context`'s segments)."""
  if context is None:
    return student_prompt
  return (jnp.concatenate([jnp.asarray(s[0], jnp.int32) for s in context.values()], axis=1),
          jnp.concatenate([jnp.asarray(s[1], bool) for s in context.values()], axis=1))


def assemble(d: Draft, num_samples: int):
  """The train-step batch: both sequences end with the (same) completion; its B*K rows are
  declared split over the batch axes."""
  rep = lambda x: jnp.repeat(x, num_samples, axis=0)
  comp, comp_valid = d.completion
  ctx, ctx_valid = context_tokens(d.student_prompt, d.context)
  batch = {
      "student_tokens": jnp.concatenate([rep(d.student_prompt[0]), comp], axis=1),
      "student_valid": jnp.concatenate([rep(d.student_prompt[1]), comp_valid], axis=1),
      "teacher_tokens": jnp.concatenate([rep(ctx), comp], axis=1),
      "teacher_valid": jnp.concatenate([rep(ctx_valid), comp_valid], axis=1),
      "completion_mask": comp_valid,
  }
  if d.behavior_logprobs is not None:
    batch["behavior_logprobs"] = pad_to(d.behavior_logprobs, comp.shape[1], 0.0)
  return {k: constrain(v, (BATCH, None)) for k, v in batch.items()}
