"""Compile time of the whole OPD iteration at Qwen3-0.6B and 1.7B depth: scanned layers vs
unrolled, side by side (compile only: nothing is allocated).

The step is the paper config's (configs/paper/qwen3_science.py: K=8 rollouts of 4 prompts,
1024 + 1024 tokens, bf16 compute, remat full, one microbatch per sequence and device) built by
the planner's abstract setup (caopd_jax.plan) on one CPU device; each variant is compiled
`--repeats` times in alternation (a fresh jit each time) and the median is printed with the
unrolled / scanned ratio.

  python -m benchmarks.compile_time [--sizes 0.6b,1.7b --repeats 2]
"""
import argparse
import statistics
import time

import jax

from caopd_jax.jobs import opd
from caopd_jax.plan import abstract_batch
from caopd_jax.train.loop import compile_step
from configs.paper import qwen3_science


def compile_seconds(size: str, scan: bool) -> float:
  c = qwen3_science.get_config(f"size={size}")
  c.update(dict(scan_layers=scan, remat="full", microbatches=8, mesh=(1, -1, 1)))
  run = opd.setup(c, "/tmp/caopd_compile_time", abstract=True)
  batch = abstract_batch(run, c.prompts_per_step)
  step, _, _ = compile_step(run.iteration, run.mesh, run.state, batch)
  t0 = time.perf_counter()
  with jax.set_mesh(run.mesh):
    step.lower(run.state, batch).compile()
  return time.perf_counter() - t0


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="0.6b,1.7b")
  p.add_argument("--repeats", type=int, default=2)
  a = p.parse_args()
  print(f"{jax.devices()[0].platform} x{jax.device_count()}; OPD iteration of the paper config")
  print(f"{'student':<10} {'layers':>6} {'scanned s':>22} {'unrolled s':>22} {'unrolled/scanned':>17}")
  from caopd_jax.models.presets import PRESETS  # pylint: disable=g-import-not-at-top
  for size in a.sizes.split(","):
    times = {True: [], False: []}
    for _ in range(a.repeats):
      for scan in (True, False):  # interleaved
        times[scan].append(compile_seconds(size, scan))
    med = {k: statistics.median(v) for k, v in times.items()}
    rng = {k: f"{med[k]:.1f} [{min(v):.1f}-{max(v):.1f}]" for k, v in times.items()}
    layers = PRESETS[f"Qwen3-{size.upper()}"]["num_layers"]
    print(f"Qwen3-{size.upper():<4} {layers:>6} {rng[True]:>22} {rng[False]:>22} "
          f"{med[False] / med[True]:>16.2f}x", flush=True)


if __name__ == "__main__":
  main()
