"""Score-function (sampled-token) OPD estimators.

Each is a surrogate loss_t = -sg(A_t) log pi(y_t | c_t) whose gradient is the estimator
-A_t grad log pi(y_t | c_t), with r_t = sg(log pi(y_t | c_t) - log q(y_t | c_t)) the sampled
log-ratio (a reward of -r_t; never differentiated). Identity used throughout:
E_{y_t ~ pi}[r_t grad log pi(y_t)] = grad KL_t(c_t) at a fixed prefix c_t.
"""
import jax

from caopd_jax.objectives import core, stats as st
from caopd_jax.objectives.base import Objective

sg = jax.lax.stop_gradient


def sampled_stats(logp, logq, tokens, **_):
  """log pi(y_t) (differentiable), log q(y_t) and the full-vocabulary KL_t (both detached)."""
  return {"logp_y": st.gather(logp, tokens), "logq_y": st.gather(logq, tokens),
          "kl": sg(st.reverse_kl(logp, logq))}


def _surrogate(advantage, stats):
  return -sg(advantage) * stats["logp_y"], {"advantage": advantage}


def _masked_ratio(stats, mask):
  return sg(stats["logp_y"] - stats["logq_y"]) * mask


def token_sampled_loss(stats, mask):
  """Sampled-token OPD (Thinking Machines / Tinker; gamma = 0 of Fu et al., arXiv 2603.25562).

  A_t = -r_t;  grad = E[sum_t r_t grad log pi(y_t)] = E[sum_t grad KL_t(c_t)] (token-level,
  fixed-prefix gradient). Biased for the sequence-level grad KL(pi || q) (drops the future).
  """
  return _surrogate(-_masked_ratio(stats, mask), stats)


def discounted_loss(stats, mask, gamma=1.0):
  """Discounted-return OPD (Fu et al., "Revisiting On-Policy Distillation", arXiv 2603.25562).

  A_t = -sum_{t' >= t} gamma^(t'-t) r_t' over the valid tokens of the row (position distance).
  gamma = 0 is token_sampled; gamma = 1 is the unbiased sequence-level estimator
  grad KL(pi(.|x) || q(.|x)) = E[sum_t (sum_{t'>=t} r_t') grad log pi(y_t)] (with
  reduction="sequence_sum").
  """
  return _surrogate(-core.discounted_returns(_masked_ratio(stats, mask), gamma), stats)


def sequence_loss(stats, mask):
  """Sequence-level OPD: discounted with gamma = 1 (unbiased for the sequence reverse KL when
  reduced with "sequence_sum"; variance grows ~T^4)."""
  return discounted_loss(stats, mask, gamma=1.0)


def vopd_stats(logp, logq, tokens, baseline_top_k=None):
  """sampled_stats plus the detached baseline b_t (full-vocabulary KL_t, or the student-top-k
  renormalised KL when baseline_top_k is an int)."""
  out = sampled_stats(logp, logq, tokens)
  if baseline_top_k is None:
    out["baseline"] = out["kl"]
  else:
    idx = st.top_k_indices(logp, baseline_top_k)
    out["baseline"] = sg(st.renormalised_reverse_kl(logp, logq, idx))
  return out


def vopd_loss(stats, mask, baseline_top_k=None):
  """vOPD, "KL for a KL: On-Policy Distillation with Control Variate Baseline" (arXiv 2605.07865).

  The OPD value function has the closed form V(c_t) = -KL_t(c_t), so with b_t = sg(KL_t):
    A_t = -(r_t - b_t),  loss_t = sg(r_t - b_t) log pi(y_t),  grad_t = (r_t - b_t) grad log pi(y_t).
  Unbiased for grad KL_t(c_t): b_t depends on the prefix only and is detached, so the baseline
  term's expectation is exactly E_{y~pi}[b_t grad log pi(y)] = b_t grad sum_v pi(v) = 0.
  (Differentiating b_t would add -log pi(y_t) grad KL_t, of mean H_t grad KL_t != 0; a b_t that
  depends on y_t is biased too.) Lower variance than token_sampled since b_t = E[r_t | c_t].
  baseline_top_k=k: b_t from pi and q renormalised over the student's top-k tokens (the paper's
  cheaper variant; still prefix-only, hence still unbiased).
  """
  del baseline_top_k
  a = -(_masked_ratio(stats, mask) - stats["baseline"] * mask)
  loss, extra = _surrogate(a, stats)
  return loss, {**extra, "baseline": stats["baseline"]}


TOKEN_SAMPLED = Objective("token_sampled", sampled_stats, token_sampled_loss, (),
                          token_sampled_loss.__doc__)
SEQUENCE = Objective("sequence", sampled_stats, sequence_loss, (), sequence_loss.__doc__)
DISCOUNTED = Objective("discounted", sampled_stats, discounted_loss, (("gamma", 1.0),),
                       discounted_loss.__doc__)
VOPD = Objective("vopd", vopd_stats, vopd_loss, (("baseline_top_k", None),), vopd_loss.__doc__)
