r"""Compile-only memory plan of a config's training step: nothing is loaded or allocated.

  python -m caopd_jax.plan --config=configs/paper/qwen3_science.py:size=8b --hardware=v5p-8
  python -m caopd_jax.plan --config=configs/opd.py --devices=8 --mesh='(1,-1,1)' --hbm=16

The config's real iteration (the sampler's K rollouts, verification, the OPD batch, teacher
scoring and the update: caopd_jax.opd.iteration, built by the OPD job's own `setup` in abstract
mode) is jitted exactly as the train loop jits it (`train.loop.compile_step`: the same in/out
shardings and donation), lowered with ShapeDtypeStructs and compiled for N emulated CPU devices.
Per device it prints the argument, output, alias and temporary bytes of the compiled program
(`memory_analysis`), the peak (arguments + outputs - aliased + temporaries) against the HBM
given, XLA's FLOP count (`cost_analysis`; XLA counts a while-loop body once, so the sampler's
decode steps and scanned layers are under-counted: an analytic 2N FLOPs/token count is printed
beside it) and the compile time. CPU compilation decides fusion and buffer reuse differently from
TPU / GPU compilers: read the bytes as an estimate of what the mesh and settings need.
"""

import os
import re
import sys

HARDWARE = {  # name: (devices, HBM GiB per device)
    "v4-8": (4, 32), "v4-32": (16, 32), "v5e-16": (16, 16), "v5p-8": (4, 95), "h100x8": (8, 80),
}


def _devices(argv) -> int:
  """--devices=N or --hardware=NAME from argv (read before JAX starts)."""
  for a in argv:
    m = re.match(r"--devices=(\d+)$", a)
    if m:
      return int(m.group(1))
    m = re.match(r"--hardware=(\S+)$", a)
    if m and m.group(1) in HARDWARE:
      return HARDWARE[m.group(1)][0]
  return 0


if __name__ == "__main__" and _devices(sys.argv):  # emulate the devices before JAX starts
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_devices(sys.argv)}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

GIB = 2 ** 30


def abstract_batch(run, batch_size: int):
  """ShapeDtypeStructs of one batch of prompts: the shapes `run.encode` gives (from real
  records when the run has them, else from its widths)."""
  if run.records:
    recs = [run.records[i % len(run.records)] for i in range(batch_size)]
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                        run.encode(recs))
  w, i32, b = run.widths, np.int32, bool
  out = {"student_prompt": (w["student"], i32), "student_valid": (w["student"], b)}
  if "head" in w:
    out.update(head=(w["head"], i32), head_valid=(w["head"], b), demo=(w["demo"], i32),
               demo_valid=(w["demo"], b))
  out = {k: jax.ShapeDtypeStruct((batch_size, n), t) for k, (n, t) in out.items()}
  out["row"] = jax.ShapeDtypeStruct((batch_size,), np.int32)
  out["truncated"] = jax.ShapeDtypeStruct((batch_size,), np.bool_)
  return out


