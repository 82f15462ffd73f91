"""A run's workdir: an exclusive lock, the record of the config that made it, completion.

  with workdir.lock(path):             # one run per workdir; process 0 holds it
    workdir.check_config(path, config) # a different config than the recorded one -> ConfigChanged
    ...
    workdir.mark_complete(path, config)

WORKDIR/config.json records the config (canonical JSON). A rerun or resume whose config differs
in a key that shapes the result stops before doing anything, listing the changed keys; keys under
a name in VOLATILE (logging and checkpoint cadence, the mesh, evaluation, the data location) may
change (a finished run then only re-evaluates). `python run.py --allow_config_change` (or
CAOPD_ALLOW_CONFIG_CHANGE=1) accepts a change: the old record is kept as config.<time>.json.
The lock is an flock on WORKDIR/.lock holding the holder's pid, host and start time; the
kernel releases it when the holder dies, so a stale file from a killed run is simply taken over.
"""

import contextlib
import fcntl
import json
import logging
import os
import socket
import time

import jax

log = logging.getLogger(__name__)

CONFIG, COMPLETE, LOCK = "config.json", "run_complete.json", ".lock"
VOLATILE = ("eval", "log_every", "checkpoint_every", "keep_checkpoints", "mesh", "data_dir")
ALLOW_ENV = "CAOPD_ALLOW_CONFIG_CHANGE"


class ConfigChanged(ValueError):
  """The workdir was made by a different config."""


class WorkdirLocked(RuntimeError):
  """Another run holds the workdir."""


def flat(config) -> dict:
  """{dotted key: JSON value} of a ConfigDict (tuples as lists)."""
  out = {}

  def walk(prefix, x):
    if isinstance(x, dict):
      for k, v in x.items():
        walk(f"{prefix}{k}.", v)
    else:
      out[prefix[:-1]] = x

  walk("", json.loads(config.to_json(sort_keys=True)))
  return out


def diff(old: dict, new: dict, volatile: bool = False) -> list[str]:
  """'key: old -> new' lines for keys that differ (only VOLATILE ones if `volatile`, else the
  others)."""
  lines = []
  for k in sorted(set(old) | set(new)):
    if old.get(k, "<absent>") != new.get(k, "<absent>") and volatile == any(
        part in VOLATILE for part in k.split(".")):
      lines.append(f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}")
  return lines


def _write_json(path, value):
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True)
  os.replace(tmp, path)  # atomic, and idempotent when `path` exists


def check_config(path: str, config, allow_change: bool | None = None):
  """Records `config` in path/config.json, or compares it with the recorded one (see module)."""
  if allow_change is None:
    allow_change = os.environ.get(ALLOW_ENV, "") not in ("", "0")
  new = flat(config)
  record = os.path.join(path, CONFIG)
  if os.path.exists(record):
    with open(record) as f:
      old = json.load(f)
    if old == new:
      return
    changed = diff(old, new)
    if changed and not allow_change:
      raise ConfigChanged(
          f"{path} was made by a different config; changed keys:\n  " + "\n  ".join(changed)
          + "\nUse a new --workdir, or pass --allow_config_change to continue this one with the "
          "new config (the old record is kept).")
    if changed:
      log.warning("%s: continuing with a changed config (--allow_config_change):\n  %s", path,
                  "\n  ".join(changed))
    if jax.process_index() == 0:
      _write_json(os.path.join(path, f"config.{time.strftime('%Y%m%d-%H%M%S')}.json"), old)
  if jax.process_index() == 0:
    os.makedirs(path, exist_ok=True)
    _write_json(record, new)


def is_complete(path: str, config) -> bool:
  """True if path/run_complete.json records a finished run of exactly this config."""
  marker = os.path.join(path, COMPLETE)
  if not os.path.exists(marker):
    return False
  try:
    with open(marker) as f:
      return json.load(f).get("config") == flat(config)
  except ValueError:
    return False


def mark_complete(path: str, config):
  if jax.process_index() == 0:
    _write_json(os.path.join(path, COMPLETE), {"config": flat(config), "time": time.time()})


@contextlib.contextmanager
def lock(path: str):
  """Holds an exclusive lock on `path` for the block (process 0 only); raises WorkdirLocked
  naming the holder when another live run has it."""
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(path, exist_ok=True)
  f = open(os.path.join(path, LOCK), "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or "an unknown process"
    f.close()
    raise WorkdirLocked(f"{path} is in use by {holder}. Wait for that run to finish (or stop "
                        "it), or use another --workdir.") from None
  f.seek(0)
  stale = f.read().strip()
  if stale:
    log.info("Taking over the workdir lock of a run that is gone (%s).", stale)
  f.seek(0)
  f.truncate()
  f.write(f"pid {os.getpid()} on host {socket.gethostname()} since "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
  f.flush()
  try:
    yield
  finally:
    f.seek(0)
    f.truncate()
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()
