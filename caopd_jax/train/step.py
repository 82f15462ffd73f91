"""Pure train steps: `step(state, batch) -> (state, metrics)` for OPD and for SFT.

OPD batch (the completion occupies the last C columns of both sequences):
  student_tokens int32 [B, Ps+C], student_valid bool [B, Ps+C]   student prompt ++ completion
  teacher_tokens int32 [B, Pt+C], teacher_valid bool [B, Pt+C]   teacher context ++ completion
  completion_mask bool [B, C]                                      completion tokens that count
  behavior_logprobs float32 [B, C] (optional)                      sampler log-probs (IS weights)
Hidden states at columns [-C-1, -1) predict the completion, so student and teacher logits are
aligned token by token whatever their prompt lengths. The student forward runs once (jax.vjp);
every configured objective is evaluated on the same hidden states, chunked over the sequence
(`objectives.chunked_objective`), and with `compare_estimators` each estimator's parameter
gradient is formed with the same VJP and compared (norm, cosine) with the optimised gradient and
with the exact full-vocabulary token-level gradient (grad of sum_t KL_t at fixed prefixes,
i.e. `full_reverse` under the same masks and reduction).
The teacher is scored without gradients; an EMA teacher follows theta_T <- (1-a) theta_T + a theta_S
after every update (SDFT's `ref_model_mixup_alpha`).

Gradient accumulation: with `microbatches=M` the batch is cut into M equal microbatches run by
one `lax.scan` inside the step (student forward/backward and teacher scoring per microbatch);
each microbatch's loss is divided by the whole batch's denominator (`core.denominator`), so the
summed gradient, and the update, equal the one-big-batch ones. Token-mean metrics are combined
weighted by each microbatch's token count.
Master weights: with `init_state(..., master_weights=True)` the optimizer updates a float32 copy
of the parameters (`state.master`) and the parameters (e.g. bfloat16) are that copy cast down.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from caopd_jax import objectives
from caopd_jax.objectives import core

_F32 = jnp.float32
sg = jax.lax.stop_gradient
# What a step does when its loss, gradient norm or updated parameters are not finite: "stop"
# (report it in metrics["train/nonfinite"]; the train loop stops before checkpointing that
# state) or "skip" (keep the previous state, count it in metrics["train/skipped"]).
NONFINITE_POLICIES = ("stop", "skip")
# Common hyperparameters shared by the reported objectives (their own ones keep defaults).
_SHARED = ("reduction", "temperature", "special_token_ids", "skip_first")


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: nnx.State
  opt_state: optax.OptState
  teacher: nnx.State | None  # teacher parameters (EMA of the student, or a fixed model)
  rng: jax.Array  # uint32 [2] raw key data (checkpoint friendly)
  master: nnx.State | None = None  # float32 master copy of `params` (or None)
  frozen: nnx.State | None = None  # parameters not trained (a LoRA run's base), or None


def model_state(params, frozen):
  """The whole model's parameters: `params` plus the frozen ones (LoRA), for nnx.merge."""
  return params if frozen is None else nnx.merge_state(params, frozen)


def init_state(params, optimizer, teacher=None, seed: int = 0, master_weights: bool = False,
               teacher_dtype=None, frozen=None) -> TrainState:
  """Step 0; the teacher is copied (in `teacher_dtype`, default its own) so it never aliases
  (donated) student buffers. `frozen`: parameters kept out of the optimizer (a LoRA run trains
  only `params`, its adapters). Jit it with out_shardings to build the state sharded."""
  if teacher is not None:
    teacher = jax.tree.map(lambda x: jnp.array(x, dtype=teacher_dtype or x.dtype), teacher)
  master = jax.tree.map(lambda x: x.astype(_F32), params) if master_weights else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params if master is None else master),
                    teacher=teacher, rng=jax.random.key_data(jax.random.key(seed)), master=master,
                    frozen=frozen)


def apply_update(state: TrainState, optimizer, grads):
  """(params, opt_state, master) after one optimizer update (on the master copy if any)."""
  if state.master is None:
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state, None
  grads = jax.tree.map(lambda g: g.astype(_F32), grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.master)
  master = optax.apply_updates(state.master, updates)
  params = jax.tree.map(lambda m, p: m.astype(p.dtype), master, state.params)
  return params, opt_state, master


