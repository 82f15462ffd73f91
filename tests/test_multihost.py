"""2 processes x 4 CPU devices on loopback (jax.distributed) against 1 process x 8 devices.

Each process feeds only its rows of the global batch (caopd_jax.distributed.process_slice);
sharding.shard_batch assembles the global batch; one sharded OPD step runs on the same
(data, fsdp, tensor) meshes in both set-ups, and a checkpoint written by the two processes is
restored into the shardings. (2,4,1) gives each process its own rows (assembled with
jax.make_array_from_process_local_data); (1,1,8) puts tensor parallelism across the two
processes' devices and replicates the batch across them (the host all-gather path).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

import background  # pylint: disable=g-bad-import-order
import fast_xla  # pylint: disable=g-bad-import-order

MESHES = ((2, 4, 1), (1, 1, 8))
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def worker(out, coordinator=None, num_processes=1, process_id=0):
  from caopd_jax import distributed  # pylint: disable=g-import-not-at-top
  if coordinator:
    assert distributed.initialize(coordinator, num_processes, process_id,
                                  initialization_timeout=120)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from test_sharding import B, problem  # pylint: disable=g-import-not-at-top
  from caopd_jax import sharding  # pylint: disable=g-import-not-at-top
  from caopd_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 8 and jax.process_count() == num_processes
  assert jax.local_device_count() == 8 // num_processes
  graphdef, state, step, batch, _ = problem()
  rows = distributed.process_slice(B)
  local = {k: v[rows] for k, v in batch.items()}
  result, info = {}, {}
  for spec in MESHES:
    name = "x".join(map(str, spec))
    mesh = sharding.make_mesh(spec)
    state_sh = sharding.state_shardings(state, mesh)
    batch_sh = sharding.batch_shardings(local, mesh, global_shapes=False)
    gbatch = sharding.shard_batch(local, mesh, shardings=batch_sh)
    assert gbatch["student_tokens"].shape == batch["student_tokens"].shape
    full = multihost_utils.process_allgather(gbatch, tiled=True)
    for k, v in full.items():
      result[f"{name}/batch/{k}"] = np.asarray(v)
    placed = sharding.place(jax.tree.map(jnp.copy, state), state_sh)
    fn = sharding.jit_train_step(step, mesh, state_sh, batch_sh)
    new, metrics = fn(placed, gbatch)
    host = multihost_utils.process_allgather(new, tiled=True)
    for p, x in jax.tree_util.tree_leaves_with_path(host):
      result[f"{name}/state{jax.tree_util.keystr(p)}"] = np.asarray(x)
    info[name] = dict(loss=float(metrics["train/loss"]),
                      addressable=len(new.params["embed"].get_value().addressable_shards))
    if name == "2x4x1":  # checkpoint written by all processes, restored into the shardings
      ckpt = Checkpointer(os.path.join(os.path.dirname(out), "ckpt"), every=1, keep=1)
      assert ckpt.save(1, new)
      ckpt.wait()
      restored, at = ckpt.restore_latest(state, state_sh)
      ckpt.close()
      assert at == 1
      same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), restored, new)
      info["restore_equal"] = all(jax.tree.leaves(same))
      info["restore_sharding"] = str(restored.params["embed"].get_value().sharding.spec)
  if jax.process_index() == 0:
    np.savez(out + ".npz", **result)
    with open(out + ".json", "w") as f:
      json.dump(info, f)
  if coordinator:
    distributed.shutdown()


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = fast_xla.added_to(env.get("XLA_FLAGS", ""),
                                      f"--xla_force_host_platform_device_count={devices}")
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")
  for k in list(env):
    if k.startswith("CAOPD_") or k.startswith("SLURM_"):
      del env[k]
  return env


def start_background():
  background.start("multihost", _runs)


@pytest.fixture(scope="module")
def runs():
  return background.result("multihost", _runs)


def _runs(tmp):
  tmp = pathlib.Path(tmp)
  (tmp / "single").mkdir()
  (tmp / "multi").mkdir()
  coordinator = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, __file__, str(tmp / "single" / "out")], env=_env(8),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
  for pid in range(2):
    procs.append(subprocess.Popen(
        [sys.executable, __file__, str(tmp / "multi" / "out"), coordinator, "2", str(pid)],
        env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = []
  try:
    for p in procs:
      log, _ = p.communicate(timeout=600)
      logs.append(log)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-6000:]

  def load(d):
    with open(tmp / d / "out.json") as f:
      return dict(np.load(tmp / d / "out.npz")), json.load(f)

  return load("single"), load("multi")


def test_two_processes_match_one(runs):
  (single, sinfo), (multi, minfo) = runs
  assert set(single) == set(multi)
  worst = 0.0
  for k in single:
    if "/batch/" in k:  # the per-process slices assemble into exactly the global batch
      np.testing.assert_array_equal(multi[k], single[k], err_msg=k)
    else:
      np.testing.assert_allclose(multi[k], single[k], rtol=1e-5, atol=1e-6, err_msg=k)
      if single[k].dtype.kind == "f":
        worst = max(worst, float(np.max(np.abs(multi[k] - single[k]))))
  assert worst < 1e-5
  for name in ("2x4x1", "1x1x8"):
    np.testing.assert_allclose(minfo[name]["loss"], sinfo[name]["loss"], rtol=1e-5)
  # each process only holds the shards of its own 4 devices
  assert minfo["2x4x1"]["addressable"] == 4 and sinfo["2x4x1"]["addressable"] == 8


def test_global_batch_is_the_concatenation_of_process_slices(runs):
  _, (multi, _) = runs
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from test_sharding import problem  # pylint: disable=g-import-not-at-top
  batch = problem()[3]
  for name in ("2x4x1", "1x1x8"):
    for k, v in batch.items():
      np.testing.assert_array_equal(multi[f"{name}/batch/{k}"], v)


def test_multiprocess_checkpoint_roundtrip(runs):
  _, (_, minfo) = runs
  assert minfo["restore_equal"]
  assert minfo["restore_sharding"] == "P(None, 'fsdp')"


def test_detect_from_environment(monkeypatch):
  from caopd_jax import distributed  # pylint: disable=g-import-not-at-top
  for k in list(os.environ):
    if k.startswith(("CAOPD_", "SLURM_")):
      monkeypatch.delenv(k)
  monkeypatch.setattr(distributed, "_tpu_vm", lambda: False)
  assert distributed.detect() == "single"
  assert not distributed.initialize()  # one process: nothing to start
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  monkeypatch.setenv("SLURM_STEP_NODELIST", "node[1-2]")
  monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
  assert distributed.detect() == "single"  # srun with one task
  monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "16")
  assert distributed.detect() == "slurm"
  monkeypatch.setattr(distributed, "_tpu_vm", lambda: True)
  monkeypatch.delenv("SLURM_JOB_ID")
  assert distributed.detect() == "tpu"
  monkeypatch.setenv("CAOPD_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  assert distributed.detect() == "explicit"
  monkeypatch.setenv("CAOPD_DISTRIBUTED", "0")
  assert distributed.detect() == "off"
  assert distributed.process_slice(8) == slice(0, 8)  # this (single) process owns every row


if __name__ == "__main__":
  worker(sys.argv[1], *(sys.argv[2:3] + [int(a) for a in sys.argv[3:5]]))
