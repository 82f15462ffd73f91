"""One OPD / CaOPD iteration on token ids: rollouts -> verification -> P_acc -> target
replacement -> teacher scoring -> loss -> update.

`rollout(state, prompts, key)` and `update(state, prompts, samples, correct)` are pure; for tasks
with a jittable verifier `iteration(state, prompts)` fuses both into one compiled function. For
text verifiers (real data) the caller decodes the rollouts on the host between the two halves.

OPD (SDFT-style self-distillation, Shenfeld et al. 2026): the student samples K completions per
prompt; the teacher (EMA of the student) sees a privileged context (a demonstration, or a
verified correct rollout) whose confidence reads 1.00; the student is distilled on its own
completions. CaOPD (Zhang et al. 2026, arXiv 2604.16830) additionally writes P_acc into the
student completion, the teacher's context confidence and a teacher note; no importance weights
are applied to the modified trajectories.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from caopd_jax import caopd as ops
from caopd_jax.prompts import MODES, encode_constants
from caopd_jax.rollouts import rollouts
from caopd_jax.verifiers import exact_match_tokens


class Iteration(NamedTuple):
  rollout: Callable  # (state, prompts, key) -> Rollouts
  build_batch: Callable  # (prompts, samples, correct) -> (OPD batch, metrics)
  update: Callable  # (state, prompts, samples, correct) -> (state, metrics)
  iteration: Callable  # (state, prompts) -> (state, metrics): everything in one graph


def _pad_to(x, width, value):
  return jnp.pad(x, [(0, 0), (0, width - x.shape[1])], constant_values=value)


def make_iteration(graphdef, opd_step, tokenizer, templates, *, num_samples: int, sampling,
                   caopd: bool, mode: str = "demo", verifier=exact_match_tokens,
                   strip_text: str = " \n"):
  """The iteration's pure functions for the given static settings (see `Iteration`)."""
  if mode not in MODES:
    raise ValueError(f"Unknown teacher context {mode!r}; valid: {MODES}.")
  k_total = num_samples
  (suffix_tab, suffix_len), (value_tab, value_len) = ops.confidence_tables(
      tokenizer, k_total, templates.confidence_prefix)
  consts = encode_constants(tokenizer, templates, mode)
  marker = tuple(consts.pop("marker"))
  strip_ids = tuple(tokenizer.encode(strip_text)) if strip_text else ()
  stop_ids = tuple(sampling.stop_ids)

  def rollout(state, prompts, key):
    return rollouts(graphdef, state.params, prompts["student_prompt"], prompts["student_valid"],
                    prompts["target"], key, sampling, k_total, verifier)

  def build_batch(prompts, samples, correct):
    """The OPD batch (see train_step) and rollout metrics, from K rollouts per prompt."""
    b = prompts["student_prompt"].shape[0]
    rep = lambda x: jnp.repeat(x, k_total, axis=0)
    bcast = lambda seg: (jnp.broadcast_to(seg[0], (b, seg[0].shape[1])),
                         jnp.broadcast_to(seg[1], (b, seg[1].shape[1])))
    p_acc = jnp.mean(correct.astype(jnp.float32), axis=-1)
    k = ops.p_acc_index(p_acc, k_total)
    width = samples.tokens.shape[1] + suffix_tab.shape[1]
    if caopd:  # (a) the student completion ends with "Confidence: {P_acc}" EOS
      comp, comp_valid = ops.replace_completion_confidence(
          samples.tokens, samples.mask, rep(k), marker, suffix_tab, suffix_len, stop_ids,
          strip_ids, sampling.pad_id)
    else:
      comp = _pad_to(samples.tokens, width, sampling.pad_id)
      comp_valid = _pad_to(samples.mask, width, False)

    solution = (prompts["demo"], prompts["demo_valid"])
    metrics = {}
    if mode == "correct_solution":  # first verified rollout of the prompt, else the demo
      c = samples.tokens.shape[1]
      cut = ops.completion_cut(samples.tokens, samples.mask, marker, stop_ids, strip_ids)
      first = jnp.argmax(correct, axis=-1)
      rows = jnp.arange(b) * k_total + first
      sol = samples.tokens[rows]
      sol_valid = jnp.arange(c)[None, :] < cut[rows][:, None]
      has = jnp.any(correct, axis=-1)[:, None]
      w = max(c, solution[0].shape[1])
      solution = (jnp.where(has, _pad_to(sol, w, sampling.pad_id), _pad_to(solution[0], w, sampling.pad_id)),
                  jnp.where(has, _pad_to(sol_valid, w, False), _pad_to(solution[1], w, False)))
      metrics["rollout/solution_from_rollout"] = jnp.mean(has.astype(jnp.float32))

    value = k if caopd else jnp.full((b,), k_total, jnp.int32)  # (b) the context's confidence
    segments = [(prompts["head"], prompts["head_valid"]), solution, bcast(consts["confidence_prefix"]),
                ops.table_segment(value_tab, value_len, value)]
    if caopd:  # (c) the teacher note
      segments += [bcast(consts["note_pre"]), ops.table_segment(value_tab, value_len, k),
                   bcast(consts["note_post"])]
    segments.append(bcast(consts["tail"]))
    ctx, ctx_valid = ops.fill_segments(segments)

    batch = {
        "student_tokens": jnp.concatenate([rep(prompts["student_prompt"]), comp], axis=1),
        "student_valid": jnp.concatenate([rep(prompts["student_valid"]), comp_valid], axis=1),
        "teacher_tokens": jnp.concatenate([rep(ctx), comp], axis=1),
        "teacher_valid": jnp.concatenate([rep(ctx_valid), comp_valid], axis=1),
        "completion_mask": comp_valid,
    }
    metrics["rollout/accuracy"] = jnp.mean(correct.astype(jnp.float32))
    metrics["rollout/p_acc_std"] = jnp.std(p_acc)
    metrics["rollout/length"] = jnp.mean(samples.lengths.astype(jnp.float32))
    return batch, metrics

  def update(state, prompts, samples, correct):
    batch, metrics = build_batch(prompts, samples, correct)
    state, step_metrics = opd_step(state, batch)
    return state, {**step_metrics, **metrics}

  def iteration(state, prompts):
    key, sub = jax.random.split(jax.random.wrap_key_data(state.rng))
    state = state.replace(rng=jax.random.key_data(key))
    r = rollout(state, prompts, sub)
    return update(state, prompts, r.samples, r.correct)

  return Iteration(rollout, build_batch, update, iteration)
