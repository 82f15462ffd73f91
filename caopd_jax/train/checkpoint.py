"""Orbax checkpoints of the whole TrainState and the data position, restored into shardings.

Layout: DIR/<step>/{state, meta}, where `state` is the TrainState (params, optimizer state,
teacher / EMA params, step, RNG key data) and `meta` is JSON with the step and the data
position. The data position is the step (the loaders are pure functions of (seed, step)), so
restoring the state restores the data stream; it is written out explicitly anyway and checked
on restore.

`restore_latest` restores the newest checkpoint that reads back and is consistent; a corrupt or
partial one (truncated / deleted files, a step that disagrees with its metadata) is skipped
with a warning, the previous one is used, and the bad one is moved aside to
`<step>.corrupt-<time>` so that training can write that step again. If no checkpoint restores
at all, that is an error (most likely the model or optimizer config changed), not a silent
restart from scratch.

Arrays are restored directly into the target shardings (pass them to `restore_latest`), so a
run may resume on a different mesh or number of processes.
"""

import logging
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

STATE, META = "state", "meta"
FORMAT = 1  # bump when the layout of `meta` or `state` changes


class NoValidCheckpointError(RuntimeError):
  pass


def quiet_orbax_logging(level=logging.WARNING):
  """Drops orbax's per-save / per-restore INFO lines (dozens per checkpoint) from the logs."""

  class _Filter(logging.Filter):

    def filter(self, record):
      return (record.levelno >= level or
              not ("orbax" in record.pathname or "orbax" in record.name))

  f = _Filter()
  for logger in (logging.getLogger(), logging.getLogger("absl")):
    logger.addFilter(f)
    for handler in logger.handlers:
      handler.addFilter(f)
  try:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.get_absl_handler().addFilter(f)
  except ImportError:  # pragma: no cover
    pass
  return f


def _barrier(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _abstract(template, shardings=None):
  """ShapeDtypeStructs (with target shardings) for every array of `template`."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  from caopd_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  per_leaf = sharding_lib.leaf_shardings(template, shardings)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                      template, per_leaf)


class Checkpointer:
  """ocp.CheckpointManager for TrainStates: save every `every` steps, keep the `keep` newest.

  Saves are asynchronous (device -> host copy happens before `save` returns, so the state may
  be donated to the next step right away); `close()` waits for the last one.
  """

  def __init__(self, directory: str, every: int = 0, keep: int = 2, async_save: bool = True):
    directory = os.fspath(directory)
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.every = every
    self.keep = keep
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save),
        item_names=(STATE, META))

  def steps(self):
    return sorted(self.manager.all_steps())

  def latest_step(self):
    steps = self.steps()
    return steps[-1] if steps else None

  def _restore(self, step, abstract):
    out = self.manager.restore(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardRestore(abstract), META: ocp.args.JsonRestore()}))
    state, meta = out[STATE], out[META]
    if not isinstance(meta, dict) or meta.get("step") != step:
      raise ValueError(f"metadata {meta!r} does not belong to step {step}")
    if meta.get("data_position") != step:
      raise ValueError(f"data position {meta.get('data_position')} != step {step}")
    if hasattr(state, "step") and int(jax.device_get(state.step)) != step:
      raise ValueError(f"restored state.step={int(state.step)} != checkpoint step {step}")
    return state

  def restore_latest(self, template, shardings=None):
    """(state, step) from the newest checkpoint that restores, or (template, 0) if there is none.

    `template` gives the tree structure, shapes and dtypes; `shardings` (a pytree prefix of it,
    e.g. caopd_jax.sharding.state_shardings) where the arrays should land.
    """
    steps = self.steps()
    if not steps:
      return template, 0
    abstract = _abstract(template, shardings)
    errors = []
    for step in reversed(steps):
      try:
        state = self._restore(step, abstract)
      except Exception as e:  # pylint: disable=broad-except
        log.warning("Checkpoint %d in %s could not be restored (%s: %s); trying the previous "
                    "one.", step, self.directory, type(e).__name__, str(e).splitlines()[0][:300])
        errors.append((step, e))
        continue
      if errors:
        self._quarantine([s for s, _ in errors])
      return state, step
    raise NoValidCheckpointError(
        f"None of the checkpoints {steps} in {self.directory} could be restored into this "
        f"TrainState (did the model / optimizer config change?). Last error: "
        f"{type(errors[-1][1]).__name__}: {errors[-1][1]}. Move the directory away to start "
        "from scratch.")

  def _quarantine(self, bad_steps):
    """Moves unreadable steps aside (kept for inspection) so they can be written again."""
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in bad_steps:
        src = epath.Path(self.directory) / str(step)
        if src.exists():
          dst = epath.Path(self.directory) / f"{step}.corrupt-{stamp}"
          src.rename(dst)
          log.warning("Moved the unreadable checkpoint %s to %s.", src, dst)
    _barrier("caopd_checkpoint_quarantine")
    self.manager.reload()

  def should_save(self, step: int) -> bool:
    return bool(self.every) and step % self.every == 0

  def save(self, step: int, state, force: bool = False, extra_meta=None) -> bool:
    """Saves `state` as step `step` if it is a multiple of `every` (or `force`); False if not."""
    if not (force or self.should_save(step)) or step in self.manager.all_steps():
      return False
    meta = {"step": int(step), "data_position": int(step), "format": FORMAT,
            "process_count": jax.process_count(), "time": time.time(), **(extra_meta or {})}
    self.manager.save(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}), force=True)
    return True

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
