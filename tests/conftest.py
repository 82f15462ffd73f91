import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers (hf_fixtures)
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # the repo root

# The suite is compile-bound (hundreds of small jitted programs run once or twice), so tests
# compile with XLA's LLVM optimisation off: 4:00 instead of 5:20 for the whole suite on the
# 2-core box. Numerics are unchanged within every test's tolerance; the jobs, experiments and
# benchmarks (which check parity with HF themselves) use XLA's defaults. CAOPD_TEST_XLA_DEFAULT=1
# runs the tests with the default pipeline too. Set before JAX creates its CPU backend.
if not os.environ.get("CAOPD_TEST_XLA_DEFAULT"):
  _FAST = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST).strip()


def pytest_collection_finish(session):
  """Start the end-to-end smoke pipeline + sweep runs (subprocesses) in the background as soon
  as it is known that a test needing them will run; see tests/test_sweep.py."""
  if any(getattr(item, "fixturenames", ()) and "swept" in item.fixturenames
         for item in session.items):
    import test_sweep  # pylint: disable=import-outside-toplevel
    test_sweep.start_background()


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def real_env(tmp_path_factory):
  """The real-data environment of tests/real_env.py (skips when the eval splits are absent)."""
  import real_env as env  # pylint: disable=import-outside-toplevel
  import shared_eval  # pylint: disable=import-outside-toplevel
  if not shared_eval.FOUND:
    pytest.skip(shared_eval.REASON)
  return env.build(tmp_path_factory.mktemp("real"))
