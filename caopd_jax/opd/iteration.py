"""One OPD / CaOPD iteration as one pure function, compiled into one graph:
rollouts -> verification -> P_acc -> OPD batch -> [CaOPD transform] -> teacher scoring -> update.

OPD (SDFT-style self-distillation, Shenfeld et al. 2026): the student samples K completions per
prompt; the teacher (an EMA of the student, or a fixed model; caopd_jax.opd.teachers) sees a
privileged context (caopd_jax.contexts) that states confidence 1.00; the student is distilled on
its own completions with any registered objective (caopd_jax.train.step). CaOPD (Zhang et al.
2026, arXiv 2604.16830) writes P_acc = (#verified)/K into the completion, the context and a
teacher note first (`caopd.transform`). Host verifiers run inside the graph through
`jax.pure_callback` (caopd_jax.opd.verify), so train loops jit and donate the whole iteration.

prefix_source "teacher" (OPD only) samples the completions from the teacher with its context,
scored on the student's prompt: the "teacher prefixes" row of the 2x2 of "Decoupling KL and
Trajectories" (arXiv 2605.16826). prompts["max_completion"] (int32 [B], the length curriculum,
caopd_jax.opd.curriculum) keeps only that many completion tokens in the loss. loss_on="answer"
keeps only each completion's answer (before its confidence marker, `Verdict.answer_len`): an
ablation that tells what training the stated confidence costs the answer.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from caopd_jax.contexts import TeacherContext
from caopd_jax.opd import batch as opd_batch, caopd
from caopd_jax.opd.prompts import Constants
from caopd_jax.sampling import SamplingConfig, sample
from caopd_jax.sharding import BATCH, constrain
from caopd_jax.train.step import model_state

PREFIX_SOURCES = ("student", "teacher")
LOSS_ON = ("completion", "answer")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (jit)
class Iteration:
  graphdef: Any
  teacher_graphdef: Any
  opd_step: Callable  # (state, batch) -> (state, metrics)
  verify: Callable  # (prompts, samples) -> Verdict
  context: TeacherContext
  consts: Constants
  num_samples: int
  sampling: SamplingConfig
  caopd: bool = False
  prefix_source: str = "student"
  teacher_shares_base: bool = False  # the teacher's parameters complete state.frozen (LoRA)
  loss_on: str = "completion"  # or "answer": only the tokens before the verifier's cut count

  def __post_init__(self):
    if self.prefix_source not in PREFIX_SOURCES:
      raise ValueError(f"Unknown prefix_source {self.prefix_source!r}; valid: {PREFIX_SOURCES}.")
    if self.loss_on not in LOSS_ON:
      raise ValueError(f"Unknown loss_on {self.loss_on!r}; valid: {LOSS_ON}.")
    if self.caopd and self.prefix_source != "student":
      raise ValueError("prefix_source='teacher' is OPD-only (CaOPD's P_acc needs student rollouts).")

  def rollout(self, state, prompts, key):
    """(samples [B*K, C], Verdict): K completions per prompt from the prefix source, judged.
    The B*K rows are declared split over the batch axes (B alone may not divide them)."""
    rep = lambda x: constrain(jnp.repeat(x, self.num_samples, axis=0), (BATCH, None))
    student = (prompts["student_prompt"], prompts["student_valid"])
    if self.prefix_source == "student":
      graphdef, params = self.graphdef, model_state(state.params, state.frozen)
      ids, valid = student
    else:
      ctx, _ = opd_batch.teacher_context(prompts, None, self.context, self.consts, self.num_samples)
      graphdef = self.teacher_graphdef
      params = model_state(state.teacher, state.frozen if self.teacher_shares_base else None)
      ids, valid = opd_batch.context_tokens(student, ctx)
    samples = sample(graphdef, params, rep(ids), rep(valid), key, self.sampling)
    return samples, self.verify(prompts, samples)

  def batch(self, prompts, samples, verdict):
    """(train-step batch, rollout metrics)."""
    on_policy = self.prefix_source == "student"
    d, metrics = opd_batch.draft(prompts, samples, verdict if on_policy else None, self.context,
                                 self.consts, self.num_samples)
    if self.caopd:
      d = caopd.transform(d, verdict, self.consts, self.num_samples, self.sampling.pad_id)
    batch = opd_batch.assemble(d, self.num_samples)
    rewards = verdict.correct.astype(jnp.float32)  # [B, K]: the verifier's, for GRPO
    batch["rewards"] = constrain(rewards.reshape(-1), (BATCH,))
    batch["group_rewards"] = constrain(jnp.repeat(rewards, self.num_samples, axis=0), (BATCH, None))
    p_acc = jnp.mean(verdict.correct.astype(jnp.float32), axis=-1)
    metrics.update(verdict.metrics)
    metrics["rollout/accuracy"] = jnp.mean(p_acc)  # of the teacher's samples with teacher prefixes
    metrics["rollout/p_acc_std"] = jnp.std(p_acc)
    metrics["rollout/length"] = jnp.mean(samples.lengths.astype(jnp.float32))
    if "truncated" in prompts:
      metrics["data/truncated_prompts"] = jnp.mean(prompts["truncated"].astype(jnp.float32))
    if self.loss_on == "answer":  # the answer part of every completion, CaOPD's spliced or not
      c = batch["completion_mask"].shape[1]
      batch["completion_mask"] = batch["completion_mask"] & (
          jnp.arange(c)[None, :] < verdict.answer_len[:, None])
    if "max_completion" in prompts:
      c = batch["completion_mask"].shape[1]
      limit = jnp.repeat(prompts["max_completion"], self.num_samples, axis=0)[:, None]
      batch["completion_mask"] = batch["completion_mask"] & (jnp.arange(c)[None, :] < limit)
      metrics["curriculum/max_completion"] = jnp.mean(prompts["max_completion"].astype(jnp.float32))
      metrics["curriculum/trained_tokens"] = jnp.mean(
          jnp.sum(batch["completion_mask"], -1).astype(jnp.float32))
    return batch, metrics

  def __call__(self, state, prompts):
    key, sub = jax.random.split(jax.random.wrap_key_data(state.rng))
    state = state.replace(rng=jax.random.key_data(key))
    samples, verdict = self.rollout(state, prompts, sub)
    batch, metrics = self.batch(prompts, samples, verdict)
    state, step_metrics = self.opd_step(state, batch)
    return state, {**step_metrics, **metrics}
