"""A small metric writer: JSONL + TensorBoard scalars, written by process 0 only.

    with MetricWriter(workdir) as w:
        w.write(step, {"loss": loss, "eval/ece": 0.12})

Each ``write`` appends one line ``{"step": int, "metric": value, ...}`` to
``workdir/metrics.jsonl`` and one TensorBoard scalar per numeric metric (tensorboardX event files
under ``workdir``), then flushes both. On processes other than 0 every method is a no-op (nothing
is created). Values may be Python/numpy/jax scalars or size-1 arrays; call ``write`` outside
``jit`` (it pulls values to the host).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np

__all__ = ["MetricWriter", "read_jsonl"]


def _to_python(v: Any) -> Any:
  """Scalars (Python, numpy, jax, size-1 arrays) -> int/float/bool; strings pass through."""
  if isinstance(v, (str, bool, int, float)) or v is None:
    return v
  a = np.asarray(v)
  if a.size != 1:
    raise TypeError(f"metric values must be scalars, got shape {a.shape}")
  return a.reshape(()).item()


def _json_value(v: Any) -> Any:
  """JSON has no NaN / Infinity: non-finite floats are written as the strings "nan", "inf", "-inf"."""
  if isinstance(v, float) and not math.isfinite(v):
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
  return v


class MetricWriter:
  """Write scalar metrics to ``workdir/<filename>`` (JSONL) and TensorBoard (process 0 only).

    Args:
      workdir: output directory (created if needed).
      filename: JSONL file name inside ``workdir``.
      tensorboard: also write tensorboardX scalars (event files in ``workdir``).
      enabled: override for the process-0 rule (default ``jax.process_index() == 0``).
    """

  def __init__(
    self,
    workdir: str | os.PathLike,
    filename: str = "metrics.jsonl",
    tensorboard: bool = True,
    enabled: bool | None = None,
  ):
    self.workdir = os.fspath(workdir)
    self.enabled = (jax.process_index() == 0) if enabled is None else bool(enabled)
    self.path = os.path.join(self.workdir, filename)
    self._file = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(self.workdir, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # local import: only process 0 needs it

      self._tb = SummaryWriter(logdir=self.workdir)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Append ``{"step": step, **metrics}`` as one JSON line and log numeric values as
        TensorBoard scalars; flushes. Non-finite floats are written as "nan" / "inf" strings
        (metrics.jsonl stays valid JSON)."""
    if not self.enabled:
      return
    if self._file is None:
      raise RuntimeError("MetricWriter is closed")
    step = int(_to_python(step))
    record: dict[str, Any] = {"step": step}
    for k, v in metrics.items():
      if k == "step":
        raise ValueError("'step' is reserved; pass it as the first argument")
      record[str(k)] = _to_python(v)
    self._file.write(json.dumps({k: _json_value(v) for k, v in record.items()},
                                allow_nan=False) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, float(v), global_step=step)
    self.flush()

  # alias, in the style of clu.metric_writers
  write_scalars = write

  def truncate(self, step: int) -> None:
    """Drops the lines of steps after `step` (a run resumed from a checkpoint at `step`)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    self._file.close()
    keep = [line for line in read_jsonl(self.path) if line["step"] <= step]
    with open(self.path + ".tmp", "w", encoding="utf-8") as f:
      f.writelines(json.dumps(line) + "\n" for line in keep)
    os.replace(self.path + ".tmp", self.path)
    self._file = open(self.path, "a", encoding="utf-8")

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flush and close; idempotent."""
    if self._file is not None:
      self._file.flush()
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Read a metrics JSONL file back (one dict per line; blank lines skipped)."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]

