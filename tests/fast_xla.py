"""XLA flags for the test suite (conftest.py sets them in-process; subprocess tests pass them on).

The suite is compile-bound (hundreds of small jitted programs run once or twice), so tests
compile with XLA's LLVM optimisation off and XLA:CPU's classic elemental emitters instead of the
fusion emitters (each about a quarter off the suite's time on the 2-core box). Numerics are
unchanged within every test's tolerance; the jobs, experiments and benchmarks (which check parity
with HF themselves) use XLA's defaults. CAOPD_TEST_XLA_DEFAULT=1 runs the tests with XLA's
default pipeline instead.
"""

import os

FLAGS = "" if os.environ.get("CAOPD_TEST_XLA_DEFAULT") else (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false")


def added_to(xla_flags: str, *extra: str) -> str:
  """`xla_flags` plus `extra` and the suite's FLAGS (once: not again when already there)."""
  parts = [xla_flags, *extra]
  if FLAGS and "xla_backend_optimization_level" not in xla_flags:
    parts.append(FLAGS)
  return " ".join(p for p in parts if p).strip()
