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
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from caopd_jax import objectives

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


def init_state(params, optimizer, teacher=None, seed: int = 0) -> TrainState:
  """Step 0; the teacher is copied so it never aliases (donated) student buffers."""
  teacher = None if teacher is None else jax.tree.map(jnp.copy, teacher)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    teacher=teacher, rng=jax.random.key_data(jax.random.key(seed)))


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


def completion_hidden(model, tokens, valid, num_completion: int):
  """Hidden states [B, C, D] at the positions that predict the last C tokens."""
  h, _ = model.hidden(tokens, valid=valid)
  return h[:, -num_completion - 1:-1]


def make_opd_step(graphdef, teacher_graphdef, optimizer, schedule=None, *, objective: str,
                  hparams=None, report=(), compare_estimators: bool = False,
                  chunk_size: int = 256, ema_alpha: float = 0.0, importance_weights: bool = False,
                  diagnostics: bool = False, diagnostics_top_k: int = 8,
                  on_nonfinite: str = "stop"):
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
  """
  hparams = dict(hparams or {})
  objectives.get_objective(objective).resolve(hparams)  # fail early on bad names/hparams
  shared = {k: v for k, v in hparams.items() if k in _SHARED}
  report = tuple(n for n in report if n != objective)
  for name in report:
    objectives.get_objective(name)

  def step(state: TrainState, batch):
    c = batch["completion_mask"].shape[1]
    tokens = batch["student_tokens"][:, -c:]
    mask = batch["completion_mask"]
    teacher = nnx.merge(teacher_graphdef, sg(state.teacher))
    teacher_h = sg(completion_hidden(teacher, batch["teacher_tokens"], batch["teacher_valid"], c))
    teacher_kernel = sg(teacher.output_kernel())

    def student_head(params):
      model = nnx.merge(graphdef, params)
      return (completion_hidden(model, batch["student_tokens"], batch["student_valid"], c),
              model.output_kernel())

    (h, kernel), vjp = jax.vjp(student_head, state.params)

    def head_loss(name, hp):
      def f(h, kernel):
        return objectives.chunked_objective(name, h, kernel, teacher_h, teacher_kernel, tokens,
                                            mask, chunk_size=chunk_size, **hp)
      return f

    def param_grad(name, hp):
      (loss, metrics), head_grads = jax.value_and_grad(head_loss(name, hp), argnums=(0, 1),
                                                       has_aux=True)(h, kernel)
      return loss, metrics, vjp(head_grads)[0]

    main_hp = dict(hparams)
    if importance_weights:  # truncated IS weights min(pi / mu, is_clip) from the sampler's mu
      main_hp["behavior_logprobs"] = batch["behavior_logprobs"]
    loss, main_metrics, grads = param_grad(objective, main_hp)
    metrics = {f"train/{k}": v for k, v in main_metrics.items()}
    metrics["train/grad_norm"] = optax.tree.norm(grads)
    if schedule is not None:
      metrics["train/lr"] = jnp.asarray(schedule(state.step), _F32)

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

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_teacher = ema(state.teacher, params, ema_alpha) if ema_alpha else state.teacher
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              teacher=new_teacher)
    return guarded_update(state, new_state, loss, metrics["train/grad_norm"], metrics,
                          on_nonfinite)

  return step


def sft_loss(model, tokens, valid, loss_mask):
  """Mean next-token cross-entropy over positions where loss_mask[b, t] (t predicts tokens[b, t])."""
  h, _ = model.hidden(tokens, valid=valid)
  logits = model.logits(h[:, :-1])
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  m = loss_mask[:, 1:].astype(_F32)
  loss = jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)
  acc = jnp.sum((jnp.argmax(logits, -1) == tokens[:, 1:]) * m) / jnp.maximum(jnp.sum(m), 1.0)
  return loss, {"train/loss": loss, "train/token_accuracy": acc, "train/num_tokens": jnp.sum(m)}


def make_sft_step(graphdef, optimizer, schedule=None, on_nonfinite: str = "stop"):
  """Supervised step on batch {tokens, valid, loss_mask} (all [B, T])."""

  def step(state: TrainState, batch):
    def loss_fn(params):
      return sft_loss(nnx.merge(graphdef, params), batch["tokens"], batch["valid"],
                      batch["loss_mask"])

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    metrics["train/grad_norm"] = optax.tree.norm(grads)
    if schedule is not None:
      metrics["train/lr"] = jnp.asarray(schedule(state.step), _F32)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
    return guarded_update(state, new_state, loss, metrics["train/grad_norm"], metrics,
                          on_nonfinite)

  return step