def split_microbatches(batch, n: int):
  """Each [B, ...] leaf as [n, B / n, ...] (row i of microbatch j is row j * B/n + i)."""
  def cut(x):
    if x.shape[0] % n:
      raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} microbatches.")
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])
  return jax.tree.map(cut, batch)


def accumulate(micro, batch, n: int, summed=lambda k: False):
  """(summed gradients, metrics) of `micro(batch, i) -> (grads, metrics)` over n microbatches
  (i = 0..n-1) in one lax.scan; metrics with `summed(key)` add up, the others are averaged
  weighted by metrics["train/num_tokens"]."""
  if n == 1:
    return micro(batch, 0)
  mbs = split_microbatches(batch, n)

  def weigh(m):
    return {k: v if summed(k) else v * m["train/num_tokens"] for k, v in m.items()}

  def body(acc, xs):
    g, m = micro(*xs)
    return jax.tree.map(jnp.add, acc, (g, weigh(m))), None

  first = jax.tree.map(lambda x: x[0], mbs)
  zero = jax.tree.map(lambda x: jnp.zeros(x.shape, _F32 if jnp.issubdtype(x.dtype, jnp.floating)
                                          else x.dtype), jax.eval_shape(micro, first, 0))
  (grads, metrics), _ = jax.lax.scan(body, zero, (mbs, jnp.arange(n)))
  n_tok = jnp.maximum(metrics["train/num_tokens"], 1.0)
  return grads, {k: v if summed(k) else v / n_tok for k, v in metrics.items()}


def tree_dot(a, b):
  return sum(jnp.vdot(x.astype(_F32), y.astype(_F32)) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def cosine(a, b):
  return tree_dot(a, b) / jnp.maximum(jnp.sqrt(tree_dot(a, a) * tree_dot(b, b)), 1e-30)


def guarded_update(state, new_state, loss, grad_norm, metrics, policy: str):
  """The divergence guard: metrics["train/nonfinite"] = 1 when the loss, gradient norm or new
  parameters (their norm, which overflows for weights near float32's max) are not finite;
  with policy "skip" the previous state is kept for that step."""
  if policy not in NONFINITE_POLICIES:
    raise ValueError(f"Unknown on_nonfinite policy {policy!r}; valid: {NONFINITE_POLICIES}.")
  param_norm = optax.tree.norm(new_state.params)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
  metrics["train/param_norm"] = param_norm
  metrics["train/nonfinite"] = 1.0 - ok.astype(_F32)
  if policy == "skip":
    metrics["train/skipped"] = metrics["train/nonfinite"]
    new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state,
                             state.replace(step=new_state.step))
  return new_state, metrics


def ema(teacher, student, alpha: float):
  return jax.tree.map(lambda t, s: ((1 - alpha) * t + alpha * s).astype(t.dtype), teacher, student)


def completion_hidden(model, tokens, valid, num_completion: int, dropout_key=None):
  """Hidden states [B, C, D] at the positions that predict the last C tokens."""
  h, _ = model.hidden(tokens, valid=valid, dropout_key=dropout_key)
  return h[:, -num_completion - 1:-1]


