"""An exactly enumerable autoregressive student/teacher pair (vocab V, horizon H; V^H sequences).

Student: a tabular policy, theta [P, V] = logits for every prefix (P = sum_{t<H} V^t prefixes).
Teacher: table [P, V] = base_q[t] + coupling * noise[prefix]. With coupling = 0 the teacher's
next-token law ignores earlier choices; larger coupling makes the future KL depend on past tokens,
which is exactly what the token-level (fixed-prefix) gradient drops. Student init:
student_scale * base_p[t] + student_noise * noise'[prefix] (our choices; the reference leaves
them open). Scales matter: vOPD's baseline lowers the variance for a diffuse student and a sharp
teacher (the default) and can raise it when the student is the sharper one.

Exact targets (by enumeration, autodiff in float32):
  sequence_grad: grad_theta KL(pi || q) over whole sequences;
  token_grad:    E_pi[sum_t grad KL_t(c_t)] with the prefix distribution held fixed.
`sample` returns (student_logits, teacher_logits, tokens, mask) in the objectives' format, and
`per_sequence_grads` turns any registry objective into per-sequence gradient estimates (theta-space
via `moments`, `project`, or exactly over all sequences via `exact_moments`).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from caopd_jax.objectives import compute

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class Toy:
  vocab: int = 3
  horizon: int = 4

  @property
  def num_prefixes(self):
    return sum(self.vocab ** t for t in range(self.horizon))

  def prefix_index(self, tokens):
    """Row of theta for each position: index of the prefix y_<t, tokens [..., H] -> [..., H]."""
    v = self.vocab
    idx, code, offset = [], jnp.zeros(tokens.shape[:-1], jnp.int32), 0
    for t in range(self.horizon):
      idx.append(offset + code)
      code = code * v + tokens[..., t].astype(jnp.int32)
      offset += v ** t
    return jnp.stack(idx, axis=-1)

  def depth(self):
    """Position t of every prefix row, [P]."""
    return np.concatenate([np.full(self.vocab ** t, t) for t in range(self.horizon)])

  def all_sequences(self):
    """Every sequence, int32 [V^H, H] (lexicographic)."""
    grid = np.indices((self.vocab,) * self.horizon).reshape(self.horizon, -1).T
    return jnp.asarray(grid, jnp.int32)

  def logits(self, table, tokens):
    """Aligned logits [B, H, V] (position t predicts tokens[:, t]) from a prefix table [P, V]."""
    return table[self.prefix_index(tokens)]


def init_tables(key, toy, coupling=1.0, student_scale=0.5, student_noise=0.0, teacher_scale=2.0):
  """(theta, teacher_table), both float32 [P, V]:
  theta = student_scale * base_p[t] + student_noise * noise[prefix],
  teacher = teacher_scale * base_q[t] + coupling * noise'[prefix], all noises N(0, 1).
  Defaults: a diffuse student and a sharper teacher (the usual start of distillation); with
  student_noise = 0 the student starts prefix-independent, so coupling = 0 gives token-level =
  sequence-level gradient exactly and coupling alone controls the gap."""
  k = jax.random.split(key, 4)
  depth = toy.depth()
  shape = (toy.num_prefixes, toy.vocab)
  base_p = student_scale * jax.random.normal(k[0], (toy.horizon, toy.vocab))
  base_q = teacher_scale * jax.random.normal(k[1], (toy.horizon, toy.vocab))
  theta = base_p[depth] + student_noise * jax.random.normal(k[2], shape)
  teacher = base_q[depth] + coupling * jax.random.normal(k[3], shape)
  return theta, teacher


def _per_token(toy, theta, teacher, tokens):
  logp = jax.nn.log_softmax(toy.logits(theta, tokens), axis=-1)
  logq = jax.nn.log_softmax(toy.logits(teacher, tokens), axis=-1)
  return logp, logq


def sequence_kl(theta, teacher, toy):
  """KL(pi || q) over all V^H sequences."""
  seqs = toy.all_sequences()
  logp, logq = _per_token(toy, theta, teacher, seqs)
  lp = jnp.take_along_axis(logp, seqs[..., None], -1)[..., 0].sum(-1)
  lq = jnp.take_along_axis(logq, seqs[..., None], -1)[..., 0].sum(-1)
  return jnp.sum(jnp.exp(lp) * (lp - lq))


def token_objective(theta, teacher, toy):
  """E_{y ~ sg(pi)}[sum_t KL_t(c_t)]: its gradient is the token-level (fixed-prefix) gradient."""
  seqs = toy.all_sequences()
  logp, logq = _per_token(toy, theta, teacher, seqs)
  lp = jnp.take_along_axis(logp, seqs[..., None], -1)[..., 0].sum(-1)
  kl_t = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1).sum(-1)
  return jnp.sum(sg(jnp.exp(lp)) * kl_t)


@functools.partial(jax.jit, static_argnums=2)
def exact_gradients(theta, teacher, toy):
  """(sequence_grad, token_grad), each [P, V]."""
  return jax.grad(sequence_kl)(theta, teacher, toy), jax.grad(token_objective)(theta, teacher, toy)


def sequence_probs(theta, toy):
  """pi(y) of every sequence in `toy.all_sequences()` order, [V^H]."""
  seqs = toy.all_sequences()
  logp = jax.nn.log_softmax(toy.logits(theta, seqs), axis=-1)
  return jnp.exp(jnp.take_along_axis(logp, seqs[..., None], -1)[..., 0].sum(-1))


@functools.partial(jax.jit, static_argnums=(3, 4))
def sample(key, theta, teacher, toy, batch):
  """B sequences y ~ pi; returns (student_logits, teacher_logits, tokens, mask) in the objectives'
  format ([B, H, V], [B, H, V], int32 [B, H], bool [B, H])."""
  tokens = jnp.zeros((batch, toy.horizon), jnp.int32)
  for t, k in enumerate(jax.random.split(key, toy.horizon)):
    rows = toy.prefix_index(tokens)[:, t]
    tokens = tokens.at[:, t].set(jax.random.categorical(k, theta[rows]))
  return (toy.logits(theta, tokens), toy.logits(teacher, tokens), tokens,
          jnp.ones(tokens.shape, bool))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def per_sequence_grads(name, theta, teacher, toy, hparams, tokens):
  """Per-sequence gradient estimates of registry objective `name`, in logit space.

  The loss is compute(name, ..., reduction="sequence_sum") on the batch tokens [N, H], so the
  estimate from sequence b is g_b = N * dloss/dlogits[b] ([N, H, V]); its theta-gradient puts
  g_b[t] on row prefix_index(tokens)[b, t] (each sequence visits a row at most once).
  hparams: tuple of (name, value) pairs (static).
  """
  n = tokens.shape[0]

  def loss(student_logits):
    return compute(name, student_logits, toy.logits(teacher, tokens), tokens,
                   jnp.ones(tokens.shape, bool), reduction="sequence_sum", **dict(hparams))[0]

  return n * jax.grad(loss)(toy.logits(theta, tokens))


def moments(toy, g, tokens, weights):
  """(mean [P, V], per-coordinate second moment [P, V]) of theta-space estimates g [N, H, V]
  with sample weights [N] (1/N for Monte Carlo; pi(y) over `all_sequences` for exact moments)."""
  rows = toy.prefix_index(tokens).reshape(-1)
  w = jnp.broadcast_to(weights[:, None, None], g.shape).reshape(-1, toy.vocab)
  g = g.reshape(-1, toy.vocab)
  zeros = jnp.zeros((toy.num_prefixes, toy.vocab), jnp.float32)
  return zeros.at[rows].add(w * g), zeros.at[rows].add(w * g * g)


def project(toy, g, tokens, directions):
  """<u_k, g_b> in theta-space for directions [K, P, V] -> [N, K]."""
  return jnp.einsum("nhv,knhv->nk", g, directions[:, toy.prefix_index(tokens)])


def exact_moments(name, theta, teacher, toy, hparams=()):
  """Exact (mean, trace of covariance) of the per-sequence estimator, by enumeration."""
  seqs = toy.all_sequences()
  g = per_sequence_grads(name, theta, teacher, toy, tuple(hparams), seqs)
  mean, second = moments(toy, g, seqs, sequence_probs(theta, toy))
  return mean, jnp.sum(second) - jnp.sum(mean ** 2)
