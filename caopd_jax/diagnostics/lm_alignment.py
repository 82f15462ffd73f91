"""Gradient alignment on the embedded task: student rollouts, targeted rollouts at budgeted nodes,
and the alignment of every objective's direction under each teacher context.

  out = measure(key, student, teachers, tokenizer, task, records, num_samples=K,
                sampling=..., budget=alignment.Budget(...), contexts={"self": ("demo",
                "correct_solution"), "strong": ("demo", "correct_solution", "none")})

student / teachers: (graphdef, params) of HF models sharing the tokenizer; task: a task that
verifies in the graph (caopd_jax.tasks). Contexts by name (caopd_jax.contexts): "demo",
"correct_solution" (the first verified rollout of the question, else the demonstration) and
"none" (the teacher scores the student's own prompt: identically zero gradients when the teacher
IS the student).
The student rollouts and p_succ are shared by every (teacher, context), so comparisons between
contexts are paired. Returns numpy arrays (see `measure`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from caopd_jax import contexts as contexts_lib
from caopd_jax.diagnostics import alignment as al
from caopd_jax.opd import batch as opd_batch, prompts as opd_prompts, verify as opd_verify
from caopd_jax.opd.verify import exact_match_tokens
from caopd_jax.sampling import sample

F32 = jnp.float32


def completion_logits(graphdef, params, tokens, valid, width):
  """float32 logits [B, width, V] at the positions that predict the last `width` tokens."""
  model = nnx.merge(graphdef, params)
  return model(tokens, valid=valid)[:, -width - 1:-1]


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "budget", "verifier"))
def targeted_nodes(graphdef, params, prompt, prompt_valid, target, completions, lengths, key, *,
                   sampling, budget, verifier=exact_match_tokens):
  """`alignment.targeted_success` for chains completions [N, C] after prompt [N, P]."""
  c = completions.shape[1]
  sl = completion_logits(graphdef, params, jnp.concatenate([prompt, completions], 1),
                         jnp.concatenate([prompt_valid, jnp.ones(completions.shape, bool)], 1), c)
  cont = al.make_lm_continuation(graphdef, params, prompt, prompt_valid, target, sampling,
                                 verifier, budget.horizon)
  return al.targeted_success(cont, key, sl, completions, lengths, budget)


@functools.partial(jax.jit, static_argnames=("graphdef", "teacher_graphdef", "specs"))
def context_alignment(graphdef, params, teacher_graphdef, teacher_params, batch, nodes, *, specs):
  """`alignment.node_alignment` on an OPD batch (train_step format), plus the directions and the
  ideal vector at the nodes for the parameter-space check."""
  c = batch["completion_mask"].shape[1]
  sl = completion_logits(graphdef, params, batch["student_tokens"], batch["student_valid"], c)
  tl = completion_logits(teacher_graphdef, teacher_params, batch["teacher_tokens"],
                         batch["teacher_valid"], c)
  tokens = batch["student_tokens"][:, -c:]
  return al.node_alignment(nodes, sl, jax.lax.stop_gradient(tl), tokens,
                           batch["completion_mask"], specs)


@functools.partial(jax.jit, static_argnames=("graphdef", "teacher_graphdef", "specs"))
def param_space_check(graphdef, params, teacher_graphdef, teacher_params, batch, nodes, rows, ks,
                      *, specs):
  """{label: (logit cos, all-parameter cos, output-kernel cos, ok)}, each [P], at nodes (rows, ks);
  ok is False where the node's logit-space direction is degenerate (`alignment.cosine`).

  All parameters: the features move with theta, so the cosine differs from the logit one.
  Output kernel with the node's features held fixed: the two must agree exactly."""
  c = batch["completion_mask"].shape[1]
  tokens = batch["student_tokens"][:, -c:]
  tl = jax.lax.stop_gradient(completion_logits(teacher_graphdef, teacher_params,
                                               batch["teacher_tokens"], batch["teacher_valid"], c))
  pos = nodes["positions"][rows, ks]
  model = nnx.merge(graphdef, params)
  h = jax.lax.stop_gradient(model.hidden(batch["student_tokens"],
                                         valid=batch["student_valid"])[0][:, -c - 1:-1])
  head_fn = lambda k: jnp.einsum("btd,dv->btv", h, k, preferred_element_type=F32)
  full_fn = lambda p: completion_logits(graphdef, p, batch["student_tokens"],
                                        batch["student_valid"], c)
  sl = full_fn(params)
  logp = jax.nn.log_softmax(sl[rows, pos])
  ideal, _, _ = al.ideal_logit_grad(logp, nodes["cand"][rows, ks], nodes["cand_valid"][rows, ks],
                                    nodes["p_succ"][rows, ks])
  grads = al.objective_logit_grads(sl, tl, tokens, batch["completion_mask"], specs)
  out = {}
  for label, g in grads.items():
    d = g[rows, pos]
    cos, ok = al.cosine(ideal, d)
    out[label] = (cos, al.param_space_cosines(full_fn, params, rows, pos, ideal, d)[0],
                  al.param_space_cosines(head_fn, model.output_kernel(), rows, pos, ideal, d)[0],
                  ok)
  return out