def make_opd_step(graphdef, teacher_graphdef, optimizer, schedule=None, *, objective: str,
                  hparams=None, report=(), compare_estimators: bool = False,
                  chunk_size: int = 256, ema_alpha: float = 0.0, importance_weights: bool = False,
                  diagnostics: bool = False, diagnostics_top_k: int = 8,
                  on_nonfinite: str = "stop", microbatches: int = 1,
                  teacher_shares_base: bool = False):
  """Returns the pure OPD step optimising `objective` and reporting every objective in `report`.

  importance_weights: weight the optimised objective's per-token terms by the truncated ratio
  min(pi(y_t) / mu(y_t), hparams["is_clip"]) with mu from batch["behavior_logprobs"] (the
  sampler's log-probs under the distribution it sampled from); off for modified (CaOPD)
  trajectories, whose replaced tokens were never sampled.
  diagnostics: also report per-token diagnostics `diag/...` (entropies, teacher top-K mass and
  overlap, negative-reward fraction, log-ratio by position; caopd_jax.diagnostics.token_stats,
  top-K = diagnostics_top_k) over the optimised objective's mask, chunk-wise and without
  gradients; nothing is computed when False.
  on_nonfinite: the divergence guard's policy (`guarded_update`).
  microbatches: gradient accumulation (module docstring); needs compare_estimators and
  diagnostics off (their metrics are not token means of one mask).
  teacher_shares_base: the teacher is `state.teacher` over the student's frozen base (an EMA of a
  LoRA student's adapters: one copy of the base in memory).
  """
  if microbatches > 1 and (compare_estimators or diagnostics):
    raise ValueError("compare_estimators and diagnostics need microbatches=1.")
  hparams = dict(hparams or {})
  optimised = objectives.get_objective(objective)
  resolved = optimised.resolve(hparams)  # fails early on bad names
  shared = {k: v for k, v in hparams.items() if k in _SHARED}
  report = tuple(n for n in report if n != objective)
  for name in report:
    objectives.get_objective(name)

  def step(state: TrainState, batch):
    c = batch["completion_mask"].shape[1]
    teacher = nnx.merge(teacher_graphdef, sg(model_state(
        state.teacher, state.frozen if teacher_shares_base else None)))
    teacher_kernel = sg(teacher.output_kernel())
    dropout = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 1)  # LoRA dropout
    full = core.effective_mask(batch["completion_mask"], batch["student_tokens"][:, -c:],
                               resolved["special_token_ids"], resolved["skip_first"])
    denom = core.denominator(full, resolved["reduction"])  # the whole batch's

    def micro(mb, i):
      tokens, mask = mb["student_tokens"][:, -c:], mb["completion_mask"]
      teacher_h = sg(completion_hidden(teacher, mb["teacher_tokens"], mb["teacher_valid"], c))

      def student_head(params):
        model = nnx.merge(graphdef, model_state(params, state.frozen))
        return (completion_hidden(model, mb["student_tokens"], mb["student_valid"], c,
                                  jax.random.fold_in(dropout, i)), model.output_kernel())

      (h, kernel), vjp = jax.vjp(student_head, state.params)

      def head_loss(name, hp):
        def f(h, kernel):
          return objectives.chunked_objective(name, h, kernel, teacher_h, teacher_kernel, tokens,
                                              mask, chunk_size=chunk_size, denominator=denom,
                                              **hp)
        return f

      def param_grad(name, hp):
        (loss, metrics), head_grads = jax.value_and_grad(head_loss(name, hp), argnums=(0, 1),
                                                         has_aux=True)(h, kernel)
        return loss, metrics, vjp(head_grads)[0]

      main_hp = dict(hparams)
      main_hp.update({hp: mb[key] for hp, key in optimised.batch_inputs if key in mb})
      if importance_weights:  # truncated IS weights min(pi / mu, is_clip) from the sampler's mu
        main_hp["behavior_logprobs"] = mb["behavior_logprobs"]
      _, main_metrics, grads = param_grad(objective, main_hp)
      metrics = {f"train/{k}": v for k, v in main_metrics.items()}
      exact = None
      if compare_estimators:
        _, _, exact = param_grad("full_reverse", shared)
        metrics[f"estimators/{objective}/cos_exact"] = cosine(grads, exact)
      for name in report:
        if compare_estimators:
          value, _, g = param_grad(name, shared)
          metrics[f"estimators/{name}/grad_norm"] = optax.tree.norm(g)
          metrics[f"estimators/{name}/cos_optimised"] = cosine(g, grads)
          metrics[f"estimators/{name}/cos_exact"] = cosine(g, exact)
        else:
          value, _ = head_loss(name, shared)(sg(h), sg(kernel))
        metrics[f"objectives/{name}"] = value
      if diagnostics:  # per-token diagnostics on the same hidden states, no gradients
        from caopd_jax.diagnostics import token_stats  # pylint: disable=g-import-not-at-top
        metrics.update(token_stats.chunked_metrics(sg(h), sg(kernel), teacher_h, teacher_kernel,
                                                   tokens, mask, chunk_size=chunk_size,
                                                   top_k=diagnostics_top_k, **shared))
      return grads, metrics

    summed = lambda k: k in ("train/loss", "train/num_tokens") or k.startswith("objectives/")
    grads, metrics = accumulate(micro, batch, microbatches, summed)
    metrics["train/grad_norm"] = optax.tree.norm(grads)
    if schedule is not None:
      metrics["train/lr"] = jnp.asarray(schedule(state.step), _F32)
    params, opt_state, master = apply_update(state, optimizer, grads)
    new_teacher = ema(state.teacher, params, ema_alpha) if ema_alpha else state.teacher
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              teacher=new_teacher, master=master)
    return guarded_update(state, new_state, metrics["train/loss"], metrics["train/grad_norm"],
                          metrics, on_nonfinite)

  return step


