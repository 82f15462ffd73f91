"""Reliability diagrams are written as real, non-trivial PNGs."""

import numpy as np
import pytest

from caopd_jax import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data(seed, n=300, saturate=False):
  rng = np.random.default_rng(seed)
  p = rng.uniform(size=n)
  y = rng.uniform(size=n) < p
  c = np.ones(n) if saturate else np.clip(p + rng.normal(0, 0.1, n), 0, 1)
  return c, y


def _check_png(path):
  import matplotlib.image as mpimg

  data = path.read_bytes()
  assert data[:8] == PNG_MAGIC
  assert len(data) > 10_000
  img = mpimg.imread(str(path))
  assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
  # not a blank canvas: plenty of non-white pixels and several distinct colours
  rgb = img[..., :3]
  assert (rgb.min(axis=-1) < 0.9).mean() > 0.05
  q = (rgb * 15).round().astype(np.int64)  # 16 levels per channel, packed into one int
  assert len(np.unique(q[..., 0] * 256 + q[..., 1] * 16 + q[..., 2])) > 10
  return img


def test_reliability_diagram(tmp_path):
  c, y = _data(0)
  path = tmp_path / "sub" / "rel.png"
  out = plots.reliability_diagram(c, y, path, title="base")
  assert out == str(path)
  _check_png(path)


def test_reliability_grid(tmp_path):
  stages = {"base": _data(0), "OPD": _data(1, saturate=True),
       "CaOPD": (list(_data(2)[0]), list(_data(2)[1]))}  # lists accepted too
  path = tmp_path / "grid.png"
  plots.reliability_grid(stages, path, title="toy")
  img = _check_png(path)
  plots.reliability_diagram(*_data(0), tmp_path / "one.png")
  single = _check_png(tmp_path / "one.png")
  assert img.shape[1] > 2 * single.shape[1]  # three panels side by side
  with pytest.raises(ValueError):
    plots.reliability_grid({}, tmp_path / "empty.png")
