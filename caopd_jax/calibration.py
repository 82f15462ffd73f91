"""Calibration metrics and verbal-confidence parsing (host-side, numpy).

Notation: ``y_i in {0, 1}`` correctness, ``c_i in [0, 1]`` reported confidence, ``N`` samples.
Semantics follow the released CaOPD evaluation code (see /work/shared/reference/caopd.md):

* Brier = mean((c - y)^2)
* ECE   = sum_b (n_b / N) |mean(c in b) - mean(y in b)|, 10 equal-width bins, empty bins skipped
* SPR   = P(c+ > c-) over all (correct, incorrect) pairs; ties count 0; one class -> 0
* OCG   = mean(c) - mean(y)   (positive = overconfident)
* AUROC = P(c+ > c-) + 1/2 P(c+ = c-); one class -> 0.5 (our convention, see ``auroc``)

All functions accept lists, numpy or jax arrays and return Python floats. ``correct`` may be
bool or float; a sample is "positive" (correct) iff ``y >= 0.5``. Confidences are NOT clipped
here (``parse_confidence`` already returns values in [0, 1]). These are evaluation-time
metrics: call them outside ``jit``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

__all__ = [
  "ece",
  "brier",
  "spr",
  "ocg",
  "auroc",
  "adherence",
  "bin_stats",
  "parse_confidence",
  "summarize",
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_pair(conf: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
  c = np.asarray(conf, dtype=np.float64).reshape(-1)
  y = np.asarray(correct, dtype=np.float64).reshape(-1)
  if c.shape != y.shape:
    raise ValueError(f"conf and correct must have the same length, got {c.shape} vs {y.shape}")
  if c.size == 0:
    raise ValueError("calibration metrics need at least one sample (got N=0)")
  return c, y


def _bin_index(c: np.ndarray, n_bins: int) -> np.ndarray:
  """Reference binning: edges = linspace(0, 1, n_bins+1) with edges[0] = -inf, edges[-1] = +inf,
    bin = clip(digitize(c, edges) - 1, 0, n_bins - 1). Float edges put 0.3 / 0.6 / 0.7 in bins
    2 / 5 / 6 (e.g. linspace gives 0.30000000000000004 > 0.3) and 1.0 in the last bin."""
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  edges[0] = -np.inf
  edges[-1] = np.inf
  return np.clip(np.digitize(c, edges) - 1, 0, n_bins - 1)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def bin_stats(conf: Any, correct: Any, n_bins: int = 10) -> dict[str, np.ndarray]:
  """Per-bin statistics with the ECE binning.

    Returns numpy arrays of length ``n_bins``: ``count`` (int), ``mean_conf`` and ``accuracy``
    (NaN for empty bins), and the nominal bin ``lo`` / ``hi`` edges (i/n_bins, (i+1)/n_bins).
    """
  c, y = _as_pair(conf, correct)
  b = _bin_index(c, n_bins)
  count = np.bincount(b, minlength=n_bins)
  sum_c = np.bincount(b, weights=c, minlength=n_bins)
  sum_y = np.bincount(b, weights=y, minlength=n_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_conf = np.where(count > 0, sum_c / np.maximum(count, 1), np.nan)
    accuracy = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
  lo = np.arange(n_bins) / n_bins
  return {"count": count, "mean_conf": mean_conf, "accuracy": accuracy, "lo": lo, "hi": lo + 1.0 / n_bins}


def ece(conf: Any, correct: Any, n_bins: int = 10) -> float:
  """Expected calibration error: ``sum_b (n_b/N) |mean_b(c) - mean_b(y)|`` (empty bins skipped).

    Bins: see ``_bin_index`` (reference binning, ``np.digitize`` on float ``linspace`` edges).
    """
  c, y = _as_pair(conf, correct)
  s = bin_stats(c, y, n_bins)
  nz = s["count"] > 0
  w = s["count"][nz] / c.size
  return float(np.sum(w * np.abs(s["mean_conf"][nz] - s["accuracy"][nz])))


def brier(conf: Any, correct: Any) -> float:
  """Brier score: ``mean((c - y)^2)``."""
  c, y = _as_pair(conf, correct)
  return float(np.mean((c - y) ** 2))


def ocg(conf: Any, correct: Any) -> float:
  """Overconfidence gap: ``mean(c) - mean(y)``; positive means overconfident."""
  c, y = _as_pair(conf, correct)
  return float(np.mean(c) - np.mean(y))


def _pair_counts(c: np.ndarray, y: np.ndarray) -> tuple[int, int, int]:
  """Return (#pairs with c+ > c-, #pairs with c+ == c-, #pairs) in O(N log N) via sorting."""
  pos = c[y >= 0.5]
  neg = np.sort(c[y < 0.5])
  n_pairs = int(pos.size) * int(neg.size)
  if n_pairs == 0:
    return 0, 0, 0
  below = np.searchsorted(neg, pos, side="left")  # #neg strictly below each positive
  below_eq = np.searchsorted(neg, pos, side="right")  # #neg <= each positive
  greater = int(np.sum(below, dtype=np.int64))
  ties = int(np.sum(below_eq - below, dtype=np.int64))
  return greater, ties, n_pairs


def spr(conf: Any, correct: Any) -> float:
  """Strict pairwise ranking: ``(1/(P*Q)) sum_{i in pos, j in neg} 1[c_i > c_j]``.

    Ties get zero credit, so a saturated model (always c = 1.0) scores 0. Returns 0.0 when only
    one class is present (reference convention). O(N log N).
    """
  c, y = _as_pair(conf, correct)
  greater, _, n_pairs = _pair_counts(c, y)
  return 0.0 if n_pairs == 0 else float(greater / n_pairs)


def auroc(conf: Any, correct: Any) -> float:
  """Area under the ROC curve: ``P(c+ > c-) + 0.5 * P(c+ = c-)`` over (correct, incorrect) pairs.

    One-class convention (AUROC is undefined there): returns 0.5, the value of an uninformative
    scorer, so that summaries stay finite and JSON/TensorBoard friendly. O(N log N).
    """
  c, y = _as_pair(conf, correct)
  greater, ties, n_pairs = _pair_counts(c, y)
  return 0.5 if n_pairs == 0 else float((greater + 0.5 * ties) / n_pairs)


def adherence(parsed_ok: Any) -> float:
  """Confidence-format adherence: fraction of responses whose confidence was parsed."""
  ok = np.asarray(parsed_ok, dtype=bool).reshape(-1)
  if ok.size == 0:
    raise ValueError("adherence needs at least one sample (got N=0)")
  return float(np.mean(ok))


# --------------------------------------------------------------------------------------------
# confidence parsing
# --------------------------------------------------------------------------------------------

_INLINE_RE = re.compile(r"Confidence:\s*([\d.]+)", re.IGNORECASE)
_TAG_RE = re.compile(r"<confidence>(.*?)</confidence>", re.DOTALL | re.MULTILINE)
_OPEN_TAG_RE = re.compile(r"<confidence>\s*(\d+(?:\.\d+)?)\s*%?")
_FLOAT_PREFIX_RE = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_SIGNED_NUM_RE = re.compile(r"-?\d+(?:\.\d+)?")


def _clip01(v: float) -> float:
  return min(1.0, max(0.0, v))


def _rescale(val: float, raw: str) -> float:
  """Tag-branch rescaling (as released): '%' in raw or 10 < v <= 100 -> v/100; 1 < v <= 10 ->
    v/10; 0 <= v <= 1 -> v; v > 100 -> v/100; v < 0 -> v/10. The result is then clipped to
    [0, 1] (the release does not clip; clipping keeps c in [0, 1])."""
  if "%" in raw or 10 < val <= 100:
    out = val / 100.0
  elif 1 < val <= 10:
    out = val / 10.0
  elif 0 <= val <= 1:
    out = val
  elif val > 100:
    out = val / 100.0
  else:
    out = val / 10.0
  return _clip01(out)


def parse_confidence(text: str) -> tuple[bool, float]:
  """Extract the verbal confidence of a response. Returns ``(ok, c)`` with ``c in [0, 1]``.

    1. Inline: the LAST match of ``Confidence:\\s*([\\d.]+)`` (case-insensitive); its longest
       leading decimal number (so ``"0.75."`` -> 0.75), clipped to [0, 1] (no rescaling:
       ``Confidence: 85`` -> 1.0). If that last match holds no number (``"Confidence: ."``), go on.
    2. Tag: the LAST ``<confidence>...</confidence>`` (case-sensitive, may span lines),
       stripped. Empty -> unparsed. Else the whole content as a float (finite only), or the
       first ``-?\\d+(\\.\\d+)?`` inside it, rescaled by ``_rescale`` ('%' -> /100; (1, 10] -> /10;
       (10, 100] -> /100). No number inside the last tag -> unparsed (no further fallback).
    3. Unclosed tag (only when no closed tag exists): last ``<confidence>\\s*NUM\\s*%?``, rescaled.
    4. Otherwise unparsed: ``(False, 0.0)``; the 0.0 enters the main metrics.
    """
  if not isinstance(text, str):
    return False, 0.0
  inline = list(_INLINE_RE.finditer(text))
  if inline:
    m = _FLOAT_PREFIX_RE.match(inline[-1].group(1))
    if m is not None:
      return True, _clip01(float(m.group()))

  tags = _TAG_RE.findall(text)
  if tags:
    last = tags[-1].strip()
    if not last:
      return False, 0.0
    try:
      val = float(last)
      if not math.isfinite(val):
        raise ValueError(last)
    except ValueError:
      m = _SIGNED_NUM_RE.search(last)
      if m is None:
        return False, 0.0
      val = float(m.group())
    return True, _rescale(val, last)

  opened = list(_OPEN_TAG_RE.finditer(text))
  if opened:
    return True, _rescale(float(opened[-1].group(1)), opened[-1].group(0))
  return False, 0.0


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating Large
  Language Models Trained on Code"): 1 - C(n - c, k) / C(n, k), as a stable product."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def sampling_metrics(groups: Any, correct: Any, ks) -> dict[str, float]:
  """Pass@k (mean over questions of `pass_at_k`) for each k, and Avg@n (mean correctness of the
  n samples per question); `groups[i]` is the question of sample i (n samples each)."""
  groups, y = np.asarray(groups).reshape(-1), np.asarray(correct, bool).reshape(-1)
  counts = {g: (int(np.sum(groups == g)), int(np.sum(y[groups == g]))) for g in np.unique(groups)}
  n = {cnt for cnt, _ in counts.values()}
  if len(n) != 1:
    raise ValueError(f"every question needs the same number of samples, got {sorted(n)}")
  n = n.pop()
  out = {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for _, c in counts.values()]))
         for k in ks if k <= n}
  out[f"avg@{n}"] = float(np.mean(y))
  return out


def summarize(conf: Any, correct: Any, parsed_ok: Any, n_bins: int = 10) -> dict[str, float]:
  """All metrics in one dict: ``accuracy, ece, brier, spr, ocg, auroc, mean_confidence,
    adherence, n``.

    Unparsed samples (``parsed_ok`` False) count with ``c = 0`` in every metric (their confidence
    is forced to 0 here, whatever was passed), while ``adherence`` reports the parsed fraction.
    ``n`` is an int; everything else a Python float.
    """
  c, y = _as_pair(conf, correct)
  ok = np.asarray(parsed_ok, dtype=bool).reshape(-1)
  if ok.shape != c.shape:
    raise ValueError(f"parsed_ok must have length {c.size}, got {ok.size}")
  c = np.where(ok, c, 0.0)
  return {
    "accuracy": float(np.mean(y)),
    "ece": ece(c, y, n_bins),
    "brier": brier(c, y),
    "spr": spr(c, y),
    "ocg": ocg(c, y),
    "auroc": auroc(c, y),
    "mean_confidence": float(np.mean(c)),
    "adherence": adherence(ok),
    "n": int(c.size),
  }
