"""Subprocess-heavy fixtures, run one after another in a background thread from the moment test
collection ends (conftest.py), so their subprocesses use the core the in-process tests leave
idle; a test's fixture only waits for its job (`result`). Jobs write under their own temporary
directories (not tmp_path_factory: concurrent pytest sessions rotate its old directories)."""

import concurrent.futures
import shutil
import tempfile

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="caopd-bg")
_FUTURES, _DIRS = {}, []


def start(name: str, fn):
  """Queues `fn(tmp_dir)` once under `name`."""
  if name not in _FUTURES:
    d = tempfile.mkdtemp(prefix=f"caopd_{name}_")
    _DIRS.append(d)
    _FUTURES[name] = _POOL.submit(fn, d)


def result(name: str, fn):
  """The result of job `name` (queued now if collection did not)."""
  start(name, fn)
  return _FUTURES[name].result()


def cleanup():
  for d in _DIRS:
    shutil.rmtree(d, ignore_errors=True)
