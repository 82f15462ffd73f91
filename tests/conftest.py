import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers (hf_fixtures)
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # the repo root


def pytest_collection_finish(session):
  """Start the end-to-end smoke pipeline + sweep runs (subprocesses) in the background as soon
  as it is known that a test needing them will run; see tests/test_sweep.py."""
  if any(getattr(item, "fixturenames", ()) and "swept" in item.fixturenames
         for item in session.items):
    import test_sweep  # pylint: disable=import-outside-toplevel
    test_sweep.start_background()
