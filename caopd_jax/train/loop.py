"""The one train loop: shard, resume, step, log, checkpoint, stop on SIGTERM.

Used by every training job (SFT warm-up, OPD, CaOPD). `step_fn(state, batch)` is the pure
step; the loop compiles it once on a (data, fsdp, tensor) mesh with declared in/out shardings
(caopd_jax.sharding) and the state donated. `get_batch(step)` returns this process's rows of
global batch `step` (the whole batch on one process) and is a pure function of the step, so
the data position is the step and resuming is exact (bitwise, for a deterministic step).

Preemption: SIGTERM makes the loop finish the current step, save a checkpoint and exit with
status 143. On several processes the hosts agree on the step to save at through JAX's
preemption sync point (jax.distributed installs the SIGTERM notifier).
"""

import logging
import os
import signal
import sys

import jax
import numpy as np
from tqdm.auto import tqdm

from caopd_jax import sharding
from caopd_jax.train.checkpoint import Checkpointer
from caopd_jax.logging_utils import MetricWriter

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped early, resume me"

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
  """A step produced a non-finite loss, gradient norm or parameters (policy "stop")."""


class _Guard:
  """The loop's side of the divergence guard (caopd_jax.train.step.guarded_update): the steps'
  `train/nonfinite` flags stay on the device until the loop syncs anyway (a log line or a
  checkpoint), and `check` raises Diverged naming the first bad step before that state can be
  saved. With policy "skip" (`train/skipped` in the metrics) bad steps are only counted."""

  def __init__(self, desc):
    self.desc, self.pending, self.skipped, self.last_saved = desc, [], 0, None

  def add(self, step, metrics):
    if "train/nonfinite" in metrics:
      self.pending.append((step, metrics["train/nonfinite"], "train/skipped" in metrics))

  def check(self):
    flags = jax.device_get([f for _, f, _ in self.pending])
    for (step, _, skip), flag in zip(self.pending, flags):
      if flag and skip:
        self.skipped += 1
      elif flag:
        good = (f"the last good checkpoint (step {self.last_saved}) is kept" if self.last_saved
                else "no checkpoint of this run was written")
        raise Diverged(
            f"{self.desc}: non-finite loss, gradient norm or parameters at step {step}; stopped "
            f"before saving that state ({good}). Lower the learning rate, check the data, or set "
            "on_nonfinite='skip' to skip such updates.")
    self.pending = []


