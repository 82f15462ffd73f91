"""Prefix sources for OPD and an entropy-gated length curriculum (the 2x2 of "Decoupling KL and
Trajectories", arXiv 2605.16826).

  prefixes \\ KL   forward (full_forward)        reverse (full_reverse)
  teacher          SFT / KD on teacher samples   offline-RL-style
  student          DAgger-style on-policy SFT    OPD
and `mix` (lambda reverse + (1 - lambda) forward) in between.

Teacher prefixes: K completions per prompt are sampled from the teacher (`state.teacher`: the EMA
of the student, or a fixed model) with its privileged context, exactly the context it is scored
with; the student is then scored on those tokens after its own prompt. The OPD batch of
`train_step` lets the completion be any token sequence, so the step is unchanged. The context is
the iteration's own assembly (`Iteration.build_batch`), with no verified rollout available
(correct_solution falls back to the demonstration). CaOPD needs the student's own rollouts
(P_acc), so teacher prefixes are OPD-only.

Length curriculum: the loss sees only completion columns < L (`prompts["max_completion"]`, int32
[B], a dynamic input: no recompilation); every `every` steps the student samples completions for
held-out prompts and L grows by `increment` (up to `max_len`) only while their mean token
entropy is >= `h_min`. Decisions are stored in WORKDIR/curriculum.json and L is a function of
the step, so a resumed run replays them exactly.

Config (configs/opd.py): prefix_source = "student" | "teacher"; curriculum = {enabled, start,
increment, max_len, every, h_min, eval_prompts}.
"""

import dataclasses
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from caopd_jax.diagnostics.token_stats import entropy
from caopd_jax.objectives.core import token_mean
from caopd_jax.sampling import SampleOutput, sample
from caopd_jax.verifiers import exact_match_tokens

PREFIX_SOURCES = ("student", "teacher")
log = logging.getLogger(__name__)


def teacher_context(build_batch, prompts, num_samples: int):
  """(ctx, ctx_valid) [B*K, Wt]: each rollout row's teacher context as the iteration assembles
  it (a one-token dummy completion, cut off again: the completion is the batch's last C
  columns). No rollout is verified, so correct_solution contexts hold the demonstration."""
  b = prompts["student_prompt"].shape[0]
  n = b * num_samples
  zeros = jnp.zeros((n, 1), jnp.float32)
  dummy = SampleOutput(jnp.zeros((n, 1), jnp.int32), jnp.zeros((n, 1), bool), zeros, zeros,
                       jnp.zeros((n,), jnp.int32))
  batch, _ = build_batch(prompts, dummy, jnp.zeros((b, num_samples), bool))
  c = batch["completion_mask"].shape[1]
  return batch["teacher_tokens"][:, :-c], batch["teacher_valid"][:, :-c]


def teacher_rollouts(it, teacher_graphdef, teacher_params, prompts, key, *, num_samples, sampling,
                     verifier=exact_match_tokens):
  """(OPD batch on teacher-sampled completions, metrics, samples, correct [B, K])."""
  b = prompts["student_prompt"].shape[0]
  ctx, ctx_valid = teacher_context(it.build_batch, prompts, num_samples)
  samples = sample(teacher_graphdef, teacher_params, ctx, ctx_valid, key, sampling)
  correct = verifier(samples.tokens, samples.mask,
                     jnp.repeat(prompts["target"], num_samples, axis=0)).reshape(b, num_samples)
  batch, metrics = it.build_batch(prompts, samples, jnp.zeros_like(correct))
  p = jnp.mean(correct.astype(jnp.float32), -1)
  metrics["rollout/accuracy"] = jnp.mean(p)   # of the teacher's samples
  metrics["rollout/p_acc_std"] = jnp.std(p)
  return batch, metrics, samples, correct


def truncate_completion(batch, max_completion, num_samples: int):
  """Masks completion columns >= max_completion (int32 [B], one per prompt) out of the loss."""
  c = batch["completion_mask"].shape[1]
  limit = jnp.repeat(max_completion, num_samples, axis=0)[:, None]
  return {**batch, "completion_mask": batch["completion_mask"] & (jnp.arange(c)[None, :] < limit)}


def make_prefix_iteration(it, opd_step, teacher_graphdef, *, num_samples: int, sampling,
                          prefix_source: str = "student", caopd: bool = False,
                          verifier=exact_match_tokens):
  """`iteration(state, prompts) -> (state, metrics)` like `Iteration.iteration` (jittable
  verifier path), with the completions sampled by `prefix_source` and, when prompts hold
  `max_completion`, the loss cut to that many completion tokens."""
  if prefix_source not in PREFIX_SOURCES:
    raise ValueError(f"Unknown prefix_source {prefix_source!r}; valid: {PREFIX_SOURCES}.")
  if prefix_source == "teacher" and caopd:
    raise ValueError("prefix_source='teacher' is OPD-only (CaOPD's P_acc needs student rollouts).")

  def iteration(state, prompts):
    key, sub = jax.random.split(jax.random.wrap_key_data(state.rng))
    state = state.replace(rng=jax.random.key_data(key))
    if prefix_source == "student":
      r = it.rollout(state, prompts, sub)
      batch, metrics = it.build_batch(prompts, r.samples, r.correct)
    else:
      batch, metrics, _, _ = teacher_rollouts(it, teacher_graphdef, state.teacher, prompts, sub,
                                              num_samples=num_samples, sampling=sampling,
                                              verifier=verifier)
    if "max_completion" in prompts:
      batch = truncate_completion(batch, prompts["max_completion"], num_samples)
      metrics["curriculum/max_completion"] = jnp.mean(prompts["max_completion"].astype(jnp.float32))
      metrics["curriculum/trained_tokens"] = jnp.mean(jnp.sum(batch["completion_mask"], -1)
                                                      .astype(jnp.float32))
    state, step_metrics = opd_step(state, batch)
    return state, {**step_metrics, **metrics}

  return iteration


