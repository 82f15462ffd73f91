"""One OPD / CaOPD iteration on token ids: rollouts -> verification -> P_acc -> target
replacement -> teacher scoring -> loss -> update.

`rollout(state, prompts, key)` and `update(state, prompts, samples, correct)` are pure; for tasks
with a jittable verifier `iteration(state, prompts)` fuses both into one compiled function. For
text verifiers (real data) pass `text_verifier=`: rollouts are decoded on the host, verified
there and the CaOPD cut is found on decoded-text offsets (`caopd.host_replace_completion`):
  two halves:  samples = sample(state, prompts, key)               # jittable
               correct, edits = verify(prompts, samples)           # host (numpy)
               state, metrics = update(state, prompts, samples, correct, edits)   # jittable
  one graph:   iteration(state, prompts) calls the same host code through `jax.pure_callback`,
               so a train loop can jit (and donate) it like the embedded-task iteration.
Real-data prompts carry `row` (int32 [B], the record id the text verifier looks up) and the
chat template's row-constant segments are injected with `constants=` (caopd_jax.chat_prompts).

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
import numpy as np

from caopd_jax import caopd as ops
from caopd_jax.prompts import MODES, encode_constants
from caopd_jax.rollouts import Rollouts, rollouts
from caopd_jax.sampling import sample as sample_tokens
from caopd_jax.verifiers import exact_match_tokens


class Iteration(NamedTuple):
  rollout: Callable  # (state, prompts, key) -> Rollouts
  build_batch: Callable  # (prompts, samples, correct[, edits]) -> (OPD batch, metrics)
  update: Callable  # (state, prompts, samples, correct[, edits]) -> (state, metrics)
  iteration: Callable  # (state, prompts) -> (state, metrics): everything in one graph
  sample: Callable | None = None  # (state, prompts, key) -> SampleOutput: K per prompt, unverified
  verify: Callable | None = None  # host: (prompts, samples) -> (correct [B, K], edits); text path


def _pad_to(x, width, value):
  return jnp.pad(x, [(0, 0), (0, width - x.shape[1])], constant_values=value)


def make_iteration(graphdef, opd_step, tokenizer, templates, *, num_samples: int, sampling,
                   caopd: bool, mode: str = "demo", verifier=exact_match_tokens,
                   strip_text: str = " \n", constants=None, text_verifier=None,
                   marker_text: str = "Confidence:", last_marker: bool = True,
                   edit_slack: int = 8, vocab_size: int | None = None):
  """The iteration's pure functions for the given static settings (see `Iteration`).

  constants: row-constant teacher segments {confidence_prefix, note_pre, note_post, tail[,
    marker]} as (ids [1, L], valid [1, L]) (default: `prompts.encode_constants`).
  text_verifier: `(row_id, text) -> bool` run on the host on each decoded rollout; switches on the
    host-verified path (`sample`, `verify`, and `update(..., edits)`; `iteration` and
    `rollout` call the host code through `jax.pure_callback`).
  marker_text / last_marker: the host cut (default: at the LAST case-insensitive "Confidence:",
    consistent with `calibration.parse_confidence`; the released code cuts at the first).
  edit_slack: extra columns for re-tokenised fragments (completion width = max_new_tokens +
    suffix + slack); vocab_size: the model's (padded) vocabulary, for the host byte table.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown teacher context {mode!r}; valid: {MODES}.")
  k_total = num_samples
  (suffix_tab, suffix_len), (value_tab, value_len) = ops.confidence_tables(
      tokenizer, k_total, templates.confidence_prefix)
  if constants is None:
    constants = encode_constants(tokenizer, templates, mode)
  consts = dict(constants)
  missing = {"confidence_prefix", "note_pre", "note_post", "tail"} - set(consts)
  if missing:
    raise ValueError(f"constants lack segments {sorted(missing)}.")
  marker = tuple(consts.pop("marker", None) or tokenizer.encode(templates.confidence_prefix))
  strip_ids = tuple(tokenizer.encode(strip_text)) if strip_text else ()
  stop_ids = tuple(sampling.stop_ids)

  def rollout(state, prompts, key):
    return rollouts(graphdef, state.params, prompts["student_prompt"], prompts["student_valid"],
                    prompts["target"], key, sampling, k_total, verifier)

  def build_batch(prompts, samples, correct, edits=None):
    """The OPD batch (see train_step) and rollout metrics, from K rollouts per prompt.

    edits: host-side replacement (`verify`): {tokens, valid [N, W], answer_len [N], found,
    fallback, truncated [N]}; used instead of the in-graph marker search when given."""
    b = prompts["student_prompt"].shape[0]
    rep = lambda x: jnp.repeat(x, k_total, axis=0)
    bcast = lambda seg: (jnp.broadcast_to(seg[0], (b, seg[0].shape[1])),
                         jnp.broadcast_to(seg[1], (b, seg[1].shape[1])))
    p_acc = jnp.mean(correct.astype(jnp.float32), axis=-1)
    k = ops.p_acc_index(p_acc, k_total)
    width = samples.tokens.shape[1] + suffix_tab.shape[1]
    if edits is not None:
      width = edits["tokens"].shape[1]
    if caopd and edits is not None:  # (a), cut on the host
      comp, comp_valid = edits["tokens"], edits["valid"]
    elif caopd:  # (a) the student completion ends with "Confidence: {P_acc}" EOS
      comp, comp_valid = ops.replace_completion_confidence(
          samples.tokens, samples.mask, rep(k), marker, suffix_tab, suffix_len, stop_ids,
          strip_ids, sampling.pad_id)
    else:
      comp = _pad_to(samples.tokens, width, sampling.pad_id)
      comp_valid = _pad_to(samples.mask, width, False)

    solution = (prompts["demo"], prompts["demo_valid"])
    metrics = {}
    if mode == "correct_solution":  # first verified rollout of the prompt, else the demo
      if edits is not None:  # its answer part as cut on the host
        src, c, cut = edits["tokens"], edits["tokens"].shape[1], edits["answer_len"]
      else:
        src, c = samples.tokens, samples.tokens.shape[1]
        cut = ops.completion_cut(samples.tokens, samples.mask, marker, stop_ids, strip_ids)
      first = jnp.argmax(correct, axis=-1)
      rows = jnp.arange(b) * k_total + first
      sol = src[rows]
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
    if not caopd:  # the sampler's log-probs, for optional importance weights (train_step)
      batch["behavior_logprobs"] = _pad_to(samples.logprobs, comp.shape[1], 0.0)
    metrics["rollout/accuracy"] = jnp.mean(correct.astype(jnp.float32))
    metrics["rollout/p_acc_std"] = jnp.std(p_acc)
    metrics["rollout/length"] = jnp.mean(samples.lengths.astype(jnp.float32))
    if edits is not None:  # format adherence of the rollouts, and how the host cut went
      frac = lambda x: jnp.mean(jnp.asarray(x).astype(jnp.float32))
      metrics["rollout/marker_found"] = frac(edits["found"])
      metrics["rollout/edit_fallback"] = frac(edits["fallback"])
      metrics["rollout/edit_truncated"] = frac(edits["truncated"])
    return batch, metrics

  def update(state, prompts, samples, correct, edits=None):
    batch, metrics = build_batch(prompts, samples, correct, edits)
    state, step_metrics = opd_step(state, batch)
    return state, {**step_metrics, **metrics}

  def iteration(state, prompts):
    key, sub = jax.random.split(jax.random.wrap_key_data(state.rng))
    state = state.replace(rng=jax.random.key_data(key))
    if text_verifier is None:
      r = rollout(state, prompts, sub)
      return update(state, prompts, r.samples, r.correct)
    samples = sample(state, prompts, sub)
    correct, edits = verify_in_graph(prompts, samples)
    return update(state, prompts, samples, correct, edits)

  if text_verifier is None:
    return Iteration(rollout, build_batch, update, iteration)

  # ---- host-verified path (real data, text verifiers) --------------------------------------
  table = ops.token_bytes(tokenizer, vocab_size)
  edit_width = sampling.max_new_tokens + suffix_tab.shape[1] + edit_slack

  def sample(state, prompts, key):
    rep = lambda x: jnp.repeat(x, k_total, axis=0)
    return sample_tokens(graphdef, state.params, rep(prompts["student_prompt"]),
                         rep(prompts["student_valid"]), key, sampling)

  def host(rows, tokens, mask):
    rows, tokens, mask = np.asarray(rows), np.asarray(tokens), np.asarray(mask, bool)
    n = tokens.shape[0]
    texts = [tokenizer.decode(tokens[i][mask[i]]) for i in range(n)]
    correct = np.array([bool(text_verifier(int(rows[i // k_total]), texts[i])) for i in range(n)],
                       bool).reshape(-1, k_total)
    k = np.repeat(correct.sum(-1), k_total)
    e = ops.host_replace_completion(table, tokenizer.encode, tokens, mask, k, suffix_tab,
                                    suffix_len, width=edit_width, pad_id=sampling.pad_id,
                                    marker=marker_text, last=last_marker)
    return correct, e._asdict()

  def verify(prompts, samples):
    """Host: decode, verify every rollout, cut on decoded text. Numpy (correct, edits)."""
    return host(prompts["row"], jax.device_get(samples.tokens), jax.device_get(samples.mask))

  def verify_in_graph(prompts, samples):
    b, n = prompts["student_prompt"].shape[0], samples.tokens.shape[0]
    flags = {f: jax.ShapeDtypeStruct((n,), jnp.bool_) for f in ("found", "fallback", "truncated")}
    shapes = (jax.ShapeDtypeStruct((b, k_total), jnp.bool_),
              {"tokens": jax.ShapeDtypeStruct((n, edit_width), jnp.int32),
               "valid": jax.ShapeDtypeStruct((n, edit_width), jnp.bool_),
               "answer_len": jax.ShapeDtypeStruct((n,), jnp.int32), **flags})
    return jax.pure_callback(host, shapes, prompts["row"], samples.tokens, samples.mask)

  def host_rollout(state, prompts, key):
    samples = sample(state, prompts, key)
    correct, _ = verify_in_graph(prompts, samples)
    return Rollouts(samples, correct, jnp.mean(correct.astype(jnp.float32), axis=-1))

  return Iteration(host_rollout, build_batch, update, iteration, sample, verify)
