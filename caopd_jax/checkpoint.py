"""Orbax checkpoints of the whole TrainState (params, optimizer, teacher, step, RNG).

The data position is the step (the loader is a pure function of (seed, step)), so restoring the
state restores the data stream too. `latest valid`: a checkpoint that fails to restore (partial
write, corrupt file) is skipped with a warning and the previous one is used.
"""

import logging
import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager: save every `every` steps, keep `keep`."""

  def __init__(self, directory: str, every: int = 0, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.every = every
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def steps(self):
    return sorted(self.manager.all_steps())

  def restore_latest(self, template):
    """(state, step) from the newest checkpoint that restores, or (template, 0) if none."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    for step in reversed(self.steps()):
      try:
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract)), step
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint %d in %s could not be restored (%s: %s); trying the previous "
                        "one.", step, self.directory, type(e).__name__, e)
    return template, 0

  def save(self, step: int, state, force: bool = False):
    if force or (self.every and step % self.every == 0):
      if step not in self.manager.all_steps():
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
