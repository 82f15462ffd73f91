"""MetricWriter: JSONL + TensorBoard scalars, process 0 only."""

import glob
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from caopd_jax import logging_utils
from caopd_jax.logging_utils import MetricWriter, read_jsonl


def _read_events(workdir):
  """Scalars from the tensorboardX event files, parsed with tensorboardX's own protobufs."""
  from tensorboardX.proto import event_pb2

  out = {}
  for f in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    data = open(f, "rb").read()
    pos = 0
    while pos < len(data):  # TFRecord: len(u64) crc(u32) payload crc(u32)
      n = int.from_bytes(data[pos:pos + 8], "little")
      ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in ev.summary.value:
        out.setdefault(v.tag, []).append((ev.step, v.simple_value))
  return out


def test_writes_jsonl_and_tensorboard(tmp_path):
  wd = tmp_path / "run"
  with MetricWriter(wd) as w:
    w.write(1, {"loss": 0.5, "eval/ece": np.float32(0.25)})
    w.write(jnp.asarray(2), {"loss": jnp.asarray(0.25), "n": 7, "note": "hi"})
    # flushed after each write: readable before close
    assert len(read_jsonl(wd / "metrics.jsonl")) == 2
  recs = read_jsonl(wd / "metrics.jsonl")
  assert recs == [{"step": 1, "loss": 0.5, "eval/ece": 0.25},
          {"step": 2, "loss": 0.25, "n": 7, "note": "hi"}]
  lines = (wd / "metrics.jsonl").read_text().splitlines()
  assert all(isinstance(json.loads(l), dict) for l in lines)
  ev = _read_events(str(wd))
  assert ev["loss"] == [(1, 0.5), (2, 0.25)]
  assert ev["eval/ece"] == [(1, 0.25)]
  assert ev["n"] == [(2, 7.0)]
  assert "note" not in ev  # strings go to JSONL only


def test_appends_and_close_is_idempotent(tmp_path):
  w = MetricWriter(tmp_path, tensorboard=False)
  w.write(0, {"a": 1.0})
  w.close()
  w.close()
  with pytest.raises(RuntimeError):
    w.write(1, {"a": 2.0})
  with MetricWriter(tmp_path, tensorboard=False) as w2:
    w2.write(1, {"a": 2.0})
  assert [r["a"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1.0, 2.0]
  assert not glob.glob(str(tmp_path / "events.out.tfevents.*"))


def test_rejects_bad_values(tmp_path):
  with MetricWriter(tmp_path, tensorboard=False) as w:
    with pytest.raises(TypeError):
      w.write(0, {"v": np.ones(3)})
    with pytest.raises(ValueError):
      w.write(0, {"step": 3})


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(logging_utils.jax, "process_index", lambda: 1)
  wd = tmp_path / "other"
  with MetricWriter(wd) as w:
    assert not w.enabled
    w.write(0, {"loss": 1.0})
    w.flush()
  assert not wd.exists()
  monkeypatch.setattr(logging_utils.jax, "process_index", lambda: 0)
  with MetricWriter(wd) as w:
    assert w.enabled
