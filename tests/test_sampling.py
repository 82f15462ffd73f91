"""Sampler: empirical frequencies vs the truncated distribution, log-probs, keys, P_acc."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from caopd_jax.models import ModelConfig, Transformer
from caopd_jax.rollouts import rollouts
from caopd_jax.sampling import (SamplingConfig, sample, sample_token, truncate_logits,
                                valid_from_lengths)

LOGITS = np.array([2.0, 1.7, 1.5, 1.2, 1.0, 0.4, 0.3, 0.0, -0.5, -1.0, -2.0, -3.0], np.float32)


def reference_dist(logits, temperature, top_k=0, top_p=1.0):
  """Sort-based reference: temperature, then top-k, then the smallest prefix with mass >= p."""
  z = logits.astype(np.float64) / temperature
  order = np.argsort(-z, kind="stable")
  keep = np.zeros(len(z), bool)
  keep[order[: top_k or len(z)]] = True
  p = np.where(keep, np.exp(z - z.max()), 0.0)
  p /= p.sum()
  mass_before = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
  nucleus = np.zeros(len(z), bool)
  nucleus[order[mass_before < top_p]] = True
  p = np.where(keep & nucleus, p, 0.0)
  return p / p.sum()


def draw(cfg, n=40000, logits=LOGITS):
  keys = jax.random.split(jax.random.key(1234), n)
  tok, logp, plogp = jax.jit(jax.vmap(lambda k: sample_token(k, jnp.asarray(logits), cfg)))(keys)
  return np.asarray(tok), np.asarray(logp), np.asarray(plogp)


def chi2_pvalue(counts, probs):
  support = probs > 0
  assert counts[~support].sum() == 0, "sampled a token outside the truncated support"
  return stats.chisquare(counts[support], counts.sum() * probs[support]).pvalue


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (1.0, 8, 0.6), (2.0, 0, 0.95)])
def test_frequencies_match_truncated_distribution(temperature, top_k, top_p):
  cfg = SamplingConfig(max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p)
  tok, logp, plogp = draw(cfg)
  counts = np.bincount(tok, minlength=len(LOGITS))
  probs = reference_dist(LOGITS, temperature, top_k, top_p)
  assert chi2_pvalue(counts, probs) > 1e-3
  np.testing.assert_allclose(logp, np.log(probs[tok]), atol=1e-5)
  np.testing.assert_allclose(plogp, np.log(reference_dist(LOGITS, 1.0)[tok]), atol=1e-5)
  # Power: the same counts reject a nucleus one token too large or too small, and no truncation.
  n_keep = int((probs > 0).sum())
  wrong = [reference_dist(LOGITS, temperature * 1.15, top_k, top_p)]
  if top_p < 1 or top_k:
    wrong += [reference_dist(LOGITS, temperature),
              reference_dist(LOGITS, temperature, top_k=n_keep + 1),
              reference_dist(LOGITS, temperature, top_k=max(n_keep - 1, 1))]
  for w in wrong:
    assert rejects(counts, w)


def rejects(counts, probs):
  return counts[probs == 0].sum() > 0 or chi2_pvalue(counts, probs) < 1e-6


def test_top_p_near_uniform_large_vocab():
  logits = np.random.RandomState(0).normal(0, 0.05, 512).astype(np.float32)
  cfg = SamplingConfig(max_new_tokens=1, top_p=0.9)
  keep = np.asarray(jax.jit(lambda l: jnp.isfinite(truncate_logits(l, cfg)))(jnp.asarray(logits)))
  np.testing.assert_array_equal(keep, reference_dist(logits, 1.0, top_p=0.9) > 0)


@pytest.fixture(scope="module")
def tiny():
  model = Transformer(ModelConfig.tiny("qwen3", vocab_size=40), rngs=nnx.Rngs(3))
  graphdef, params = nnx.split(model)
  lens = np.array([6, 3, 1, 6])
  valid = valid_from_lengths(lens, 6)
  prompt = jnp.where(valid, jax.random.randint(jax.random.key(0), (4, 6), 3, 40), 0)
  return model, graphdef, params, prompt, valid


def test_logprobs_equal_recomputed(tiny):
  model, graphdef, params, prompt, valid = tiny
  cfg = SamplingConfig(max_new_tokens=9, temperature=0.8, top_k=20, top_p=0.9)
  out = sample(graphdef, params, prompt, valid, jax.random.key(7), cfg)
  full = jnp.concatenate([prompt, out.tokens], 1)
  logits = np.asarray(model(full, valid=jnp.concatenate([valid, out.mask], 1)))[:, 5:-1]
  tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
  for b in range(4):
    for t in range(9):
      if not mask[b, t]:
        continue
      ref_pol = reference_dist(logits[b, t], 1.0)[tokens[b, t]]
      ref_smp = reference_dist(logits[b, t], 0.8, 20, 0.9)[tokens[b, t]]
      assert abs(out.policy_logprobs[b, t] - np.log(ref_pol)) < 1e-4
      assert abs(out.logprobs[b, t] - np.log(ref_smp)) < 1e-4


def test_same_key_same_samples_and_no_recompile(tiny):
  _, graphdef, params, prompt, valid = tiny
  cfg = SamplingConfig(max_new_tokens=8, top_p=0.9)
  a = sample(graphdef, params, prompt, valid, jax.random.key(1), cfg)
  size = sample._cache_size()
  b = sample(graphdef, params, prompt, valid, jax.random.key(1), cfg)
  c = sample(graphdef, params, prompt + 0, valid, jax.random.key(2), cfg)
  assert sample._cache_size() == size
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def test_stop_ids_mask_and_padding(tiny):
  _, graphdef, params, prompt, valid = tiny
  stop = (5, 6, 7, 8, 9, 10)
  out = sample(graphdef, params, prompt, valid, jax.random.key(3),
               SamplingConfig(max_new_tokens=30, stop_ids=stop, pad_id=0))
  tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
  stopped = 0
  for b in range(4):
    hits = np.flatnonzero(np.isin(tokens[b], stop))
    end = hits[0] + 1 if len(hits) else 30
    stopped += bool(len(hits))
    assert mask[b].tolist() == [True] * end + [False] * (30 - end)
    assert (tokens[b, end:] == 0).all() and out.lengths[b] == end
    assert (np.asarray(out.logprobs)[b, end:] == 0).all()
  assert stopped >= 2


def first_token_is(tokens, mask, target):
  return (tokens[:, 0] == target[:, 0]) & mask[:, 0]


def test_p_acc_is_fraction_of_verified_rollouts(tiny):
  _, graphdef, params, prompt, valid = tiny
  k = 8
  cfg = SamplingConfig(max_new_tokens=3, temperature=1.5)
  targets = jnp.arange(4)[:, None] + 10
  r = rollouts(graphdef, params, prompt, valid, targets, jax.random.key(5), cfg, k, first_token_is)
  first = np.asarray(r.samples.tokens)[:, 0].reshape(4, k)
  expected = (first == np.asarray(targets)).mean(1)
  np.testing.assert_array_equal(np.asarray(r.correct), first == np.asarray(targets))
  np.testing.assert_allclose(np.asarray(r.p_acc), expected)
  assert set(np.round(np.asarray(r.p_acc) * k, 6)) <= set(range(k + 1))
  # Rollouts of the same prompt differ (independent keys per row).
  assert len({tuple(t) for t in np.asarray(r.samples.tokens)[:k]}) > 1
