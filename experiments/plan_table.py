r"""The compile-only plan of every paper config on the usual slices and nodes (docs/scaling.md).

  python -m experiments.plan_table --out=/tmp/plans [--sizes=0.6b,8b --hardware=v5p-8]

For each (student size, hardware) it runs `python -m caopd_jax.plan` (one process per run: the
device count is fixed when JAX starts) on the ladder of settings below, cheapest first, and
keeps the first whose peak fits in `--margin` (default 90%) of the hardware's HBM (the CPU
compile's estimate leaves room for the accelerator compiler's own choices): scanned layers always (compile time; unrolled
layers also cost XLA's scheduler extra temporaries), then rematerialisation, gradient
accumulation down to one sequence per device, bfloat16 parameters with float32 master weights,
pure bfloat16 (parameters, Adam moments and the teacher, as the released code trains). The
science and tool-use configs have the same shapes (1024-token caps), so one table covers both.
Writes OUT/<size>_<hardware>_<i>.json and OUT/plan_table.md.
"""

import argparse
import json
import os
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
from caopd_jax.plan import GIB, HARDWARE  # pylint: disable=g-import-not-at-top,wrong-import-position

SIZES = ("0.6b", "1.7b", "4b", "8b")
ROWS = 32  # 4 prompts x 8 rollouts per step


def ladder(devices):
  m = max(ROWS // devices, 1)  # microbatches that still give every device a whole sequence
  return [dict(remat="none", microbatches=1, param_dtype="float32", master_weights=False),
          dict(remat="full", microbatches=1, param_dtype="float32", master_weights=False),
          dict(remat="full", microbatches=m, param_dtype="float32", master_weights=False),
          dict(remat="full", microbatches=m, param_dtype="bfloat16", master_weights=True),
          dict(remat="full", microbatches=m, param_dtype="bfloat16", master_weights=False,
               teacher_dtype="bfloat16")]


def run_plan(size, hardware, settings, out):
  args = [sys.executable, "-m", "caopd_jax.plan",
          f"--config=configs/paper/qwen3_science.py:size={size}", f"--hardware={hardware}",
          "--scan_layers", f"--json={out}"]
  for k, v in settings.items():
    if k == "teacher_dtype":
      args.append(f"--config.teacher.dtype={v}")
    elif isinstance(v, bool):
      args.append(f"--{k}" if v else f"--no{k}")
    else:
      args.append(f"--{k}={v}")
  proc = subprocess.run(args, cwd=_ROOT, capture_output=True, text=True, timeout=3600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  with open(out) as f:
    return json.load(f)


def describe(p):
  s = p["settings"]
  prec = ("f32" if s["param_dtype"] == "float32" else
          "bf16 + f32 master" if s["master_weights"] else "pure bf16")
  return f"remat {s['remat']}, {s['microbatches']} microbatches, {prec}"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--sizes", default=",".join(SIZES))
  ap.add_argument("--hardware", default=",".join(HARDWARE))
  ap.add_argument("--margin", type=float, default=0.9, help="usable fraction of the HBM")
  a = ap.parse_args(argv)
  os.makedirs(a.out, exist_ok=True)
  rows = []
  for size in a.sizes.split(","):
    for hw in a.hardware.split(","):
      devices, hbm = HARDWARE[hw]
      tried, chosen = [], None
      for i, settings in enumerate(ladder(devices)):
        path = os.path.join(a.out, f"{size}_{hw}_{i}.json")
        p = json.load(open(path)) if os.path.exists(path) else run_plan(size, hw, settings, path)
        tried.append(p)
        print(f"{size} {hw}: {describe(p)} -> {p['peak_bytes'] / GIB:.1f} GiB of {hbm}", flush=True)
        if p["peak_bytes"] <= a.margin * hbm * GIB:
          chosen = p
          break
      rows.append((size, hw, devices, hbm, chosen or tried[-1], chosen is not None, len(tried)))
  lines = [f"| student | hardware | devices x HBM | fits ({a.margin:.0%}) | mesh (data, fsdp, tensor) | settings | "
           "peak / device | temporaries | compile |", "|---" * 9 + "|"]
  for size, hw, devices, hbm, p, fits, _ in rows:
    mesh = ", ".join(str(p["mesh"][k]) for k in ("data", "fsdp", "tensor"))
    lines.append(f"| Qwen3-{size.upper()} | {hw} | {devices} x {hbm} GiB | "
                 f"{'yes' if fits else '**no**'} | ({mesh}) | {describe(p)} | "
                 f"{p['peak_bytes'] / GIB:.1f} GiB | {p['temp_bytes'] / GIB:.1f} GiB | "
                 f"{p['compile_s']:.0f} s |")
  md = "\n".join(lines) + "\n"
  with open(os.path.join(a.out, "plan_table.md"), "w") as f:
    f.write(md)
  print(md)


if __name__ == "__main__":
  main()
