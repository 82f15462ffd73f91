"""The 1-D continuous control toy of Fu et al. ("Revisiting On-Policy Distillation", arXiv
2603.25562, appendix) for the variance of discounted OPD estimators.

State s_{t+1} = s_t + delta_t, delta_t ~ N(mu, sigma) from an MLP student (inputs: task sign,
s / 3, t / T; 2 tanh layers of 64 -> (mu, sigma = 0.01 + softplus); 4,546 params). Two mirrored
tasks: start +2 target -3 (task 0), start -2 target +3 (task 1), T = 20. Teacher per task (our
choice; the paper leaves it open): q(delta | s, t) = N((target - s) / (T - t), teacher_sigma), the
policy that steers linearly onto the target. Reward -r_t, r_t = log N_pi(delta_t) - log N_q(delta_t).
Discounted estimator: loss = mean_b sum_t -sg(A_t) log pi(delta_t), A_t = -sum_{t'>=t} gamma^(t'-t) r_t'.
Variance (paper's protocol): B = 64 trajectories in M = 8 micro-batches, g_m = gradient of the
micro-batch loss w.r.t. the output layer, Var = mean_m ||g_m - mean_m g_m||^2.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from caopd_jax.objectives.core import discounted_returns

sg = jax.lax.stop_gradient
LOG_2PI = 1.8378770664093453


@dataclasses.dataclass(frozen=True)
class Control:
  horizon: int = 20
  starts: tuple = (2.0, -2.0)
  targets: tuple = (-3.0, 3.0)
  teacher_sigma: float = 0.3
  hidden: int = 64
  min_sigma: float = 0.01


def init_policy(key, env):
  k = jax.random.split(key, 3)
  h = env.hidden
  dense = lambda k, i, o, s=1.0: s * jax.random.normal(k, (i, o)) / jnp.sqrt(i)
  return {"w1": dense(k[0], 3, h), "b1": jnp.zeros(h), "w2": dense(k[1], h, h), "b2": jnp.zeros(h),
          "w_out": dense(k[2], h, 2, 0.01), "b_out": jnp.zeros(2)}


def policy(params, env, task, s, t):
  """(mu, sigma) of the student's step at state s, step t, for task ids (0/1) (broadcastable)."""
  sign, t = jnp.broadcast_arrays(1.0 - 2.0 * task, t)
  x = jnp.stack([sign * jnp.ones_like(s), s / 3.0, t / env.horizon * jnp.ones_like(s)], axis=-1)
  x = jnp.tanh(x @ params["w1"] + params["b1"])
  x = jnp.tanh(x @ params["w2"] + params["b2"])
  out = x @ params["w_out"] + params["b_out"]
  return out[..., 0], env.min_sigma + jax.nn.softplus(out[..., 1])


def teacher(env, task, s, t):
  target = jnp.asarray(env.targets)[task]
  return (target - s) / (env.horizon - t), env.teacher_sigma * jnp.ones_like(s)


def log_normal(x, mu, sigma):
  return -0.5 * ((x - mu) / sigma) ** 2 - jnp.log(sigma) - 0.5 * LOG_2PI


def rollout(params, env, key, task, greedy=False):
  """Trajectories for task ids [B]: (states s_0..s_{T-1} [B, T], deltas [B, T], s_T [B])."""
  s0 = jnp.asarray(env.starts)[task]
  params = sg(params)

  def step(s, xs):
    t, k = xs
    mu, sigma = policy(params, env, task, s, t.astype(jnp.float32))
    delta = mu if greedy else mu + sigma * jax.random.normal(k, s.shape)
    return s + delta, (s, delta)

  ts = jnp.arange(env.horizon)
  s_final, (states, deltas) = jax.lax.scan(step, s0, (ts, jax.random.split(key, env.horizon)))
  return states.T, deltas.T, s_final


def surrogate(params, env, task, states, deltas, gamma):
  """mean_b sum_t -sg(A_t) log pi(delta_t | s_t), A_t = -discounted return of r."""
  t = jnp.arange(env.horizon, dtype=jnp.float32) * jnp.ones_like(states)
  mu, sigma = policy(params, env, task[:, None], states, t)
  logp = log_normal(deltas, mu, sigma)
  mq, sq = teacher(env, task[:, None], states, t)
  r = sg(logp - log_normal(deltas, mq, sq))
  advantage = -discounted_returns(r, gamma)
  return jnp.mean(jnp.sum(-sg(advantage) * logp, axis=1))


@functools.partial(jax.jit, static_argnames=("env", "batch", "micro"))
def output_grad_variance(params, env, key, gamma, batch=64, micro=8):
  """Var = mean_m ||g_m - g_bar||^2 of the output-layer gradient over M micro-batches of B
  trajectories (tasks alternate within the batch)."""
  task = jnp.arange(batch) % 2
  states, deltas, _ = rollout(params, env, key, task)

  def out_grad(i):
    sl = lambda x: jax.lax.dynamic_slice_in_dim(x, i * (batch // micro), batch // micro)
    g = jax.grad(surrogate)(params, env, sl(task), sl(states), sl(deltas), gamma)
    return jnp.concatenate([g["w_out"].ravel(), g["b_out"].ravel()])

  g = jax.vmap(out_grad)(jnp.arange(micro))
  return jnp.mean(jnp.sum((g - g.mean(0)) ** 2, axis=1))


@functools.partial(jax.jit, static_argnames=("env", "steps", "batch", "lr"))
def train(params, env, key, gamma, steps=2000, batch=64, lr=1e-3):
  """Adam distillation, tasks alternating per step. Returns (params, |mean s_T - target| [steps])."""
  opt = optax.adam(lr)

  def step(carry, xs):
    p, o = carry
    i, k = xs
    task = jnp.full((batch,), i % 2)
    states, deltas, s_final = rollout(p, env, k, task)
    g = jax.grad(surrogate)(p, env, task, states, deltas, gamma)
    upd, o = opt.update(g, o, p)
    err = jnp.abs(jnp.mean(s_final) - jnp.asarray(env.targets)[i % 2])
    return (optax.apply_updates(p, upd), o), err

  xs = (jnp.arange(steps), jax.random.split(key, steps))
  (params, _), err = jax.lax.scan(step, (params, opt.init(params)), xs)
  return params, err


def terminal_error(params, env):
  """|s_T - target| of the greedy (mean-action) rollout, per task [2]."""
  task = jnp.arange(2)
  _, _, s_final = rollout(params, env, jax.random.key(0), task, greedy=True)
  return jnp.abs(s_final - jnp.asarray(env.targets))