class _Preemption:
  """Records SIGTERM so the loop can save and exit between steps.

  One process: a Python SIGTERM handler sets a flag. Several processes: JAX's preemption sync
  manager (started by jax.distributed.initialize) owns SIGTERM and `reached(step)` returns True
  on every host at the same step.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._multihost = jax.process_count() > 1

  def __enter__(self):
    if self._multihost:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if self._multihost:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # preemption service disabled
        return False
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def _mean_metrics(history):
  host = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


def _log_layout(mesh, state, state_sh):
  leaves = jax.tree.leaves(state_sh, is_leaf=lambda s: isinstance(s, sharding.NamedSharding))
  split = sum(not s.is_fully_replicated for s in leaves)
  log.info("mesh %s over %d device(s) in %d process(es); %d of %d state arrays sharded.",
           dict(mesh.shape), mesh.size, jax.process_count(), split, len(leaves))
  log.debug("state shardings:\n%s", sharding.shardings_summary(state, state_sh))


def born_sharded(mesh, optimizer, params, teacher=None, rules=sharding.RULES, **init_kw):
  """(TrainState, its shardings): `step.init_state` compiled with out_shardings, so the teacher
  copy, the optimizer moments and the master weights are created in their shards (big_vision's
  eval_shape + sharded init); `params` / `teacher` should already be sharded (load_hf(mesh=))."""
  from caopd_jax.train.step import init_state  # pylint: disable=g-import-not-at-top
  frozen = init_kw.pop("frozen", None)  # (an argument, not a constant of the compiled init)
  fn = lambda p, t, f: init_state(p, optimizer, t, frozen=f, **init_kw)
  state_sh = sharding.state_shardings(jax.eval_shape(fn, params, teacher, frozen), mesh, rules)
  return jax.jit(fn, out_shardings=state_sh)(params, teacher, frozen), state_sh


def abstract_state(mesh, optimizer, params, teacher=None, rules=sharding.RULES, **init_kw):
  """The TrainState `born_sharded` would build, as ShapeDtypeStructs carrying their shardings
  (nothing is allocated: caopd_jax.plan)."""
  from caopd_jax.train.step import init_state  # pylint: disable=g-import-not-at-top
  frozen = init_kw.pop("frozen", None)
  shapes = jax.eval_shape(lambda p, t, f: init_state(p, optimizer, t, frozen=f, **init_kw),
                          params, teacher, frozen)
  per_leaf = sharding.leaf_shardings(shapes, sharding.state_shardings(shapes, mesh, rules))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                      per_leaf)


def compile_step(step_fn, mesh, state, local_batch, rules=sharding.RULES):
  """(jitted step, state shardings, batch shardings): the one jit of the train loop (declared
  in/out shardings, the state donated), for `state` / `local_batch` (arrays or shapes)."""
  state_sh = sharding.state_shardings(state, mesh, rules, check=False)
  batch_sh = sharding.batch_shardings(local_batch, mesh, rules, global_shapes=False)
  return sharding.jit_train_step(step_fn, mesh, state_sh, batch_sh), state_sh, batch_sh


def host_params(params):
  """Params readable on this host (for exporting on process 0). With several processes the
  sharded arrays are all-gathered (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return params
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return jax.tree.map(
      lambda x: x if x.is_fully_addressable or x.is_fully_replicated
      else np.asarray(multihost_utils.process_allgather(x, tiled=True)), params)


def train_loop(*, workdir: str, state, step_fn, get_batch, total_steps: int, log_every: int = 10,
               checkpoint_every: int = 0, keep: int = 2, desc: str = "train", on_log=None,
               mesh=None, rules=sharding.RULES):
  """Runs steps [restored step, total_steps); returns the final state.

  state: the initial TrainState (host or single-device arrays, the same on every process); it
    is placed on its shardings (or replaced by the newest valid checkpoint in
    WORKDIR/checkpoints, restored directly into them) and donated to the step.
  mesh: a jax.sharding.Mesh or a (data, fsdp, tensor) spec such as config.mesh (-1 = the rest;
    None = (1, -1, 1)).
  Returns the final state; with several processes its params are gathered so that process 0
  can export them (`host_params`).
  """
  mesh = sharding.make_mesh(mesh)
  state_sh = sharding.state_shardings(state, mesh, rules)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), checkpoint_every, keep)
  restored, start = ckpt.restore_latest(state, state_sh)
  if start:
    state = restored
    log.info("%s: resumed from step %d (data position %d) in %s", desc, start, start,
             ckpt.directory)
  else:
    state = sharding.place(state, state_sh)
  if start >= total_steps:
    log.info("%s: already complete (step %d of %d).", desc, start, total_steps)
    ckpt.close()
    return _for_export(state)
  _log_layout(mesh, state, state_sh)
  writer = MetricWriter(workdir)
  writer.truncate(start)  # a resumed run logs the steps after its checkpoint again
  guard = _Guard(desc)
  guard.last_saved = start or None
  history, step_jit, batch_sh = [], None, None

  def save(step, force=False):
    if force or ckpt.should_save(step):
      guard.check()  # never checkpoint a diverged state
      if ckpt.save(step, state, force=True):
        guard.last_saved = step

  try:
    with _Preemption() as preemption, tqdm(total=total_steps, initial=start, desc=desc,
                                            disable=jax.process_index() != 0) as bar:
      for step in range(start, total_steps):
        local_batch = get_batch(step)
        if step_jit is None:
          step_jit, _, batch_sh = compile_step(step_fn, mesh, state, local_batch, rules)
        batch = sharding.shard_batch(local_batch, mesh, rules, shardings=batch_sh)
        with jax.set_mesh(mesh):  # resolves sharding.constrain inside the step
          state, metrics = step_jit(state, batch)
        history.append(metrics)
        done = step + 1
        guard.add(done, metrics)
        if done % log_every == 0 or done == total_steps:
          means = _mean_metrics(history)
          history = []
          writer.write(done, means)
          bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in list(means.items())[:4]})
          if on_log is not None:
            on_log(done, means)
          guard.check()
        bar.update(1)
        save(done, force=done == total_steps)
        if preemption.reached(done):
          save(done, force=True)
          log.warning("%s: SIGTERM received; saved step %d and exiting.", desc, done)
          sys.exit(PREEMPTED_EXIT_CODE)
    save(total_steps, force=True)
  finally:  # whatever stops the loop, the checkpoints already started finish writing
    ckpt.close()
    writer.close()
  if guard.skipped:
    log.warning("%s: %d update(s) had a non-finite loss, gradient or parameters and were "
                "skipped (train/skipped in metrics.jsonl).", desc, guard.skipped)
  return _for_export(state)


def _for_export(state):
  return state.replace(params=host_params(state.params),
                       frozen=None if state.frozen is None else host_params(state.frozen))
