"""Sampler: empirical frequencies vs the truncated distribution, log-probs, keys, P_acc."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from caopd_jax.models import ModelConfig, Transformer
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


@pytest.mark.parametrize("segments", [1, 4])
def test_logprobs_equal_recomputed(tiny, segments):
  model, graphdef, params, prompt, valid = tiny
  cfg = SamplingConfig(max_new_tokens=9, temperature=0.8, top_k=20, top_p=0.9,
                       decode_segments=segments)
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


@pytest.mark.parametrize("segments,new_tokens", [(7, 30), (5, 3)])
def test_segmented_decoding_matches_one_loop(tiny, segments, new_tokens):
  """Segments only drop cache slots no step can see yet: same tokens, masks and log-probs, with
  stops that fall inside and across segments (5 segments for 3 tokens: one token each)."""
  _, graphdef, params, prompt, valid = tiny
  base = dict(max_new_tokens=new_tokens, top_p=0.9, stop_ids=(5, 6, 7, 8), pad_id=0)
  ref = sample(graphdef, params, prompt, valid, jax.random.key(5), SamplingConfig(**base))
  got = sample(graphdef, params, prompt, valid, jax.random.key(5),
               SamplingConfig(**base, decode_segments=segments))
  if new_tokens > 3:
    assert 1 < int(ref.lengths.min()) < new_tokens  # rows stop at intermediate steps
  # The segments really exist: the compiled graph holds a key cache for each segment's length
  # (prompt 6 + segment end), and the one-loop graph only the full one.
  cfg = SamplingConfig(**base, decode_segments=segments)
  text = sample.lower(graphdef, params, prompt, valid, jax.random.key(5), cfg).as_text()
  seg = -(-new_tokens // segments)
  ends = sorted({min(new_tokens, seg * (j + 1)) for j in range(segments)})
  shape = lambda end: f"tensor<4x2x8x{6 + end}xf32>"  # [B, Hkv, Dh, S] of the tiny model
  assert all(shape(e) in text for e in ends), ends
  one = sample.lower(graphdef, params, prompt, valid, jax.random.key(5),
                     SamplingConfig(**base)).as_text()
  assert shape(ends[0]) not in one
  np.testing.assert_array_equal(got.tokens, ref.tokens)
  np.testing.assert_array_equal(got.mask, ref.mask)
  np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-5)
  np.testing.assert_allclose(got.policy_logprobs, ref.policy_logprobs, atol=1e-5)


def test_grow_cache_pads_empty_slots_and_rejects_shrinking():
  from caopd_jax.models.transformer import grow_cache, init_cache  # pylint: disable=g-import-not-at-top
  cfg = ModelConfig.tiny()
  cache = init_cache(cfg, 2, 5)
  cache = {**cache, "k": [k + 1 for k in cache["k"]], "valid": cache["valid"].at[:, :3].set(True),
           "index": jnp.int32(3)}
  big = grow_cache(cache, 8)
  assert big["k"][0].shape[-1] == 8 and big["v"][0].shape[-2] == 8 and big["valid"].shape == (2, 8)
  np.testing.assert_array_equal(big["k"][0][..., :5], cache["k"][0])
  assert float(jnp.abs(big["k"][0][..., 5:]).max()) == 0 and not bool(big["valid"][:, 5:].any())
  assert int(big["index"]) == 3
  with pytest.raises(ValueError, match="more than 4"):
    grow_cache(cache, 4)
  with pytest.raises(ValueError, match="decode_segments"):
    SamplingConfig(max_new_tokens=4, decode_segments=0)


def test_p_acc_is_fraction_of_verified_rollouts(tiny):
  """K rollouts per prompt through the iteration; P_acc (rollout/accuracy per prompt) is the
  fraction the verifier accepts; rollouts of one prompt differ."""
  import types  # pylint: disable=g-import-not-at-top
  from caopd_jax import contexts  # pylint: disable=g-import-not-at-top
  from caopd_jax.opd.iteration import Iteration  # pylint: disable=g-import-not-at-top
  from caopd_jax.opd.verify import Verdict  # pylint: disable=g-import-not-at-top
  _, graphdef, params, prompt, valid = tiny
  k = 8
  cfg = SamplingConfig(max_new_tokens=3, temperature=1.5)
  targets = jnp.arange(4)[:, None] + 10

  def first_token_is(p, s):
    ok = (s.tokens[:, 0] == jnp.repeat(p["target"][:, 0], k)) & s.mask[:, 0]
    return Verdict(ok.reshape(-1, k), s.tokens, s.lengths, {})

  it = Iteration(graphdef, None, None, first_token_is, contexts.get("none"), None, k, cfg)
  p = {"student_prompt": prompt, "student_valid": valid, "target": targets}
  roll = jax.jit(lambda params, p, key: it.rollout(types.SimpleNamespace(params=params, frozen=None), p, key))
  samples, verdict = roll(params, p, jax.random.key(5))
  first = np.asarray(samples.tokens)[:, 0].reshape(4, k)
  np.testing.assert_array_equal(np.asarray(verdict.correct), first == np.asarray(targets))
  assert samples.tokens.shape == (4 * k, 3)
  # Rollouts of the same prompt differ (independent keys per row).
  assert len({tuple(t) for t in np.asarray(samples.tokens)[:k]}) > 1


def nucleus_by_definition(logits, top_p):
  """float64 reference: keep v iff the mass of tokens with strictly larger logits is < top_p."""
  z = logits.astype(np.float64)
  p = np.exp(z - z.max())
  p /= p.sum()
  order = np.argsort(-z, kind="stable")
  zs, cum = z[order], np.concatenate([[0.0], np.cumsum(p[order])])
  first = np.searchsorted(-zs, -zs, side="left")  # first sorted index with an equal logit
  keep = np.zeros(len(z), bool)
  keep[order] = cum[first] < top_p
  return keep


def _nucleus_cases(vocab=1024):
  rs = np.random.RandomState(0)
  rows = [rs.normal(0, s, vocab) for s in (0.01, 0.05, 0.3)]  # near-uniform
  rows += [rs.normal(0, s, vocab) for s in (3.0, 8.0)]  # peaked
  rows.append(np.where(np.arange(vocab) < 3, 12.0, rs.normal(0, 1, vocab)))  # 3 dominant tokens
  rows.append(np.round(rs.normal(0, 1, vocab), 1))  # many exact ties
  # Near-ties at the boundary: most of the mass on logits one float32 ulp apart near 1e-3, next
  # to a range of 4 (a float bisection of [min, max] with 32 halvings cannot separate them).
  rows.append(np.concatenate([[2.0, -2.0], 1e-3 + np.arange(vocab - 2) * 1.2e-10]))
  return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.97])
def test_nucleus_exact_on_peaked_uniform_and_near_tie_rows(top_p):
  rows = _nucleus_cases()
  cfg = SamplingConfig(max_new_tokens=1, top_p=top_p)
  keep = np.asarray(jax.jit(lambda l: jnp.isfinite(truncate_logits(l, cfg)))(jnp.asarray(rows)))
  for r, row in enumerate(rows):
    ref = nucleus_by_definition(row, top_p)
    # Tokens whose strictly-above mass is within float32 rounding of top_p are ambiguous.
    z = row.astype(np.float64)
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    above = np.array([p[z > v].sum() for v in z])
    clear = np.abs(above - top_p) > 1e-5
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(keep[r][clear], ref[clear], err_msg=f"row {r}")


@pytest.mark.parametrize("scale", [0.05, 4.0])
def test_top_p_sampling_frequencies_large_vocab(scale):
  logits = np.random.RandomState(1).normal(0, scale, 512).astype(np.float32)
  cfg = SamplingConfig(max_new_tokens=1, top_p=0.8)
  tok, logp, _ = draw(cfg, n=60000, logits=logits)
  keep = nucleus_by_definition(logits, 0.8)
  z = logits.astype(np.float64)
  probs = np.where(keep, np.exp(z - z.max()), 0.0)
  probs /= probs.sum()
  counts = np.bincount(tok, minlength=512)
  assert counts[~keep].sum() == 0
  np.testing.assert_allclose(logp, np.log(probs[tok]), atol=1e-5)
  # Pool tokens into 16 bins of similar probability so the chi-square test has power.
  bins = np.digitize(np.cumsum(probs), np.linspace(0, 1, 17)[1:-1])
  obs = np.bincount(bins, weights=counts, minlength=16)
  exp = np.bincount(bins, weights=probs, minlength=16) * counts.sum()
  assert stats.chisquare(obs[exp > 0], exp[exp > 0]).pvalue > 1e-3


@pytest.mark.parametrize("top_k", [1, 7, 50, 511])
def test_top_k_exact_with_ties_large_vocab(top_k):
  rows = _nucleus_cases(vocab=512)
  cfg = SamplingConfig(max_new_tokens=1, top_k=top_k)
  keep = np.asarray(jax.jit(lambda l: jnp.isfinite(truncate_logits(l, cfg)))(jnp.asarray(rows)))
  for r, row in enumerate(rows):
    kth = np.sort(row)[::-1][top_k - 1]
    np.testing.assert_array_equal(keep[r], row >= kth, err_msg=f"row {r}")
