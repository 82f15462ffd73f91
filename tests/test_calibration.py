"""Calibration metrics vs independent brute-force references, and confidence parsing."""

import math
import random

import jax.numpy as jnp
import numpy as np
import pytest

from caopd_jax import calibration as cal

# ------------------------------------------------------------------------------------------
# brute-force references (plain Python loops, written independently of the implementation)
# ------------------------------------------------------------------------------------------


def ref_bin(c, n_bins=10):
  # reference rule: float edges i * (1/n_bins) (what np.linspace computes, so the edge "0.3"
  # is 0.30000000000000004); bin = #interior edges <= c; below 0 -> 0, 1.0 and above -> last.
  edges = [i * (1.0 / n_bins) for i in range(n_bins + 1)]
  k = 0
  for e in edges[1:-1]:
    if c >= e:
      k += 1
  return min(max(k, 0), n_bins - 1)


def ref_ece(c, y, n_bins=10):
  bins = {}
  for ci, yi in zip(c, y):
    bins.setdefault(ref_bin(ci, n_bins), []).append((ci, yi))
  total = 0.0
  for members in bins.values():
    mc = sum(m[0] for m in members) / len(members)
    my = sum(m[1] for m in members) / len(members)
    total += len(members) / len(c) * abs(mc - my)
  return total


def ref_brier(c, y):
  return sum((ci - yi) ** 2 for ci, yi in zip(c, y)) / len(c)


def ref_pairs(c, y):
  gt = eq = n = 0
  for ci, yi in zip(c, y):
    if yi < 0.5:
      continue
    for cj, yj in zip(c, y):
      if yj >= 0.5:
        continue
      n += 1
      gt += ci > cj
      eq += ci == cj
  return gt, eq, n


def ref_spr(c, y):
  gt, _, n = ref_pairs(c, y)
  return 0.0 if n == 0 else gt / n


def ref_auroc(c, y):
  gt, eq, n = ref_pairs(c, y)
  return 0.5 if n == 0 else (gt + 0.5 * eq) / n


def random_case(seed, n):
  rng = random.Random(seed)
  grid = [i / 8 for i in range(9)]  # heavy ties, like K=8 P_acc values
  c = [rng.choice(grid) if rng.random() < 0.6 else rng.random() for _ in range(n)]
  y = [int(rng.random() < 0.3 + 0.5 * ci) for ci in c]
  return c, y


@pytest.mark.parametrize("seed", range(12))
def test_metrics_match_brute_force(seed):
  c, y = random_case(seed, n=1 + seed * 17)
  assert cal.ece(c, y) == pytest.approx(ref_ece(c, y), abs=1e-12)
  assert cal.brier(c, y) == pytest.approx(ref_brier(c, y), abs=1e-12)
  assert cal.spr(c, y) == pytest.approx(ref_spr(c, y), abs=1e-12)
  assert cal.auroc(c, y) == pytest.approx(ref_auroc(c, y), abs=1e-12)
  assert cal.ocg(c, y) == pytest.approx(sum(c) / len(c) - sum(y) / len(y), abs=1e-12)
  for n_bins in (5, 15):
    assert cal.ece(c, y, n_bins) == pytest.approx(ref_ece(c, y, n_bins), abs=1e-12)


