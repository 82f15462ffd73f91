import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers (hf_fixtures)
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # the repo root

import fast_xla  # pylint: disable=g-import-not-at-top,wrong-import-position

# Set before JAX creates its CPU backend (tests/fast_xla.py says why).
os.environ["XLA_FLAGS"] = fast_xla.added_to(os.environ.get("XLA_FLAGS", ""))


# fixture name -> module that queues its subprocess job (tests/background.py), in the order the
# in-process tests (alphabetical files) reach them, so that none waits for a later one.
_BACKGROUND = (("runs_checkpoint", "test_checkpoint"), ("runs", "test_multihost"),
               ("matrix_runs", "test_opd_job"), ("results", "test_sharding"),
               ("swept", "test_sweep"))


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
  import opd_matrix  # pylint: disable=import-outside-toplevel
  return opd_matrix.arithmetic_models(tmp_path_factory.mktemp("arith"))
