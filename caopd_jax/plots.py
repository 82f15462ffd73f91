"""Reliability diagrams (matplotlib, Agg backend) for calibration results.

Binning is exactly the ECE binning of ``caopd_jax.calibration`` (10 equal-width bins, 1.0 in the
last bin). Each panel shows per-bin accuracy bars against the diagonal, the per-bin mean
confidence (diamonds) with the hatched gap, N / accuracy / mean confidence, ECE and OCG in the
title, and below it the fraction of samples per bin annotated with the bin counts.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from caopd_jax import calibration  # noqa: E402

__all__ = ["reliability_diagram", "reliability_grid"]


def _panel(ax, ax_n, conf: Any, correct: Any, title: str, n_bins: int) -> None:
  """Reliability bars on ``ax``, bin-count histogram on ``ax_n`` (shared x axis)."""
  s = calibration.bin_stats(conf, correct, n_bins)
  count, acc, mconf = s["count"], s["accuracy"], s["mean_conf"]
  n = int(count.sum())
  width = 1.0 / n_bins
  centers = s["lo"] + width / 2
  nz = count > 0
  ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
  ax.bar(centers[nz], acc[nz], width=width * 0.9, color="tab:blue", alpha=0.8,
           edgecolor="black", lw=0.5, label="accuracy")
  # hatched gap from the bin accuracy to the bin mean confidence (diamond on the diagonal)
  ax.bar(centers[nz], mconf[nz] - acc[nz], bottom=acc[nz], width=width * 0.9, color="none",
           edgecolor="tab:red", hatch="//", lw=0.8, label="gap to mean confidence")
  ax.scatter(mconf[nz], mconf[nz], marker="D", s=16, color="tab:red", zorder=3,
               label="bin mean confidence")
  e = calibration.ece(conf, correct, n_bins)
  g = calibration.ocg(conf, correct)
  a_all = float(np.mean(np.asarray(correct, dtype=np.float64)))
  c_all = float(np.mean(np.asarray(conf, dtype=np.float64)))
  ax.set_title(f"{title}\nECE={e:.3f}   OCG={g:+.3f}", fontsize=10)
  ax.text(0.03, 0.97, f"N={n}\nacc={a_all:.3f}\nmean conf={c_all:.3f}",
      transform=ax.transAxes, va="top", ha="left", fontsize=8,
      bbox=dict(boxstyle="round", facecolor="white", alpha=0.85, lw=0.5))
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3, lw=0.5)
  ax.tick_params(labelbottom=False)

  frac = count / max(n, 1)
  ax_n.bar(centers, frac, width=width * 0.9, color="0.55", edgecolor="black", lw=0.5)
  for x, f, c in zip(centers[nz], frac[nz], count[nz]):
    ax_n.text(x, f, str(c), ha="center", va="bottom", fontsize=7)
  ax_n.set_ylim(0, 1.3 * max(float(frac.max()), 1e-3))
  ax_n.set_xlim(0, 1)
  ax_n.set_xticks(np.linspace(0, 1, 6))
  ax_n.set_xlabel("confidence")
  ax_n.tick_params(axis="y", labelsize=7)
  ax_n.grid(alpha=0.3, lw=0.5, axis="x")


def _figure(k: int, w: float, h: float):
  fig, axes = plt.subplots(2, k, figsize=(w * k, h), dpi=120, squeeze=False, sharex="col",
                             gridspec_kw=dict(height_ratios=(3.2, 1.0)), layout="constrained")
  fig.get_layout_engine().set(hspace=0.0, h_pad=0.02)
  return fig, axes


def reliability_diagram(conf: Any, correct: Any, path: str | os.PathLike,
            title: str = "Reliability diagram", n_bins: int = 10) -> str:
  """Write a single reliability diagram PNG to ``path``; returns the path."""
  fig, axes = _figure(1, 5.0, 6.6)
  try:
    _panel(axes[0, 0], axes[1, 0], conf, correct, title, n_bins)
    axes[0, 0].set_ylabel("accuracy")
    axes[1, 0].set_ylabel("fraction")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8,
                   frameon=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
  finally:
    plt.close(fig)
  return os.fspath(path)


def reliability_grid(stages: Mapping[str, tuple[Any, Any]], path: str | os.PathLike,
                     title: str | None = None, n_bins: int = 10) -> str:
  """Side-by-side reliability diagrams, one panel per ``name -> (conf, correct)`` (in order),
    e.g. ``{"base": ..., "OPD": ..., "CaOPD": ...}``. Writes a PNG to ``path``; returns the path."""
  if not stages:
    raise ValueError("reliability_grid needs at least one stage")
  k = len(stages)
  fig, axes = _figure(k, 4.3, 6.0)
  try:
    for i, (name, (conf, correct)) in enumerate(stages.items()):
      _panel(axes[0, i], axes[1, i], conf, correct, str(name), n_bins)
    axes[0, 0].set_ylabel("accuracy")
    axes[1, 0].set_ylabel("fraction")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8,
                   frameon=False)
    if title:
      fig.suptitle(title, fontsize=12)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
  finally:
    plt.close(fig)
  return os.fspath(path)
