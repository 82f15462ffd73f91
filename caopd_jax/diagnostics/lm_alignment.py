"""Gradient alignment on the embedded task: student rollouts, targeted rollouts at budgeted nodes,
and the alignment of every objective's direction under each teacher context.

  out = measure(key, student, teachers, tokenizer, templates, records, widths, num_samples=K,
                sampling=..., budget=alignment.Budget(...), contexts={"self": ("demo",
                "correct_solution"), "strong": ("demo", "correct_solution", "none")})

student / teachers: (graphdef, params) of HF models sharing the tokenizer. Contexts: "demo" and
"correct_solution" are the OPD teacher contexts of `caopd_jax.iteration` (the solution is the
first verified rollout of the question, else the demonstration); "none" scores the teacher on
the student's own prompt (identically zero gradients when the teacher IS the student).
The student rollouts and p_succ are shared by every (teacher, context), so comparisons between
contexts are paired. Returns numpy arrays (see `measure`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from caopd_jax.diagnostics import alignment as al
from caopd_jax.iteration import make_iteration
from caopd_jax.prompts import encode_prompts
from caopd_jax.rollouts import rollouts
from caopd_jax.verifiers import exact_match_tokens

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


def _context_batch(it, prompts, samples, correct, context):
  batch = it.build_batch(prompts, samples, correct)[0]
  if context == "none":  # the teacher sees exactly the student's prompt
    batch = {**batch, "teacher_tokens": batch["student_tokens"],
             "teacher_valid": batch["student_valid"]}
  return batch


def measure(key, student, teachers, tokenizer, templates, records, widths, *, num_samples,
            sampling, budget, contexts, specs=al.DEFAULT_OBJECTIVES, param_nodes=0):
  """Alignment of every objective under every (teacher, context) at budgeted nodes.

  student: (graphdef, params); teachers: {name: (graphdef, params)}; contexts: {teacher name:
  tuple of contexts}; records: B questions {question, answer}; num_samples: K rollouts each.
  Returns a dict of numpy arrays over N = B * K chains and K_w windows:
    question [N], correct [N], length [N], positions/weights/pbar/coverage/p_sampled [N, K_w],
    cos[(teacher, context, label)] and ok[(teacher, context, label)] [N, K_w],
    param_check[(teacher, context, label)] = (logit cos, parameter cos, head-only parameter cos)
    at up to `param_nodes` scored nodes (all parameters vs output kernel at fixed features).
  """
  graphdef, params = student
  enc = {m: {k: jnp.asarray(v) for k, v in encode_prompts(tokenizer, templates, records, m,
                                                          widths).items()}
         for m in ("demo", "correct_solution")}
  p = enc["demo"]
  k_roll, k_nodes = jax.random.split(key)
  r = rollouts(graphdef, params, p["student_prompt"], p["student_valid"], p["target"], k_roll,
               sampling, num_samples, exact_match_tokens)
  rep = lambda x: jnp.repeat(x, num_samples, axis=0)
  nodes = targeted_nodes(graphdef, params, rep(p["student_prompt"]), rep(p["student_valid"]),
                         rep(p["target"]), r.samples.tokens, r.samples.lengths, k_nodes,
                         sampling=sampling, budget=budget)
  out = {"question": np.repeat(np.arange(len(records)), num_samples),
         "correct": np.asarray(r.correct).reshape(-1), "length": np.asarray(r.samples.lengths),
         "cos": {}, "ok": {}, "param_check": {}}
  its = {m: make_iteration(graphdef, None, tokenizer, templates, num_samples=num_samples,
                           sampling=sampling, caopd=False, mode=m)
         for m in ("demo", "correct_solution")}
  batches = {}
  for name, ctxs in contexts.items():
    for ctx in ctxs:
      m = "demo" if ctx == "none" else ctx
      batches[ctx] = jax.jit(_context_batch, static_argnums=(0, 4))(
          its[m], enc[m], r.samples, r.correct, ctx)
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
