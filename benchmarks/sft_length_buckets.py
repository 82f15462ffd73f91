"""The base SFT step with config.length_buckets against the padded batch, side by side.

  python -m benchmarks.sft_length_buckets [--repeats=5] [--steps=20]

The default job's base stage: batch 64 of 2-digit additions in its 3 formats; padded, every row
is as wide as the widest format; bucketed, each format has its own width (same loss, same
gradients: tests/test_length_buckets.py). Interleaved repeats; medians and ranges of the ratio.
"""

import time

from absl import app, flags
import jax
import numpy as np
from flax import nnx

from caopd_jax import sharding, tasks
from caopd_jax.jobs import sft
from caopd_jax.models import ModelConfig, Transformer
from caopd_jax.train.loop import born_sharded
from caopd_jax.train.optim import make_optimizer
from caopd_jax.train.step import make_sft_step
from configs import default

_REPEATS = flags.DEFINE_integer("repeats", 5, "interleaved repeats")
_STEPS = flags.DEFINE_integer("steps", 20, "steps per timing")


def main(_):
  c = default.get_config()
  base, task = c.base, tasks.get(c.task)
  tok = task.new_tokenizer()
  rng = np.random.default_rng(0)
  records = [{"id": i, "question": f"{a:02d}+{b:02d}", "answer": str(a + b), "difficulty": 2}
             for i, (a, b) in enumerate(rng.integers(10, 100, (base.batch_size, 2)))]
  widths = sft.format_widths(tok, task, records, base.mix)
  cfg = ModelConfig(vocab_size=tok.vocab_size, **base.model)
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
  mesh = sharding.make_mesh((1, -1, 1))
  runs = {}
  for name, buckets in (("padded", False), ("bucketed", True)):
    base.length_buckets = buckets
    batch = jax.tree.map(jax.numpy.asarray, sft.sft_batch(base, task, tok, records, 0, [2], widths))
    opt, schedule = make_optimizer(base.optim, base.steps)
    state, _ = born_sharded(mesh, opt, params, seed=0)
    step = jax.jit(make_sft_step(graphdef, opt, schedule), donate_argnums=0)
    state, m = step(state, batch)
    jax.block_until_ready(m)
    runs[name] = [step, state, batch]
  times = {k: [] for k in runs}
  for _ in range(_REPEATS.value):
    for name, r in runs.items():
      t = time.perf_counter()
      for _ in range(_STEPS.value):
        r[1], m = r[0](r[1], r[2])
      jax.block_until_ready(m)
      times[name].append((time.perf_counter() - t) / _STEPS.value)
  ratio = np.asarray(times["bucketed"]) / np.asarray(times["padded"])
  for k, v in times.items():
    print(f"{k:9s} step: median {np.median(v) * 1e3:.1f} ms (range {min(v) * 1e3:.1f}-"
          f"{max(v) * 1e3:.1f})")
  print(f"widths {widths}; bucketed / padded: median {np.median(ratio):.2f} "
        f"(range {ratio.min():.2f}-{ratio.max():.2f}) over {len(ratio)} interleaved repeats")


if __name__ == "__main__":
  app.run(main)
