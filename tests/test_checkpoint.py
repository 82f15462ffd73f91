"""Checkpoints: corrupt / partial latest step falls back to the previous one; SIGTERM saves and
exits; a run SIGKILLed midway and restarted ends bitwise equal to an uninterrupted run; a
finished run re-run exits 0 at once.

The end-to-end part drives `python run.py` on the smoke config's base stage (the SFT job, tiny
model, 200 steps, a checkpoint every 20). Run A goes straight through; run B is stopped with
SIGTERM, restarted, SIGKILLed, and restarted again. A and B run concurrently and compile
independently (so the equality also shows that XLA CPU is deterministic across processes);
later restarts share B's persistent compilation cache.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from caopd_jax import sharding
from caopd_jax.train.checkpoint import Checkpointer, NoValidCheckpointError
from caopd_jax.models import ModelConfig, Transformer
from caopd_jax.train.step import init_state

import background  # pylint: disable=g-bad-import-order
import fast_xla  # pylint: disable=g-bad-import-order

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------- unit tests


@pytest.fixture
def tmp():
  with tempfile.TemporaryDirectory(prefix="caopd_ckpt_") as d:
    yield pathlib.Path(d)


def _states():
  _, params = nnx.split(Transformer(ModelConfig.tiny("qwen3", vocab_size=37), rngs=nnx.Rngs(0)))
  opt = optax.adam(1e-3)
  template = init_state(params, opt, teacher=params, seed=1)
  out = {}
  s = template
  for step in (1, 2, 3):
    s = s.replace(step=jnp.int32(step), params=jax.tree.map(lambda x, k=step: x + k, s.params),
                  rng=s.rng + step)
    out[step] = s
  return template, out


def _save_all(directory, states):
  ck = Checkpointer(str(directory), every=1, keep=5)
  for step, s in states.items():
    assert ck.save(step, s)
  ck.close()


def _damage(step_dir, how):
  files = sorted(p for p in step_dir.rglob("*") if p.is_file())
  data = [p for p in files
          if "/state/" in str(p) and ("/d/" in str(p) or p.name.endswith(".ocdbt"))]
  assert data, files
  if how == "truncate":  # a partial write: every data file cut in half
    for p in data:
      p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
  elif how == "delete":  # files of the step lost
    for p in data:
      p.unlink()
  elif how == "meta":  # the metadata item is gone
    (step_dir / "meta" / "metadata").unlink()
  elif how == "wrong_step":  # metadata that belongs to another step
    (step_dir / "meta" / "metadata").write_text(json.dumps({"step": 2, "data_position": 2}))


# A failed tensorstore read leaves an asyncio callback behind ("Event loop is closed"): harmless.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["truncate", "delete", "meta", "wrong_step"])
def test_corrupt_latest_falls_back_to_previous(tmp, caplog, how):
  template, states = _states()
  _save_all(tmp / "ck", states)
  _damage(tmp / "ck" / "3", how)
  mesh = sharding.make_mesh((1, -1, 1))
  shardings = sharding.state_shardings(template, mesh)
  ck = Checkpointer(str(tmp / "ck"), every=1, keep=5)
  with caplog.at_level("WARNING"):
    restored, step = ck.restore_latest(template, shardings)
  assert step == 2
  assert any("Checkpoint 3" in r.getMessage() and "previous" in r.getMessage()
             for r in caplog.records)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(states[2])):
    np.testing.assert_array_equal(a, b)
  assert restored.params["embed"].get_value().sharding == \
      jax.tree.leaves(shardings.params, is_leaf=lambda x: hasattr(x, "spec"))[0]
  # the bad step was moved aside, so training can write step 3 again
  assert ck.steps() == [1, 2]
  assert [p.name for p in (tmp / "ck").iterdir() if p.name.startswith("3.corrupt")]
  assert ck.save(3, states[3])
  ck.close()
  ck = Checkpointer(str(tmp / "ck"))
  restored, step = ck.restore_latest(template, shardings)
  ck.close()
  assert step == 3 and int(restored.step) == 3


def test_no_restorable_checkpoint_is_an_error(tmp):
  template, states = _states()
  _save_all(tmp / "ck", {1: states[1]})
  _damage(tmp / "ck" / "1", "truncate")
  ck = Checkpointer(str(tmp / "ck"))
  with pytest.raises(NoValidCheckpointError, match="could be restored"):
    ck.restore_latest(template)
  ck.close()
  assert (tmp / "ck" / "1").exists()  # nothing is moved when nothing restores
  # no checkpoint at all: the template, step 0
  empty = Checkpointer(str(tmp / "empty"))
  assert empty.restore_latest(template)[1] == 0
  empty.close()


def test_saved_metadata_has_data_position(tmp):
  _, states = _states()
  _save_all(tmp / "ck", {2: states[2]})
  meta = json.loads((tmp / "ck" / "2" / "meta" / "metadata").read_text())
  assert meta["step"] == 2 and meta["data_position"] == 2


# ------------------------------------------------------------------------ run.py end to end

STEPS, EVERY = 200, 20


def _cmd(workdir):
  return [sys.executable, os.path.join(_ROOT, "run.py"), "--config=configs/smoke.py:stage=base",
          f"--workdir={workdir}", f"--config.steps={STEPS}", f"--config.checkpoint_every={EVERY}",
          f"--config.log_every={EVERY}", "--config.keep_checkpoints=3"]


def _env(cache):
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             XLA_FLAGS=fast_xla.added_to(env.get("XLA_FLAGS", "")))
  for k in list(env):
    if k.startswith(("CAOPD_", "SLURM_")):
      del env[k]
  return env


def _start(workdir, cache):
  log = open(os.path.join(workdir + ".log"), "a")
  return subprocess.Popen(_cmd(workdir), cwd=_ROOT, env=_env(cache), stdout=log,
                          stderr=subprocess.STDOUT), log


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _wait_for(proc, cond, timeout=300):
  t0 = time.time()
  while not cond():
    assert proc.poll() is None, "the run finished before it could be interrupted"
    assert time.time() - t0 < timeout, "timed out"
    time.sleep(0.01)


def _final_params(workdir):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  model = os.path.join(workdir, "model")
  files = sorted(f for f in os.listdir(model) if f.endswith(".safetensors"))
  out = {}
  for f in files:
    out.update(load_file(os.path.join(workdir, "model", f)))
  return out


def _read(path):
  with open(path, errors="replace") as f:
    return f.read()


def start_background():
  background.start("checkpoint", _runs)


@pytest.fixture(scope="module")
def runs_checkpoint():
  return background.result("checkpoint", _runs)


def _runs(tmp):
  tmp = pathlib.Path(tmp)
  a, b, cache = str(tmp / "A"), str(tmp / "B"), tmp / "cache"
  events = {}
  pa, la = _start(a, cache)
  # B, first life: SIGTERM once two checkpoints exist -> it saves the current step and exits.
  pb, lb = _start(b, cache)
  _wait_for(pb, lambda: len(_steps(b)) >= 2)
  pb.send_signal(signal.SIGTERM)
  events["sigterm_rc"] = pb.wait(timeout=120)
  lb.close()
  events["after_sigterm"] = _steps(b)
  # B, second life: resumes, is SIGKILLed midway (after two more checkpoints).
  first = max(events["after_sigterm"])
  pb, lb = _start(b, cache)
  _wait_for(pb, lambda: max(_steps(b) + [0]) >= first + 2 * EVERY)
  pb.kill()
  events["sigkill_rc"] = pb.wait(timeout=60)
  lb.close()
  events["after_sigkill"] = _steps(b)
  # B, third life: resumes and finishes.
  pb, lb = _start(b, cache)
  events["final_rc"] = pb.wait(timeout=600)
  lb.close()
  events["a_rc"] = pa.wait(timeout=600)
  la.close()
  # A finished run, re-run: exits 0 at once.
  t0 = time.time()
  pa, la = _start(a, cache)
  events["rerun_rc"] = pa.wait(timeout=120)
  events["rerun_s"] = time.time() - t0
  la.close()
  return a, b, events


def test_sigterm_saves_then_exits(runs_checkpoint):
  _, b, ev = runs_checkpoint
  log = _read(b + ".log")
  assert ev["sigterm_rc"] == 143, log[-3000:]
  m = re.search(r"SIGTERM received; saved step (\d+) and exiting", log)
  assert m, log[-3000:]
  saved = int(m.group(1))
  assert 0 < saved < STEPS and saved == max(ev["after_sigterm"])
  assert "Traceback" not in log.split("SIGTERM received")[1].split("resumed from step")[0]


def test_sigkill_resume_is_bitwise_exact(runs_checkpoint):
  a, b, ev = runs_checkpoint
  log = _read(b + ".log")
  assert ev["a_rc"] == 0, _read(a + ".log")[-3000:]
  assert ev["sigkill_rc"] == -signal.SIGKILL
  assert ev["final_rc"] == 0, log[-3000:]
  resumed = [int(x) for x in re.findall(r"resumed from step (\d+)", log)]
  assert len(resumed) == 2 and 0 < resumed[0] < resumed[1] < STEPS, resumed
  pa, pb = _final_params(a), _final_params(b)
  assert pa.keys() == pb.keys() and pa
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)  # bitwise
  # the logged metrics agree too (the last log window runs entirely after the last restart)
  last = lambda d: _read(os.path.join(d, "metrics.jsonl")).strip().splitlines()[-1]
  assert json.loads(last(a)) == json.loads(last(b))


def test_finished_run_exits_zero_quickly(runs_checkpoint):
  a, _, ev = runs_checkpoint
  assert ev["rerun_rc"] == 0
  tail = _read(a + ".log").rsplit("resumed from step", 1)[-1]
  assert "is already complete; nothing to do" in tail
  assert ev["rerun_s"] < 60
