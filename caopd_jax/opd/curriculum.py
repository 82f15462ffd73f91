"""Entropy-gated length curriculum ("Decoupling KL and Trajectories", arXiv 2605.16826).

The loss sees only completion columns < L (`prompts["max_completion"]`, int32 [B], a dynamic
input of the iteration: no recompilation); every `every` steps the student samples completions for
held-out prompts and L grows by `increment` (up to `max_len`) only while their mean token entropy
is >= `h_min`. Decisions are stored in WORKDIR/curriculum.json and L is a function of the step, so
a resumed run replays them exactly. Config (configs/common.py): curriculum = {enabled, start,
increment, max_len, every, h_min, eval_prompts}.
"""

import dataclasses
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from caopd_jax.diagnostics.token_stats import entropy
from caopd_jax.objectives.core import token_mean
from caopd_jax.sampling import sample

log = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"))
def heldout_stats(graphdef, params, prompt, prompt_valid, key, max_len, *, sampling):
  """(mean token entropy of the student's own completions, mean completion length) on held-out
  prompts [B, P]; the entropy counts completion tokens at columns < max_len."""
  out = sample(graphdef, params, prompt, prompt_valid, key, sampling)
  n = out.tokens.shape[1]
  model = nnx.merge(graphdef, params)
  logits = model(jnp.concatenate([prompt, out.tokens], 1),
                 valid=jnp.concatenate([prompt_valid, out.mask], 1))[:, -n - 1:-1]
  h = entropy(jax.nn.log_softmax(logits.astype(jnp.float32), -1))
  mask = out.mask & (jnp.arange(n)[None, :] < max_len)
  return token_mean(h, mask), jnp.mean(out.lengths.astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class LengthCurriculum:
  """Entropy-gated length curriculum: start at `start` completion tokens; every `every` steps,
  if held-out mean token entropy >= h_min, grow by `increment` up to `max_len`."""
  start: int
  increment: int
  max_len: int
  every: int
  h_min: float

  @classmethod
  def from_config(cls, c, max_len):
    return cls(start=c.start, increment=c.increment, max_len=c.max_len or max_len,
               every=c.every, h_min=c.h_min)

  def next_length(self, length: int, entropy_value: float) -> int:
    if entropy_value >= self.h_min:
      return min(self.max_len, length + self.increment)
    return length

  @staticmethod
  def length_at(history, step: int, start: int) -> int:
    """The length in force at `step` (the last decision taken at or before it)."""
    length = start
    for h in history:
      if h["step"] <= step:
        length = h["max_completion"]
    return length


def train_with_curriculum(curriculum: LengthCurriculum, *, workdir, state, step_fn, get_batch,
                          heldout_fn, total_steps, train_loop, **loop_kwargs):
  """Runs `train_loop` in segments of `curriculum.every` steps, with batches carrying
  max_completion = the length in force; between segments `heldout_fn(params) -> (entropy,
  mean length)` gates the next length. Returns the final state (a checkpoint at total_steps
  is left in WORKDIR/checkpoints, so a later `train_loop(total_steps=...)` returns at once)."""
  path = os.path.join(workdir, "curriculum.json")
  history = []
  if os.path.exists(path):
    with open(path) as f:
      history = json.load(f)
  start = 0
  while start < total_steps:
    end = min(total_steps, start + curriculum.every)
    length = LengthCurriculum.length_at(history, start, curriculum.start)

    def batch_fn(step, length=length):
      b = get_batch(step)
      rows = np.shape(b["student_prompt"])[0]
      return {**b, "max_completion": np.full((rows,), length, np.int32)}

    state = train_loop(workdir=workdir, state=state, step_fn=step_fn, get_batch=batch_fn,
                       total_steps=end, **loop_kwargs)
    if end < total_steps and not any(h["step"] == end for h in history):
      ent, mean_len = (float(x) for x in heldout_fn(state.params, end, length))
      new = curriculum.next_length(length, ent)
      history.append({"step": end, "entropy": ent, "mean_length": mean_len,
                      "max_completion": new})
      log.info("curriculum: step %d held-out entropy %.3f -> max_completion %d", end, ent, new)
      if jax.process_index() == 0:
        with open(path + ".tmp", "w") as f:
          json.dump(history, f, indent=1)
        os.replace(path + ".tmp", path)
    start = end
  return state


def run(c, max_len: int, *, seed: int, workdir, state, step_fn, get_batch, graphdef, heldout,
        sampling, total_steps, train_loop, **loop_kwargs):
  """Trains `total_steps` steps under curriculum config `c` (see `train_with_curriculum`);
  heldout: encoded held-out prompts (student_prompt/student_valid are used)."""
  cur = LengthCurriculum.from_config(c, max_len)
  prompt, valid = jnp.asarray(heldout["student_prompt"]), jnp.asarray(heldout["student_valid"])

  def heldout_fn(params, step, length):
    key = jax.random.fold_in(jax.random.key(seed + 7), step)
    return jax.device_get(heldout_stats(graphdef, params, prompt, valid, key, length,
                                        sampling=sampling))

  return train_with_curriculum(cur, workdir=workdir, state=state, step_fn=step_fn,
                               get_batch=get_batch, heldout_fn=heldout_fn,
                               total_steps=total_steps, train_loop=train_loop, **loop_kwargs)
