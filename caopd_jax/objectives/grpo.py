"""GRPO: group-normalised verifier rewards, PPO-clipped (Shao et al. 2024, DeepSeekMath,
arXiv 2402.03300), in the OPD registry so it runs in the same iteration and train step.

  A_i    = (R_i - mean_g R) / (std_g R + eps)   over the K rollouts g of row i's prompt
           (std unbiased, as TRL; scale_rewards=False: A_i = R_i - mean_g R, "Dr. GRPO")
  rho_t  = exp(log pi(y_t) - log mu(y_t))        mu: the sampler (old_logprobs; None: rho = 1
                                                 with the gradient of log pi, i.e. exactly
                                                 on-policy)
  loss_t = -min(rho_t A_i, clip(rho_t, 1 - clip_low, 1 + clip_high) A_i) + kl_coef k3_t
  k3_t   = q(y_t)/pi(y_t) - log(q(y_t)/pi(y_t)) - 1   (Schulman's k3 estimator of KL(pi || q);
                                                 q: the teacher slot, the reference policy)

With old_logprobs = sg(log pi) the gradient is -A_i grad log pi(y_t): with "sequence_sum" and
scale_rewards=False its expectation is (K-1)/K grad E[R] (the group mean includes the row's own
reward; tests/test_grpo.py checks this exactly on the enumerable toy).
The iteration supplies the rewards (caopd_jax.opd.iteration: batch "rewards" [N] and
"group_rewards" [N, K], the row's own group), so microbatches need not hold whole groups.
"""
import jax
import jax.numpy as jnp

from caopd_jax.objectives.base import Objective
from caopd_jax.objectives.sampled import sampled_stats

sg = jax.lax.stop_gradient
F32 = jnp.float32


def group_advantages(rewards, group_rewards, scale_rewards=True, eps=1e-4):
  """A [N] from each row's reward [N] and its group's rewards [N, K] (float32)."""
  rewards, group_rewards = rewards.astype(F32), group_rewards.astype(F32)
  a = rewards - jnp.mean(group_rewards, axis=-1)
  if scale_rewards:
    a = a / (jnp.std(group_rewards, axis=-1, ddof=1) + eps)
  return a


def grpo_loss(stats, mask, rewards=None, group_rewards=None, old_logprobs=None, clip_low=0.2,
              clip_high=0.2, kl_coef=0.0, scale_rewards=True):
  if rewards is None or group_rewards is None:
    raise ValueError("grpo needs rewards [N] and group_rewards [N, K] (the OPD iteration "
                     "supplies them from the verifier; call compute(..., rewards=, group_rewards=)).")
  adv = group_advantages(rewards, group_rewards, scale_rewards)[:, None]  # [N, 1]
  logp = stats["logp_y"]
  old = sg(logp) if old_logprobs is None else old_logprobs.astype(F32)
  ratio = jnp.exp(logp - old)
  clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  per_token = -jnp.minimum(ratio * adv, clipped * adv)
  log_ref_ratio = stats["logq_y"] - logp  # log q/pi, q detached
  k3 = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0
  if kl_coef:
    per_token = per_token + kl_coef * k3
  sr = sg(ratio)
  extra = {"advantage": jnp.broadcast_to(sg(adv), logp.shape), "ratio": sr,
           "clip_fraction": ((sr < 1.0 - clip_low) | (sr > 1.0 + clip_high)).astype(F32),
           "kl_ref_k3": sg(k3)}
  return jnp.where(mask, per_token, 0.0), extra


GRPO = Objective(
    "grpo", sampled_stats, grpo_loss,
    defaults=(("rewards", None), ("group_rewards", None), ("old_logprobs", None),
              ("clip_low", 0.2), ("clip_high", 0.2), ("kl_coef", 0.0), ("scale_rewards", True)),
    doc=__doc__,
    batch_inputs=(("rewards", "rewards"), ("group_rewards", "group_rewards"),
                  ("old_logprobs", "behavior_logprobs")))
