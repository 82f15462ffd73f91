"""The one train loop: resume, step, log, checkpoint, stop on SIGTERM.

Used by every training job (SFT warm-up, OPD, CaOPD). `step_fn(state, batch)` is the pure
step; the loop compiles it once with the state donated. `get_batch(step)` is a pure function of
the step, so the data position is the step and resuming is exact.
"""

import logging
import os
import signal
import sys

import jax
import numpy as np
from tqdm.auto import tqdm

from caopd_jax.checkpoint import Checkpointer
from caopd_jax.logging_utils import MetricWriter


class _Preemption:
  """Records SIGTERM so the loop can save and exit between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def _mean_metrics(history):
  host = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


def train_loop(*, workdir: str, state, step_fn, get_batch, total_steps: int, log_every: int = 10,
               checkpoint_every: int = 0, keep: int = 2, desc: str = "train", on_log=None):
  """Runs steps [restored step, total_steps); returns the final state."""
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), checkpoint_every, keep)
  step_fn = jax.jit(step_fn, donate_argnums=0)
  state, start = ckpt.restore_latest(state)
  if start:
    logging.info("%s: resumed from step %d in %s", desc, start, ckpt.directory)
  writer = MetricWriter(workdir)
  history = []
  with _Preemption() as preemption, tqdm(total=total_steps, initial=start, desc=desc,
                                          disable=jax.process_index() != 0) as bar:
    for step in range(start, total_steps):
      state, metrics = step_fn(state, get_batch(step))
      history.append(metrics)
      done = step + 1
      if done % log_every == 0 or done == total_steps:
        means = _mean_metrics(history)
        history = []
        writer.write(done, means)
        bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in list(means.items())[:4]})
        if on_log is not None:
          on_log(done, means)
      bar.update(1)
      ckpt.save(done, state, force=done == total_steps)
      if preemption.requested:
        ckpt.save(done, state, force=True)
        ckpt.close()
        writer.close()
        logging.warning("%s: SIGTERM received; saved step %d and exiting.", desc, done)
        sys.exit(143)
  if total_steps and total_steps not in ckpt.steps():
    ckpt.save(total_steps, state, force=True)
  ckpt.close()
  writer.close()
  return state
