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


# fixture name -> module that queues its subprocess job (tests/background.py), longest first.
_BACKGROUND = (("runs_checkpoint", "test_checkpoint"), ("swept", "test_sweep"),
               ("results", "test_sharding"), ("runs", "test_multihost"))


def pytest_collection_finish(session):
  """Queue the subprocess-heavy fixtures of the collected tests in the background."""
  import importlib  # pylint: disable=import-outside-toplevel
  wanted = {(item.module.__name__, f) for item in session.items
            for f in getattr(item, "fixturenames", ())}
  for fixture, module in _BACKGROUND:
    if (module, fixture) in wanted:
      importlib.import_module(module).start_background()


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  import background  # pylint: disable=import-outside-toplevel
  background.cleanup()


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def real_env(tmp_path_factory):
  """The real-data environment of tests/real_env.py (skips when the eval splits are absent)."""
  import real_env as env  # pylint: disable=import-outside-toplevel
  import shared_eval  # pylint: disable=import-outside-toplevel
  if not shared_eval.FOUND:
    pytest.skip(shared_eval.REASON)
  return env.build(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="session")
def arithmetic_models(tmp_path_factory):
  """(root, student dir, teacher dir): tiny random decoders over the arithmetic task's tokens."""
  from caopd_jax import tasks  # pylint: disable=import-outside-toplevel
  from configs import common  # pylint: disable=import-outside-toplevel
  from hf_fixtures import tiny_model_dir  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("arith")
  tok = tasks.get(common.arithmetic_task()).new_tokenizer()
  return root, tiny_model_dir(root / "student", tok, 0), tiny_model_dir(root / "teacher", tok, 1, 24)
