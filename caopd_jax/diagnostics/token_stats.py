"""Per-token training diagnostics from student and teacher logits, chunk-wise.

Per token (position t of the completion, y_t the token in the batch):
  student_entropy    H(pi(.|c_t))
  teacher_entropy    H(q(.|c_t))
  teacher_topk_mass  q mass on the teacher's top-K tokens S_q
  student_on_teacher_topk  pi mass on S_q
  topk_overlap       |S_pi ∩ S_q| / K (S_pi: the student's top-K)
  log_ratio          r_t = log pi(y_t) - log q(y_t) (the sampled-token OPD "cost"; r_t > 0 is a
                     negative reward -r_t)
  kl_reverse, kl_forward  full-vocabulary KL(pi || q), KL(q || pi)
`TokenDiagnostics.token_stats` has the signature of `Objective.token_stats`, so
`objectives.chunked.chunked_token_stats` evaluates it chunk by chunk from hidden states (no
[B, T, V] buffer). `summarize` reduces over the loss mask to scalars `diag/...`, including the
fraction of negative rewards (r_t > 0) and the mean r_t per position bucket
(`diag/log_ratio_pos{a}-{b}`: completion columns a <= t < b, geometric edges by default).
Nothing here is differentiated.
"""

import dataclasses

import jax
import jax.numpy as jnp

from caopd_jax.objectives import chunked, core, stats as st

F32 = jnp.float32
sg = jax.lax.stop_gradient
DEFAULT_TOP_K = 8
DEFAULT_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
STATS = ("student_entropy", "teacher_entropy", "teacher_topk_mass", "student_on_teacher_topk",
         "topk_overlap", "log_ratio", "kl_reverse", "kl_forward")


def entropy(logp):
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


@dataclasses.dataclass(frozen=True)
class TokenDiagnostics:
  """Per-token statistics (dict of float32 [B, T]) from aligned logits [B, T, V]."""
  top_k: int = DEFAULT_TOP_K
  temperature: float = 1.0

  def token_stats(self, student_logits, teacher_logits, tokens, **_):
    logp = st.log_probs(sg(student_logits), self.temperature)
    logq = st.log_probs(sg(teacher_logits), self.temperature)
    k = min(self.top_k, logp.shape[-1])
    iq = jax.lax.top_k(logq, k)[1]
    ip = jax.lax.top_k(logp, k)[1]
    overlap = jnp.sum(jnp.any(ip[..., :, None] == iq[..., None, :], axis=-1), -1) / k
    return {
        "student_entropy": entropy(logp),
        "teacher_entropy": entropy(logq),
        "teacher_topk_mass": jnp.sum(jnp.exp(jnp.take_along_axis(logq, iq, -1)), -1),
        "student_on_teacher_topk": jnp.sum(jnp.exp(jnp.take_along_axis(logp, iq, -1)), -1),
        "topk_overlap": overlap.astype(F32),
        "log_ratio": st.gather(logp, tokens) - st.gather(logq, tokens),
        "kl_reverse": st.reverse_kl(logp, logq),
        "kl_forward": st.forward_kl(logp, logq),
    }


def buckets_for(width: int, edges=DEFAULT_BUCKETS):
  """((a, b), ...) position buckets covering [0, width) (the last one is closed at width)."""
  edges = sorted(set(int(e) for e in edges if e < width) | {0})
  return tuple(zip(edges, edges[1:] + [width]))


def summarize(stats, mask, buckets=None, prefix="diag/"):
  """Scalars over the tokens of `mask` [B, T]: token means of every statistic,
  neg_reward_frac = mean 1[r_t > 0], and log_ratio_pos{a}-{b} per position bucket
  (0 when a bucket holds no token). buckets: ((a, b), ...) or None for `buckets_for(T)`."""
  mask = mask.astype(bool)
  out = {f"{prefix}{k}": core.token_mean(sg(v), mask) for k, v in stats.items()}
  r = sg(stats["log_ratio"])
  out[f"{prefix}neg_reward_frac"] = core.token_mean((r > 0).astype(F32), mask)
  t = jnp.arange(mask.shape[1])[None, :]
  for a, b in (buckets if buckets is not None else buckets_for(mask.shape[1])):
    out[f"{prefix}log_ratio_pos{a}-{b}"] = core.token_mean(r, mask & (t >= a) & (t < b))
  return out


def compute(student_logits, teacher_logits, tokens, mask, *, top_k=DEFAULT_TOP_K,
            temperature=1.0, special_token_ids=(), skip_first=0, buckets=None, **_):
  """`summarize` of the per-token diagnostics from logits [B, T, V] (unchunked reference)."""
  d = TokenDiagnostics(top_k, temperature)
  m = core.effective_mask(mask, tokens, special_token_ids, skip_first)
  return summarize(d.token_stats(student_logits, teacher_logits, tokens), m, buckets)


def chunked_metrics(student_h, student_kernel, teacher_h, teacher_kernel, tokens, mask, *,
                    chunk_size=256, top_k=DEFAULT_TOP_K, temperature=1.0, special_token_ids=(),
                    skip_first=0, buckets=None, **_):
  """`compute` on logits h @ kernel without materialising [B, T, V] (chunks of chunk_size
  positions, `objectives.chunked.chunked_token_stats`). The mask rules (special_token_ids,
  skip_first) are the objectives'; other objective hparams (e.g. reduction) are ignored."""
  d = TokenDiagnostics(top_k, temperature)
  s = chunked.chunked_token_stats(d, sg(student_h), sg(student_kernel), sg(teacher_h),
                                  sg(teacher_kernel), tokens, chunk_size)
  m = core.effective_mask(mask, tokens, special_token_ids, skip_first)
  return summarize(s, m, buckets)