def test_ties_and_known_values():
  # pos = {0.9, 0.5, 0.5}, neg = {0.5, 0.2}: pairs: (0.9>0.5,0.9>0.2,0.5=0.5,0.5>0.2)x..
  c = [0.9, 0.5, 0.5, 0.5, 0.2]
  y = [1, 1, 1, 0, 0]
  # greater: 0.9 beats both (2), each 0.5 beats 0.2 (2) -> 4 of 6; ties: two (0.5, 0.5) pairs
  assert cal.spr(c, y) == pytest.approx(4 / 6)
  assert cal.auroc(c, y) == pytest.approx((4 + 0.5 * 2) / 6)
  # saturated model: SPR 0, AUROC 0.5
  assert cal.spr([1.0] * 6, [1, 0, 1, 0, 1, 1]) == 0.0
  assert cal.auroc([1.0] * 6, [1, 0, 1, 0, 1, 1]) == 0.5
  # perfect ranking
  assert cal.spr([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
  assert cal.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0


@pytest.mark.parametrize("y", [[1, 1, 1], [0, 0, 0], [True, True]])
def test_one_class(y):
  c = [0.2, 0.9, 0.5][: len(y)]
  assert cal.spr(c, y) == 0.0
  assert cal.auroc(c, y) == 0.5


def test_bin_edges():
  c = [0.0, 0.1, 0.3, 0.6, 0.7, 0.95, 1.0, -0.2, 1.3]
  bins = cal._bin_index(np.asarray(c), 10)
  assert bins.tolist() == [0, 1, 2, 5, 6, 9, 9, 0, 9]
  assert [ref_bin(x) for x in c] == bins.tolist()
  counts = cal.bin_stats([0.3, 0.6, 0.7, 1.0], [1, 1, 1, 1])["count"]
  assert counts.tolist() == [0, 0, 1, 0, 0, 1, 1, 0, 0, 1]


def test_ece_known_value():
  # bin 9: {1.0 (y=1), 1.0 (y=0)} -> |1 - 0.5| * 2/4; bin 2: {0.3 (y=0), 0.3 (y=1)} -> 0.2*2/4
  assert cal.ece([1.0, 1.0, 0.3, 0.3], [1, 0, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.2 * 0.5)
  # 0.3 shares bin 2 with 0.25 (edge 0.30000000000000004): mean conf 0.275 vs acc 0.5
  assert cal.ece([0.3, 0.25], [0, 1]) == pytest.approx(0.225)
  # ... but not with 0.35 (bin 3): 0.5 * 0.3 + 0.5 * 0.65
  assert cal.ece([0.3, 0.35], [0, 1]) == pytest.approx(0.475)


def test_input_types_and_return_types():
  c, y = random_case(3, 40)
  expect = cal.ece(c, y)
  for conv in (np.asarray, jnp.asarray, list):
    assert cal.ece(conv(c), conv(y)) == pytest.approx(expect, abs=1e-6)
  out = [cal.ece(c, y), cal.brier(c, y), cal.spr(c, y), cal.ocg(c, y), cal.auroc(c, y),
           cal.adherence([True, False])]
  assert all(type(v) is float for v in out)
  assert cal.spr(np.asarray(c), np.asarray(y, dtype=bool)) == pytest.approx(ref_spr(c, y))
  with pytest.raises(ValueError):
    cal.ece([0.1, 0.2], [1])
  with pytest.raises(ValueError):
    cal.brier([], [])


def test_spr_auroc_scale_n_log_n():
  # N = 200k would be 10^10 pairs for an O(N^2) implementation.
  rng = np.random.default_rng(0)
  c = rng.integers(0, 101, 200_000) / 100.0
  y = rng.random(200_000) < c
  s, a = cal.spr(c, y), cal.auroc(c, y)
  assert 0.5 < s < a < 1.0


def test_summarize_unparsed_counts_as_zero():
  texts = ["<answer>A</answer>\nConfidence: 0.9", "Confidence: 0.8", "no confidence here",
             "I think so", "Confidence: 0.6"]
  correct = [1, 0, 1, 0, 1]
  parsed = [cal.parse_confidence(t) for t in texts]
  ok = [p[0] for p in parsed]
  conf = [p[1] for p in parsed]
  assert ok == [True, True, False, False, True]
  assert conf == [0.9, 0.8, 0.0, 0.0, 0.6]
  s = cal.summarize(conf, correct, ok)
  assert set(s) == {"accuracy", "ece", "brier", "spr", "ocg", "auroc", "mean_confidence",
           "adherence", "n"}
  c0 = [0.9, 0.8, 0.0, 0.0, 0.6]
  assert s["n"] == 5 and type(s["n"]) is int
  assert s["accuracy"] == pytest.approx(0.6)
  assert s["adherence"] == pytest.approx(0.6)
  assert s["mean_confidence"] == pytest.approx(sum(c0) / 5)
  assert s["ece"] == pytest.approx(ref_ece(c0, correct))
  assert s["brier"] == pytest.approx(ref_brier(c0, correct))
  assert s["ocg"] == pytest.approx(sum(c0) / 5 - 0.6)
  assert s["spr"] == pytest.approx(ref_spr(c0, correct))
  assert s["auroc"] == pytest.approx(ref_auroc(c0, correct))
  # the unparsed samples really are the zeros: dropping them changes the numbers
  kept = [i for i in range(5) if ok[i]]
  s_kept = cal.summarize([c0[i] for i in kept], [correct[i] for i in kept], [True] * 3)
  assert s_kept["adherence"] == 1.0 and s_kept["brier"] != pytest.approx(s["brier"])
  # confidence passed for unparsed rows is forced to 0
  s_forced = cal.summarize([0.9, 0.8, 0.7, 0.7, 0.6], correct, ok)
  assert s_forced == s


# ------------------------------------------------------------------------------------------
# parse_confidence
# ------------------------------------------------------------------------------------------

PARSE_CASES = [
  # inline branch
  ("Answer: B\nConfidence: 0.75", (True, 0.75)),
  ("Confidence: 0.2 ... revised.\nConfidence: 0.9", (True, 0.9)),  # last wins
  ("confidence: 0.4", (True, 0.4)),  # case-insensitive
  ("CONFIDENCE:0.33", (True, 0.33)),
  ("Confidence:\n  0.5", (True, 0.5)),
  ("Confidence: 1.7", (True, 1.0)),  # clipped
  ("Confidence: 85", (True, 1.0)),  # no rescaling on the inline branch
  ("Confidence: 85%", (True, 1.0)),
  ("Confidence: .5", (True, 0.5)),
  ("Confidence: 0.75.", (True, 0.75)),  # trailing period
  ("Confidence: 1.00", (True, 1.0)),
  ("Confidence: 0", (True, 0.0)),
  ("Confidence: 0.6 <confidence>0.1</confidence>", (True, 0.6)),  # inline beats tag
  # tag branch
  ("<confidence>0.8</confidence>", (True, 0.8)),
  ("<confidence> 0.1 </confidence> then <confidence>0.7</confidence>", (True, 0.7)),
  ("<confidence>\n0.65\n</confidence>", (True, 0.65)),
  ("<confidence>85%</confidence>", (True, 0.85)),
  ("<confidence>50 %</confidence>", (True, 0.5)),
  ("<confidence>0.5%</confidence>", (True, 0.005)),
  ("<confidence>8</confidence>", (True, 0.8)),  # 0-10 scale
  ("<confidence>10</confidence>", (True, 1.0)),
  ("<confidence>1</confidence>", (True, 1.0)),
  ("<confidence>75</confidence>", (True, 0.75)),  # 0-100 scale
  ("<confidence>100</confidence>", (True, 1.0)),
  ("<confidence>250</confidence>", (True, 1.0)),  # /100 then clipped
  ("<confidence>high (about 7)</confidence>", (True, 0.7)),
  ("<confidence>-3</confidence>", (True, 0.0)),
  ("<confidence>high</confidence>", (False, 0.0)),
  ("<confidence></confidence>", (False, 0.0)),
  ("<confidence>0.9</confidence> <confidence>none</confidence>", (False, 0.0)),  # last only
  ("<confidence>nan</confidence>", (False, 0.0)),
  ("<confidence>inf</confidence>", (False, 0.0)),
  ("Confidence: . <confidence>0.3</confidence>", (True, 0.3)),  # number-less inline -> tag
  # unclosed tag
  ("<confidence>70%", (True, 0.7)),
  ("<confidence> 0.4 and then the output was cut", (True, 0.4)),
  ("<confidence>6", (True, 0.6)),
  # garbage
  ("", (False, 0.0)),
  ("I am quite confident.", (False, 0.0)),
  ("Confidence: high", (False, 0.0)),
  ("Confidence: -0.5", (False, 0.0)),
  ("<CONFIDENCE>0.5</CONFIDENCE>", (False, 0.0)),  # tag is case-sensitive
]


@pytest.mark.parametrize("text,expected", PARSE_CASES)
def test_parse_confidence(text, expected):
  ok, val = cal.parse_confidence(text)
  assert ok is expected[0]
  assert type(val) is float
  assert val == pytest.approx(expected[1], abs=1e-12)
  assert 0.0 <= val <= 1.0 and not math.isnan(val)


def test_parse_confidence_non_string():
  assert cal.parse_confidence(None) == (False, 0.0)


@pytest.mark.parametrize("n", [1, 3, 5, 6])
def test_pass_at_k_against_enumerating_k_subsets(n):
  import itertools  # pylint: disable=g-import-not-at-top
  import math  # pylint: disable=g-import-not-at-top
  for c in range(n + 1):
    for k in range(1, n + 1):
      subsets = list(itertools.combinations(range(n), k))  # samples 0..c-1 are the correct ones
      brute = sum(any(i < c for i in s) for s in subsets) / math.comb(n, k)
      assert cal.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
  with pytest.raises(ValueError):
    cal.pass_at_k(3, 4, 1)


def test_sampling_metrics_per_question():
  groups = [0, 0, 0, 1, 1, 1]
  correct = [1, 0, 0, 0, 0, 0]
  m = cal.sampling_metrics(groups, correct, ks=(1, 2, 3, 4))
  assert m["pass@1"] == pytest.approx((1 / 3 + 0) / 2) and m["pass@3"] == pytest.approx(0.5)
  assert m["avg@3"] == pytest.approx(1 / 6) and "pass@4" not in m
  with pytest.raises(ValueError, match="same number"):
    cal.sampling_metrics([0, 0, 1], [1, 0, 1], ks=(1,))
