"""Full-vocabulary (analytic-gradient) OPD objectives on student-sampled prefixes.

loss_t is a divergence between pi(.|c_t) and the detached q(.|c_t), differentiated through the
student's whole distribution (no score function); its gradient at a prefix is exact, so e.g.
full_reverse is the zero-variance (per prefix) version of token_sampled's token-level gradient.
"""
import jax

from caopd_jax.objectives import stats as st
from caopd_jax.objectives.base import Objective

sg = jax.lax.stop_gradient


def _stats(logp, logq, tokens, loss_t, **extra):
  return {"logp_y": sg(st.gather(logp, tokens)), "logq_y": st.gather(logq, tokens),
          "kl": sg(st.reverse_kl(logp, logq)), "loss_t": loss_t, **extra}


def _loss(stats, mask, **_):
  del mask
  return stats["loss_t"], {k: v for k, v in stats.items() if k.startswith("kl_")}


def full_reverse_stats(logp, logq, tokens):
  """loss_t = KL_t(pi || q) = sum_v pi(v) [log pi(v) - log q(v)] (MiniLLM single-step; GKD beta=1)."""
  return _stats(logp, logq, tokens, st.reverse_kl(logp, logq))


def full_forward_stats(logp, logq, tokens):
  """loss_t = KL_t(q || pi) = sum_v q(v) [log q(v) - log pi(v)] (CaOPD/SDFT code default; GKD
  beta=0)."""
  fwd = st.forward_kl(logp, logq)
  return _stats(logp, logq, tokens, fwd, kl_forward=sg(fwd))


def gjsd_stats(logp, logq, tokens, beta=0.5):
  """loss_t = beta KL(P || M) + (1-beta) KL(Q || M), M = beta P + (1-beta) Q, P = teacher,
  Q = student (GKD, Agarwal et al. ICLR 2024); beta=0 -> KL(q || pi), beta=1 -> KL(pi || q)
  exactly. Interior values shrink in scale near the endpoints (~beta KL(q||pi) near 0)."""
  return _stats(logp, logq, tokens, st.gjsd(logp, logq, beta))


def topk_reverse_stats(logp, logq, tokens, k=32):
  """Teacher top-K local support matching (Fu et al., arXiv 2603.25562): S_t = teacher's top-k
  tokens, pi_hat, q_hat = pi, q renormalised inside S_t,
  loss_t = sum_{v in S_t} pi_hat(v) [log pi_hat(v) - log sg(q_hat(v))]."""
  idx = st.top_k_indices(logq, k)
  return _stats(logp, logq, tokens, st.renormalised_reverse_kl(logp, logq, idx))


def mix_stats(logp, logq, tokens, lam=0.5):
  """loss_t = lam KL_t(pi || q) + (1 - lam) KL_t(q || pi) ("Decoupling KL and Trajectories",
  arXiv 2605.16826)."""
  rev, fwd = st.reverse_kl(logp, logq), st.forward_kl(logp, logq)
  return _stats(logp, logq, tokens, lam * rev + (1 - lam) * fwd, kl_forward=sg(fwd))


FULL_REVERSE = Objective("full_reverse", full_reverse_stats, _loss, (), full_reverse_stats.__doc__)
FULL_FORWARD = Objective("full_forward", full_forward_stats, _loss, (), full_forward_stats.__doc__)
GJSD = Objective("gjsd", gjsd_stats, _loss, (("beta", 0.5),), gjsd_stats.__doc__)
TOPK_REVERSE = Objective("topk_reverse", topk_reverse_stats, _loss, (("k", 32),),
                         topk_reverse_stats.__doc__)
MIX = Objective("mix", mix_stats, _loss, (("lam", 0.5),), mix_stats.__doc__)