def sft_loss(model, tokens, valid, loss_mask, denominator=None):
  """Mean next-token cross-entropy over positions where loss_mask[b, t] (t predicts tokens[b, t]),
  divided by `denominator` (default: their count)."""
  h, _ = model.hidden(tokens, valid=valid)
  logits = model.logits(h[:, :-1])
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  m = loss_mask[:, 1:].astype(_F32)
  n = jnp.maximum(jnp.sum(m), 1.0)
  loss = jnp.sum(nll * m) / (n if denominator is None else denominator)
  acc = jnp.sum((jnp.argmax(logits, -1) == tokens[:, 1:]) * m) / n
  return loss, {"train/loss": loss, "train/token_accuracy": acc, "train/num_tokens": jnp.sum(m)}


def bucketed_sft_loss(model, buckets, denominator):
  """sft_loss over several {tokens, valid, loss_mask} buckets of their own widths: the summed
  next-token cross-entropy of all of them over `denominator` (the whole batch's loss tokens),
  i.e. the loss of the one padded batch they would make, without its padding's compute."""
  parts = [sft_loss(model, b["tokens"], b["valid"], b["loss_mask"], denominator)[1]
           for b in buckets]
  n = sum(m["train/num_tokens"] for m in parts)
  loss = sum(m["train/loss"] for m in parts)
  acc = sum(m["train/token_accuracy"] * m["train/num_tokens"] for m in parts) / jnp.maximum(n, 1.0)
  return loss, {"train/loss": loss, "train/token_accuracy": acc, "train/num_tokens": n}


def make_sft_step(graphdef, optimizer, schedule=None, on_nonfinite: str = "stop",
                  microbatches: int = 1):
  """Supervised step on batch {tokens, valid, loss_mask} (all [B, T]), or {"buckets": (such
  dicts, each [B_i, T_i])} (bucketed_sft_loss); `microbatches` as for make_opd_step (each bucket
  split into that many)."""

  def step(state: TrainState, batch):
    masks = [b["loss_mask"] for b in batch["buckets"]] if "buckets" in batch else [
        batch["loss_mask"]]
    denom = jnp.maximum(sum(jnp.sum(m[:, 1:].astype(_F32)) for m in masks), 1.0)

    def micro(mb, i):
      del i
      def loss_fn(params):
        model = nnx.merge(graphdef, params)
        if "buckets" in mb:
          return bucketed_sft_loss(model, mb["buckets"], denom)
        return sft_loss(model, mb["tokens"], mb["valid"], mb["loss_mask"], denom)
      (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      return grads, metrics

    summed = lambda k: k in ("train/loss", "train/num_tokens")
    grads, metrics = accumulate(micro, batch, microbatches, summed)
    metrics["train/grad_norm"] = optax.tree.norm(grads)
    if schedule is not None:
      metrics["train/lr"] = jnp.asarray(schedule(state.step), _F32)
    params, opt_state, master = apply_update(state, optimizer, grads)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              master=master)
    return guarded_update(state, new_state, metrics["train/loss"], metrics["train/grad_norm"],
                          metrics, on_nonfinite)

  return step