# ---------------------------------------------------------------------------------------------
# Held-out entropy and the length curriculum
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"))
def heldout_stats(graphdef, params, prompt, prompt_valid, key, max_len, *, sampling):
  """(mean token entropy of the student's own completions, mean completion length) on held-out
  prompts [B, P]; the entropy counts completion tokens at columns < max_len."""
  out = sample(graphdef, params, prompt, prompt_valid, key, sampling)
  n = out.tokens.shape[1]
  model = nnx.merge(graphdef, params)
  logits = model(jnp.concatenate([prompt, out.tokens], 1),
                 valid=jnp.concatenate([prompt_valid, out.mask], 1))[:, -n - 1:-1]
  h = entropy(jax.nn.log_softmax(logits.astype(jnp.float32), -1))
  mask = out.mask & (jnp.arange(n)[None, :] < max_len)
  return token_mean(h, mask), jnp.mean(out.lengths.astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class LengthCurriculum:
  """Entropy-gated length curriculum: start at `start` completion tokens; every `every` steps,
  if held-out mean token entropy >= h_min, grow by `increment` up to `max_len`."""
  start: int
  increment: int
  max_len: int
  every: int
  h_min: float

  @classmethod
  def from_config(cls, c, max_len):
    return cls(start=c.start, increment=c.increment, max_len=c.get("max_len") or max_len,
               every=c.every, h_min=c.h_min)

  def next_length(self, length: int, entropy_value: float) -> int:
    if entropy_value >= self.h_min:
      return min(self.max_len, length + self.increment)
    return length

  @staticmethod
  def length_at(history, step: int, start: int) -> int:
    """The length in force at `step` (the last decision taken at or before it)."""
    length = start
    for h in history:
      if h["step"] <= step:
        length = h["max_completion"]
    return length


def train_with_curriculum(curriculum: LengthCurriculum, *, workdir, state, step_fn, get_batch,
                          heldout_fn, total_steps, train_loop, **loop_kwargs):
  """Runs `train_loop` in segments of `curriculum.every` steps, with batches carrying
  max_completion = the length in force; between segments `heldout_fn(params) -> (entropy,
  mean length)` gates the next length. Returns the final state (a checkpoint at total_steps
  is left in WORKDIR/checkpoints, so a later `train_loop(total_steps=...)` returns at once)."""
  path = os.path.join(workdir, "curriculum.json")
  history = []
  if os.path.exists(path):
    with open(path) as f:
      history = json.load(f)
  start = 0
  while start < total_steps:
    end = min(total_steps, start + curriculum.every)
    length = LengthCurriculum.length_at(history, start, curriculum.start)

    def batch_fn(step, length=length):
      b = get_batch(step)
      rows = np.shape(b["student_prompt"])[0]
      return {**b, "max_completion": np.full((rows,), length, np.int32)}

    state = train_loop(workdir=workdir, state=state, step_fn=step_fn, get_batch=batch_fn,
                       total_steps=end, **loop_kwargs)
    if end < total_steps and not any(h["step"] == end for h in history):
      ent, mean_len = (float(x) for x in heldout_fn(state.params, end, length))
      new = curriculum.next_length(length, ent)
      history.append({"step": end, "entropy": ent, "mean_length": mean_len,
                      "max_completion": new})
      log.info("curriculum: step %d held-out entropy %.3f -> max_completion %d", end, ent, new)
      if jax.process_index() == 0:
        with open(path + ".tmp", "w") as f:
          json.dump(history, f, indent=1)
        os.replace(path + ".tmp", path)
    start = end
  return state


def configure(config, it, opd_step, graphdef, sampling):
  """The job's iteration for config.prefix_source / config.curriculum (unchanged by default)."""
  source = config.get("prefix_source", "student")
  cur = config.get("curriculum")
  if source == "student" and not (cur is not None and cur.get("enabled", False)):
    return it
  return it._replace(iteration=make_prefix_iteration(
      it, opd_step, graphdef, num_samples=config.num_samples, sampling=sampling,
      prefix_source=source, caopd=config.caopd))


def curriculum_enabled(config) -> bool:
  cur = config.get("curriculum")
  return cur is not None and bool(cur.get("enabled", False))


def run_curriculum(config, workdir, state, it, get_batch, graphdef, heldout_records, encode,
                   sampling, train_loop, **loop_kwargs):
  """Trains config.steps steps under the length curriculum (see `train_with_curriculum`).
  heldout_records: held-out questions (the first curriculum.eval_prompts are used); encode:
  records -> `encode_prompts` arrays (student_prompt/student_valid are used)."""
  cur = LengthCurriculum.from_config(config.curriculum, sampling.max_new_tokens)
  n = config.curriculum.get("eval_prompts", 32)
  p = encode(list(heldout_records)[:n])
  prompt, valid = jnp.asarray(p["student_prompt"]), jnp.asarray(p["student_valid"])

  def heldout_fn(params, step, length):
    key = jax.random.fold_in(jax.random.key(config.seed + 7), step)
    return jax.device_get(heldout_stats(graphdef, params, prompt, valid, key, length,
                                        sampling=sampling))

  return train_with_curriculum(cur, workdir=workdir, state=state, step_fn=it.iteration,
                               get_batch=get_batch, heldout_fn=heldout_fn,
                               total_steps=config.steps, train_loop=train_loop, **loop_kwargs)