def model_flops(run, batch_size: int) -> float:
  """Analytic FLOPs of one iteration: 2 N per token forward (sampling, teacher), 6 N per token
  for the student's forward + backward (N: parameters outside the embedding table). With LoRA the
  frozen base N_0 costs 4 N_0 (no weight gradients) and the adapters 6 N_a."""
  count = lambda p: sum(int(np.prod(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(p)
                        if "embed" not in jax.tree_util.keystr(path)) if p is not None else 0
  st = run.state
  n_a, n_0 = count(st.params), count(st.frozen)
  n_t = count(st.teacher) + (n_0 if run.iteration.teacher_shares_base else 0)
  k, w = run.iteration.num_samples, run.widths
  rows, new = batch_size * k, run.sampling.max_new_tokens
  prompt, context = w["student"], w.get("head", w["student"]) + w.get("demo", 0)
  return (2 * (n_a + n_0) * rows * (prompt + new) + 2 * n_t * rows * (context + new)
          + (6 * n_a + 4 * n_0) * rows * (prompt + new))


def plan(config, workdir="/tmp/caopd_plan", hbm_gib=None) -> dict:
  """Compiles the config's step on this process's devices; returns the per-device plan."""
  from caopd_jax.jobs import opd  # pylint: disable=g-import-not-at-top
  from caopd_jax.train.loop import compile_step  # pylint: disable=g-import-not-at-top
  if config.job == "caopd_pipeline":  # the pipeline's OPD stage
    stage = config.opd
    with stage.unlocked():
      stage.task = config.task
    config = stage
  if config.job != "opd":
    raise ValueError(f"plan covers the OPD job (or a pipeline's OPD stage), not {config.job!r}.")
  run = opd.setup(config, workdir, abstract=True)
  batch = abstract_batch(run, config.prompts_per_step)
  step, _, batch_sh = compile_step(run.iteration, run.mesh, run.state, batch)
  batch = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), batch,
                       batch_sh)
  t0 = time.time()
  with jax.set_mesh(run.mesh):  # as the train loop runs it
    compiled = step.lower(run.state, batch).compile()
  seconds = time.time() - t0
  mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  out = {
      "devices": jax.device_count(), "mesh": dict(run.mesh.shape),
      "argument_bytes": int(mem.argument_size_in_bytes), "output_bytes": int(mem.output_size_in_bytes),
      "alias_bytes": int(mem.alias_size_in_bytes), "temp_bytes": int(mem.temp_size_in_bytes),
      "xla_flops": float(cost.get("flops", 0.0)), "model_flops": model_flops(run, config.prompts_per_step),
      "compile_s": seconds,
      "settings": {k: config[k] for k in ("microbatches", "remat", "scan_layers", "param_dtype",
                                         "master_weights")} | {"teacher_dtype": config.teacher.dtype},
  }
  out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                       + out["temp_bytes"])
  return verdict(out, hbm_gib) if hbm_gib else out


def verdict(p: dict, hbm_gib: float) -> dict:
  """The plan `p` against `hbm_gib` GiB per device: hbm_gib and fits (peak <= HBM) added."""
  return {**p, "hbm_gib": float(hbm_gib), "fits": p["peak_bytes"] <= hbm_gib * GIB}


def report(p) -> str:
  g = lambda k: f"{p[k] / GIB:8.2f} GiB"
  lines = [f"mesh {p['mesh']} ({p['devices']} devices); settings {p['settings']}",
           f"  per device: arguments {g('argument_bytes')}  outputs {g('output_bytes')}  aliased "
           f"{g('alias_bytes')}  temporaries {g('temp_bytes')}",
           f"  peak {g('peak_bytes')}" + (f" of {p['hbm_gib']:.0f} GiB HBM: "
                                           f"{'FITS' if p['fits'] else 'DOES NOT FIT'}"
                                           if "hbm_gib" in p else ""),
           f"  FLOPs per step: XLA {p['xla_flops']:.3e} per device (while-loop bodies counted "
           f"once), analytic {p['model_flops']:.3e} in all; compile {p['compile_s']:.1f} s"]
  return "\n".join(lines)


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from caopd_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  checkpoint.quiet_orbax_logging()
  f = flags.FLAGS
  config = _CONFIG.value
  with config.unlocked():
    if f.mesh:
      config.mesh = tuple(int(x) for x in f.mesh.strip("()").split(","))
    for key in ("microbatches", "remat", "scan_layers", "param_dtype", "master_weights"):
      if getattr(f, key) is not None:
        target = config.opd if config.job == "caopd_pipeline" else config
        target[key] = getattr(f, key)
  hbm = f.hbm or (HARDWARE[f.hardware][1] if f.hardware else None)
  p = plan(config, hbm_gib=hbm)
  print(report(p))
  if f.json:
    with open(f.json, "w") as fh:
      json.dump(p, fh, indent=1)
  del argv


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                            lock_config=True)
  flags.DEFINE_integer("devices", None, "emulated CPU devices (set before JAX starts)")
  flags.DEFINE_enum("hardware", None, list(HARDWARE), "device count and HBM of a slice / node")
  flags.DEFINE_string("mesh", "", "(data, fsdp, tensor) override, e.g. '(1,-1,1)'")
  flags.DEFINE_float("hbm", None, "HBM per device in GiB (default: the --hardware's)")
  flags.DEFINE_integer("microbatches", None, "override config.microbatches")
  flags.DEFINE_enum("remat", None, ["none", "full", "save_dots"], "override config.remat")
  flags.DEFINE_bool("scan_layers", None, "override config.scan_layers")
  flags.DEFINE_enum("param_dtype", None, ["float32", "bfloat16"], "override config.param_dtype")
  flags.DEFINE_bool("master_weights", None, "override config.master_weights")
  flags.DEFINE_string("json", "", "also write the plan as JSON here")
  app.run(main)