def pad_teacher(batch, width, pad_id=0):
  """Left-pads teacher_tokens/valid to `width` columns (one compile for every context)."""
  extra = width - batch["teacher_tokens"].shape[1]
  if extra <= 0:
    return batch
  return {**batch,
          "teacher_tokens": jnp.pad(batch["teacher_tokens"], [(0, 0), (extra, 0)],
                                    constant_values=pad_id),
          "teacher_valid": jnp.pad(batch["teacher_valid"], [(0, 0), (extra, 0)])}


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "verify", "num_samples"))
def _rollouts(graphdef, params, prompts, key, *, sampling, verify, num_samples):
  rep = lambda x: jnp.repeat(x, num_samples, axis=0)
  samples = sample(graphdef, params, rep(prompts["student_prompt"]), rep(prompts["student_valid"]),
                   key, sampling)
  return samples, verify(prompts, samples)


@functools.partial(jax.jit, static_argnames=("context", "num_samples"))
def _context_batch(prompts, samples, verdict, consts, *, context, num_samples):
  d, _ = opd_batch.draft(prompts, samples, verdict, context, consts, num_samples)
  return opd_batch.assemble(d._replace(behavior_logprobs=None), num_samples)


def measure(key, student, teachers, tokenizer, task, records, *, num_samples, sampling, budget,
            contexts, specs=al.DEFAULT_OBJECTIVES, param_nodes=0):
  """Alignment of every objective under every (teacher, context) at budgeted nodes.

  student: (graphdef, params); teachers: {name: (graphdef, params)}; contexts: {teacher name:
  tuple of context names}; records: B questions; num_samples: K rollouts each.
  Returns a dict of numpy arrays over N = B * K chains and K_w windows:
    question [N], correct [N], length [N], positions/weights/pbar/coverage/p_sampled [N, K_w],
    cos[(teacher, context, label)] and ok[(teacher, context, label)] [N, K_w],
    param_check[(teacher, context, label)] = (logit cos, parameter cos, head-only parameter cos)
    at up to `param_nodes` scored nodes (all parameters vs output kernel at fixed features).
  """
  graphdef, params = student
  names = sorted({c for ctxs in contexts.values() for c in ctxs})
  enc = {}
  for name in names:
    ctx = contexts_lib.get(name)
    widths = opd_prompts.widths(tokenizer, task, records, ctx)
    enc[name] = (ctx, {k: jnp.asarray(v) for k, v in opd_prompts.encode(
        tokenizer, task, records, ctx, widths).items()},
        opd_prompts.constants(tokenizer, task, ctx, records, num_samples))
  p = enc[names[0]][1]
  k_roll, k_nodes = jax.random.split(key)
  verify = opd_verify.make(task, tokenizer, records, num_samples=num_samples,
                           width=sampling.max_new_tokens)
  samples, verdict = _rollouts(graphdef, params, p, k_roll, sampling=sampling, verify=verify,
                               num_samples=num_samples)
  rep = lambda x: jnp.repeat(x, num_samples, axis=0)
  nodes = targeted_nodes(graphdef, params, rep(p["student_prompt"]), rep(p["student_valid"]),
                         rep(p["target"]), samples.tokens, samples.lengths, k_nodes,
                         sampling=sampling, budget=budget)
  out = {"question": np.repeat(np.arange(len(records)), num_samples),
         "correct": np.asarray(verdict.correct).reshape(-1), "length": np.asarray(samples.lengths),
         "cos": {}, "ok": {}, "param_check": {}}
  batches = {name: _context_batch(prompts, samples, verdict, consts, context=ctx,
                                  num_samples=num_samples)
             for name, (ctx, prompts, consts) in enc.items()}
  width = max(b["teacher_tokens"].shape[1] for b in batches.values())
  batches = {k: pad_teacher(b, width, sampling.pad_id) for k, b in batches.items()}
  specs = tuple(specs)
  for name, ctxs in contexts.items():
    tg, tp = teachers[name]
    for ctx in ctxs:
      batch = batches[ctx]
      res = jax.device_get(context_alignment(graphdef, params, tg, tp, batch, nodes, specs=specs))
      for k in ("pbar", "coverage", "p_sampled", "ideal_norm"):
        out[k] = np.asarray(res[k])
      for label, *_ in specs:
        out["cos"][(name, ctx, label)] = np.asarray(res[f"cos/{label}"])
        out["ok"][(name, ctx, label)] = np.asarray(res[f"ok/{label}"])
      if param_nodes:  # the same random scored nodes for every objective
        live = (np.asarray(nodes["weights"]) > 0) & (out["ideal_norm"] > 1e-12)
        rows, ks = np.nonzero(live)
        if not len(rows):
          continue
        sel = np.sort(np.random.default_rng(0).permutation(len(rows))[:param_nodes])
        sel = np.resize(sel, param_nodes)  # fixed shape (repeats when fewer nodes)
        res = param_space_check(graphdef, params, tg, tp, batch, nodes, jnp.asarray(rows[sel]),
                                jnp.asarray(ks[sel]), specs=specs)
        n_keep = min(param_nodes, len(rows))
        for label, vals in jax.device_get(res).items():
          out["param_check"][(name, ctx, label)] = tuple(np.asarray(v)[:n_keep] for v in vals)
  out.update({k: np.asarray(v) for k, v in nodes.items()})
  return out
