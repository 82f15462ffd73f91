"""K rollouts per prompt, verification and the Monte Carlo confidence P_acc, in one jit.

CaOPD (Zhang et al. 2026, arXiv 2604.16830), step 2: the deployment-time confidence target
c*(x) = E_{y ~ pi(.|x)} 1[correct(y)] is estimated by P_acc(x) = (1/K) sum_k 1[correct(y_k)],
shared by all K rollouts of the prompt (no leave-one-out), so P_acc lies in {0, 1/K, ..., 1}.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from caopd_jax.sampling import SampleOutput, SamplingConfig, sample

# verifier(completion_tokens [N, L], mask [N, L], target [N, ...]) -> bool [N]; must be jittable.
Verifier = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class Rollouts(NamedTuple):
  samples: SampleOutput  # rows ordered prompt-major: row b*K + k is rollout k of prompt b
  correct: jax.Array  # bool [B, K]
  p_acc: jax.Array  # float32 [B]


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "num_samples", "verifier"))
def rollouts(graphdef, params, prompt, prompt_valid, targets, key, cfg: SamplingConfig,
             num_samples: int, verifier: Verifier) -> Rollouts:
  """Draws `num_samples` completions per prompt [B, P], verifies them against `targets` [B, ...]."""
  rep = lambda x: jnp.repeat(x, num_samples, axis=0)
  out = sample(graphdef, params, rep(prompt), rep(prompt_valid), key, cfg)
  correct = verifier(out.tokens, out.mask, rep(targets)).reshape(prompt.shape[0], num_samples)
  return Rollouts(out, correct, jnp.mean(correct.astype(jnp.float32), axis=-1))
