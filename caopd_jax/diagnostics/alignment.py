"""Gradient alignment: does a distillation gradient point where success lies?

After "Unmasking On-Policy Distillation" (Armandpour et al., arXiv 2605.10889); the derivation
below is our reconstruction. At a node c_t = (x, y_<t) of a student rollout let
p_succ(v) = P(success | c_t, v) under the student's own continuation policy. The *ideal* logit
update is the gradient of the node's success probability E_{v ~ pi(.|c_t)}[p_succ(v)] with respect
to the node's logits z (softmax Jacobian applied to p_succ):

    g*_v = d/dz_v sum_u softmax(z)_u p_succ(u) = pi(v) (p_succ(v) - sum_u pi(u) p_succ(u)).

A distillation objective's update at the node is its descent direction d_v = -d loss_t / dz_v
(`objective_logit_grads`: every registry objective, the teacher detached). The alignment score is
cos(g*, d) over the vocabulary. Both vectors sum to zero (any gradient through a softmax does).

p_succ is estimated with *targeted rollouts*: for each candidate token v (the sampled token and
the student's top-m tokens; duplicates dropped), n continuations of (c_t, v) are sampled from
the student and verified. Tokens outside the candidate set C get p_succ = the pi-weighted mean
over C (so g* is zero there and pbar is the candidate mean); the error this makes in g* is at
most 1 - pi(C) in L1 (the uncovered mass, reported as `coverage`).

Budget (depth windows). Scoring every node of a length-L chain costs O(L) targeted batches per
chain. Instead the completion positions [0, H) (H: the verifier's horizon) are cut into windows
whose sizes grow geometrically, [0, f), [f, f + f g), ... (first size f, growth g), and ONE node
is drawn uniformly inside each window that the chain reaches. A chain then costs
ceil(log_g(H / f)) + 1 node evaluations, each M * n continuations of at most H - start tokens
(every window is one batched sampler call with a static continuation length). Each node carries
the weight |window ∩ [0, L)|, so the weighted mean of a per-node quantity over a chain is an
unbiased estimate of its mean over all L nodes (stratified sampling). Early positions, where a
wrong digit is usually first chosen, are scored densely; g = 1, f = 1 scores every node.

Logit space vs parameter space. With J = dz_t/dtheta at the node, the parameter-space vectors are
J^T g* and J^T d. Their cosine equals the logit cosine exactly when J J^T is a multiple of the
identity on the zero-sum subspace: for a logit bias (J = I) and for the output kernel W with the
node's features h held fixed (J^T a = h a^T, <h a^T, h b^T> = |h|^2 <a, b>). For all parameters
(h depends on theta; tied embeddings) the two differ; `param_space_cosines` computes the
brute-force version per node for comparison.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from caopd_jax import objectives
from caopd_jax.sampling import sample

F32 = jnp.float32
sg = jax.lax.stop_gradient

# Objectives scored by default: (label, registry name, hparams).
DEFAULT_OBJECTIVES = (
    ("full_reverse", "full_reverse", ()),
    ("full_forward", "full_forward", ()),
    ("token_sampled", "token_sampled", ()),
    ("vopd", "vopd", ()),
    ("topk_reverse", "topk_reverse", (("k", 8),)),
    ("mix", "mix", (("lam", 0.5),)),
)


# ---------------------------------------------------------------------------------------------
# Logit-space pieces
# ---------------------------------------------------------------------------------------------

def cosine(a, b, eps=1e-12):
  """(cos [...], ok [...]) along the last axis; ok is False where either norm is <= eps
  (cos is 0 there)."""
  a, b = a.astype(F32), b.astype(F32)
  na, nb = jnp.linalg.norm(a, axis=-1), jnp.linalg.norm(b, axis=-1)
  ok = (na > eps) & (nb > eps)
  return jnp.where(ok, jnp.sum(a * b, -1) / jnp.where(ok, na * nb, 1.0), 0.0), ok


def candidates(logp, sampled, m: int):
  """Candidate tokens at each node: the sampled token first, then the student's top-m.

  logp [..., V]; sampled int [...]. Returns (cand int32 [..., m+1], valid bool [..., m+1]);
  valid is False on a repeat of an earlier candidate."""
  top = jax.lax.top_k(sg(logp), m)[1] if m else jnp.zeros(logp.shape[:-1] + (0,), jnp.int32)
  cand = jnp.concatenate([sampled[..., None].astype(jnp.int32), top.astype(jnp.int32)], -1)
  k = cand.shape[-1]
  earlier = jnp.tril(jnp.ones((k, k), bool), -1)           # [j, i]: i < j
  dup = jnp.any((cand[..., :, None] == cand[..., None, :]) & earlier, axis=-1)
  return cand, ~dup


def ideal_logit_grad(logp, cand, valid, p_succ):
  """The ideal logit direction g* [..., V] (see module doc) and (pbar, coverage) [...].

  logp [..., V] student log-probs; cand, valid [..., M]; p_succ [..., M] (success probability
  after each candidate). Non-candidates are imputed at pbar (the candidates' pi-weighted mean)."""
  pi = jnp.exp(logp.astype(F32))
  pc = jnp.where(valid, jnp.take_along_axis(pi, cand, -1), 0.0)
  coverage = jnp.sum(pc, -1)
  pbar = jnp.sum(pc * p_succ, -1) / jnp.maximum(coverage, 1e-30)
  gc = pc * (p_succ - pbar[..., None])
  onehot = jax.nn.one_hot(cand, logp.shape[-1], dtype=F32)     # [..., M, V]
  return jnp.einsum("...m,...mv->...v", gc, onehot), pbar, coverage


def objective_logit_grads(student_logits, teacher_logits, tokens, mask, specs=DEFAULT_OBJECTIVES):
  """{label: descent direction -d loss / d z [B, T, V]} per node for each (label, name, hparams).

  The loss is the registry objective with reduction="sequence_sum", so row (b, t) is
  -d loss_t / d z_t up to one positive per-batch constant (1 / #sequences): per node, scale-free.
  For the sampled estimators it is the one-sample estimate at the sampled token y_t."""
  out = {}
  tl = sg(teacher_logits)
  for label, name, hp in specs:
    hp = {**dict(hp), "reduction": "sequence_sum"}
    f = lambda z, name=name, hp=hp: objectives.compute(name, z, tl, tokens, mask, **hp)[0]
    out[label] = -jax.grad(f)(student_logits.astype(F32))
  return out


def gather_nodes(x, positions):
  """x [N, T, ...] at positions [N, K] -> [N, K, ...]."""
  idx = positions.reshape(positions.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


# ---------------------------------------------------------------------------------------------
# Budget: geometric depth windows and node selection
# ---------------------------------------------------------------------------------------------

def depth_windows(horizon: int, first: int = 1, growth: float = 2.0):
  """((start, end), ...) covering [0, horizon): sizes first, first*growth, ... (rounded up)."""
  if horizon < 1 or first < 1 or growth < 1:
    raise ValueError(f"bad windows: horizon={horizon}, first={first}, growth={growth}")
  out, start, size = [], 0, float(first)
  while start < horizon:
    end = min(horizon, start + max(1, math.ceil(size - 1e-9)))
    out.append((start, end))
    start, size = end, size * growth
  return tuple(out)


def select_nodes(key, lengths, windows):
  """One node per window reached by each chain: (positions int32 [N, K], weights float32 [N, K]).

  lengths [N]: number of scoreable positions of each chain (e.g. min(rollout length, horizon)).
  The node is uniform in window ∩ [0, length); its weight is the size of that set (0 when the
  chain does not reach the window; its position is then the window start, a dummy)."""
  n = lengths.shape[0]
  u = jax.random.uniform(key, (n, len(windows)), F32)
  pos, wts = [], []
  for k, (s, e) in enumerate(windows):
    hi = jnp.minimum(lengths, e)
    size = jnp.maximum(hi - s, 0)
    t = s + jnp.minimum(jnp.floor(u[:, k] * size).astype(jnp.int32), jnp.maximum(size - 1, 0))
    pos.append(t)
    wts.append(size.astype(F32))
  return jnp.stack(pos, 1).astype(jnp.int32), jnp.stack(wts, 1)


# ---------------------------------------------------------------------------------------------
# Targeted rollouts
# ---------------------------------------------------------------------------------------------

def success_at_nodes(continue_fn, key, completions, positions, cand, num_rollouts: int, windows):
  """Monte Carlo p_succ [N, K, M] of every candidate at every node.

  completions int [N, W] (W >= horizon); positions [N, K] (node k inside window k); cand
  [N, K, M]. continue_fn(key, rows [R], prefix [R, E], prefix_len [R], start) -> bool [R]
  completes row `rows[r]`'s prefix prefix[r, :prefix_len[r]] (its last token is the
  candidate) and verifies it; `start` (static) is the window start, so every prefix_len is in
  [start + 1, E] and continuations need at most horizon - start - 1 tokens. One call per
  window, R = N * M * num_rollouts rows."""
  n, k, m = cand.shape
  out = []
  for w, ((s, e), sub) in enumerate(zip(windows, jax.random.split(key, len(windows)))):
    t = positions[:, w]
    rows = jnp.repeat(jnp.arange(n), m * num_rollouts)
    v = jnp.repeat(cand[:, w].reshape(-1), num_rollouts)
    tr = jnp.repeat(t, m * num_rollouts)
    prefix = completions[rows, :e]
    prefix = jnp.where(jnp.arange(e)[None, :] == tr[:, None], v[:, None], prefix)
    ok = continue_fn(sub, rows, prefix, tr + 1, s)
    out.append(jnp.mean(ok.reshape(n, m, num_rollouts).astype(F32), -1))
  return jnp.stack(out, 1)


def left_align(tokens, valid, pad_id=0):
  """Moves each row's valid tokens (in order) to the right end: left padding for the sampler."""
  order = jnp.argsort(valid.astype(jnp.int32), axis=1, stable=True)
  tokens = jnp.take_along_axis(tokens, order, 1)
  valid = jnp.take_along_axis(valid, order, 1)
  return jnp.where(valid, tokens, pad_id), valid


def make_lm_completion(graphdef, params, prompt, prompt_valid, sampling, horizon: int):
  """complete_fn(key, rows, prefix, prefix_len, start) -> (completion int32 [R, horizon], mask
  bool [R, horizon]): row r is prefix[r, :prefix_len[r]] followed by a continuation sampled from
  the model after prompt[rows[r]] ++ that prefix (left-aligned, so one batched sampler call),
  masked after the first stop token (or right after the prefix when its last token is a stop).

  prompt/prompt_valid [N, P]: each chain's student prompt; sampling: SamplingConfig of the
  continuations (max_new_tokens is replaced by horizon - start - 1, static per window)."""
  stop_ids = jnp.asarray(sampling.stop_ids, jnp.int32)

  def complete_fn(key, rows, prefix, prefix_len, start):
    r, e = prefix.shape
    j = jnp.arange(horizon)[None, :]
    pre_valid = jnp.arange(e)[None, :] < prefix_len[:, None]
    last = jnp.take_along_axis(prefix, (prefix_len - 1)[:, None], 1)[:, 0]
    stopped = jnp.isin(last, stop_ids) if sampling.stop_ids else jnp.zeros((r,), bool)
    pre = jnp.take_along_axis(prefix, jnp.broadcast_to(jnp.minimum(j, e - 1), (r, horizon)), 1)
    n_new = horizon - start - 1
    if n_new > 0:
      toks, val = left_align(jnp.concatenate([prompt[rows], prefix], 1),
                             jnp.concatenate([prompt_valid[rows], pre_valid], 1), sampling.pad_id)
      cfg = dataclasses.replace(sampling, max_new_tokens=n_new)
      out = sample(graphdef, params, toks, val, key, cfg)
      ci = jnp.clip(j - prefix_len[:, None], 0, n_new - 1)
      cont = jnp.take_along_axis(out.tokens, ci, 1)
      cmask = jnp.take_along_axis(out.mask, ci, 1) & ~stopped[:, None]
    else:
      cont, cmask = jnp.zeros((r, horizon), jnp.int32), jnp.zeros((r, horizon), bool)
    inside = j < prefix_len[:, None]
    return jnp.where(inside, pre, jnp.where(cmask, cont, sampling.pad_id)), inside | cmask

  return complete_fn


def make_lm_continuation(graphdef, params, prompt, prompt_valid, target, sampling, verifier,
                         horizon: int):
  """continue_fn for `success_at_nodes`: `make_lm_completion` then the jittable token verifier
  `verifier(completion, mask, target[rows])` (target [N, ...]; e.g. verifiers.exact_match_tokens)."""
  complete_fn = make_lm_completion(graphdef, params, prompt, prompt_valid, sampling, horizon)

  def continue_fn(key, rows, prefix, prefix_len, start):
    comp, mask = complete_fn(key, rows, prefix, prefix_len, start)
    return verifier(comp, mask, target[rows])

  return continue_fn


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Budget:
  """Targeted-rollout budget: `num_candidates` student top tokens (+ the sampled one),
  `num_rollouts` continuations per candidate, windows (`first`, `growth`) over [0, horizon)."""
  horizon: int
  num_candidates: int = 4
  num_rollouts: int = 16
  first: int = 1
  growth: float = 2.0

  @property
  def windows(self):
    return depth_windows(self.horizon, self.first, self.growth)

  def rollouts_per_chain(self):
    return len(self.windows) * (self.num_candidates + 1) * self.num_rollouts


def targeted_success(continue_fn, key, student_logits, completions, lengths, budget: Budget):
  """Nodes of every chain: {positions, weights [N, K]; cand, cand_valid, p_succ [N, K, M]}
  (one node per window, candidates, estimated p_succ).

  student_logits [N, C, V] at the completion positions (row t predicts completions[:, t]);
  lengths [N]: rollout lengths (nodes are limited to min(length, horizon))."""
  kn, kr = jax.random.split(key)
  windows = budget.windows
  lengths = jnp.minimum(lengths, budget.horizon)
  positions, weights = select_nodes(kn, lengths, windows)
  c = completions.shape[1]
  if c < budget.horizon:
    completions = jnp.pad(completions, [(0, 0), (0, budget.horizon - c)])
  logp = jax.nn.log_softmax(gather_nodes(student_logits.astype(F32), positions), -1)
  sampled = jnp.take_along_axis(completions, positions, 1)
  cand, cand_valid = candidates(logp, sampled, budget.num_candidates)
  p = success_at_nodes(continue_fn, kr, completions, positions, cand, budget.num_rollouts, windows)
  return dict(positions=positions, weights=weights, cand=cand, cand_valid=cand_valid, p_succ=p)


def node_alignment(nodes, student_logits, teacher_logits, tokens, mask,
                   specs=DEFAULT_OBJECTIVES):
  """Alignment at the nodes: {cos/<label> [N, K], ok/<label> [N, K], pbar, coverage,
  ideal_norm [N, K], p_sampled [N, K]}. ok: the node is scored (weight > 0), the ideal direction
  is non-zero (some candidates differ in p_succ) and the objective's direction is non-zero."""
  pos = nodes["positions"]
  logp = jax.nn.log_softmax(gather_nodes(student_logits.astype(F32), pos), -1)
  ideal, pbar, cov = ideal_logit_grad(logp, nodes["cand"], nodes["cand_valid"], nodes["p_succ"])
  grads = objective_logit_grads(student_logits, teacher_logits, tokens, mask, specs)
  live = nodes["weights"] > 0
  out = {"pbar": pbar, "coverage": cov, "ideal_norm": jnp.linalg.norm(ideal, axis=-1),
         "p_sampled": nodes["p_succ"][..., 0]}
  for label, g in grads.items():
    cos, ok = cosine(ideal, gather_nodes(g, pos))
    out[f"cos/{label}"] = cos
    out[f"ok/{label}"] = ok & live
  return out


# ---------------------------------------------------------------------------------------------
# Brute force in parameter space
# ---------------------------------------------------------------------------------------------

def param_space_cosines(logits_fn, params, rows, positions, ideal, direction, eps=1e-12):
  """Per-node parameter-space cosine cos(J^T g*, J^T d), J = d logits[row, pos] / d params.

  logits_fn(params) -> [N, C, V] (the student's completion logits); rows, positions [K];
  ideal, direction [K, V] (logit-space vectors at those nodes). One VJP per node (vmapped).
  Returns (cos [K], ok [K]) with the convention of `cosine`: ok is False (and cos 0) where the
  logit-space ideal or direction has norm <= eps, so both spaces leave out the same nodes (a
  direction of norm ~1e-13, e.g. e_y - pi at a token the student is sure of, has a
  well-defined but meaningless angle)."""
  out, vjp = jax.vjp(logits_fn, params)
  onehot = (jax.nn.one_hot(rows, out.shape[0], dtype=F32)[:, :, None, None]
            * jax.nn.one_hot(positions, out.shape[1], dtype=F32)[:, None, :, None])

  def pullback(vec):  # [K, V] -> parameter trees with a leading K axis
    return jax.vmap(lambda c: vjp(c.astype(out.dtype))[0])(onehot * vec[:, None, None, :])

  a, b = pullback(ideal), pullback(direction)
  dot = lambda x, y: sum(jnp.sum((u * w).reshape(u.shape[0], -1).astype(F32), -1)
                         for u, w in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
  ok = cosine(ideal, direction, eps)[1]
  cos = dot(a, b) / jnp.maximum(jnp.sqrt(dot(a, a) * dot(b, b)), 1e-30)
  return jnp.where(ok, cos, 0.0), ok


def weighted_mean(x, weights, ok, axis=None):
  """sum(w x) / sum(w) over entries with ok (NaN when there are none)."""
  w = jnp.where(ok, weights, 0.0)
  return jnp.sum(w * jnp.where(ok, x, 0.0), axis) / jnp.where(jnp.sum(w, axis) > 0,
                                                               jnp.sum(w, axis), jnp.nan)
