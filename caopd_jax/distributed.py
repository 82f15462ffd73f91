"""Multi-process JAX: `jax.distributed.initialize` from the environment, plus small helpers.

`initialize()` must run before anything touches a JAX backend (run.py calls it first thing).
Where the settings come from, first match wins:

  1. explicit  CAOPD_COORDINATOR_ADDRESS=host:port CAOPD_NUM_PROCESSES=N CAOPD_PROCESS_ID=i
               [CAOPD_LOCAL_DEVICE_IDS=0,1,...] (or the same keyword arguments); e.g. the
               loopback test, or any launcher that knows the ranks.
  2. SLURM     inside `srun` with SLURM_NTASKS > 1: JAX's SLURM detection (coordinator = first
               node of the step, port derived from the job id, one process per task; with one
               task per GPU it pins each process to its GPU via SLURM_LOCALID).
  3. Cloud TPU on a TPU VM (PCI vendor 0x1ae0 present and libtpu installed): JAX's GCE/GKE TPU
               detection (workers from the metadata server / TPU_WORKER_HOSTNAMES); a
               single-host TPU VM becomes a 1-process cluster, which is harmless.
  4. otherwise one process; nothing is initialized.

CAOPD_DISTRIBUTED=0 turns all of this off; CAOPD_DISTRIBUTED=1 calls
jax.distributed.initialize() with JAX's own auto-detection (Open MPI, Kubernetes, ...).

After initialization every process sees all devices (`jax.devices()`) and its own
(`jax.local_devices()`); the train loop builds global arrays from each process's rows of the
batch (caopd_jax.sharding.shard_batch); loaders take `process_index()` / `process_count()`;
only process 0 writes logs (MetricWriter), exported models and results.
"""

import glob
import logging
import os

import jax

log = logging.getLogger(__name__)

ENV_PREFIX = "CAOPD_"
_GOOGLE_PCI_VENDOR = "0x1ae0"


def _env(name, default=None):
  return os.environ.get(ENV_PREFIX + name, default)


def _tpu_vm() -> bool:
  """A Cloud TPU VM: Google TPU chips on the PCI bus and libtpu importable."""
  chips = 0
  for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(path) as f:
        chips += f.read().strip() == _GOOGLE_PCI_VENDOR
    except OSError:
      pass
  if not chips:
    return False
  try:
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _slurm_tasks() -> int:
  if "SLURM_JOB_ID" not in os.environ or "SLURM_STEP_NODELIST" not in os.environ:
    return 0  # not inside `srun`
  return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))


def detect() -> str:
  """Which of 'explicit', 'slurm', 'tpu', 'auto', 'off', 'single' initialize() would use."""
  mode = _env("DISTRIBUTED", "")
  if mode.lower() in ("0", "false", "off", "no"):
    return "off"
  if _env("COORDINATOR_ADDRESS"):
    return "explicit"
  if mode.lower() in ("1", "true", "on", "yes", "auto"):
    return "auto"
  if _slurm_tasks() > 1:
    return "slurm"
  if _tpu_vm():
    return "tpu"
  return "single"


_initialized = False


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids=None,
               initialization_timeout: int = 300) -> bool:
  """Starts the JAX distributed runtime if the environment (or the arguments) ask for it.

  Returns True if this is a multi-process run. Idempotent; call before any JAX computation.
  """
  global _initialized
  if _initialized:
    return jax.process_count() > 1
  if coordinator_address is None:
    mode = detect()
  else:
    mode = "explicit"
  if mode in ("off", "single"):
    return False
  kwargs = dict(initialization_timeout=initialization_timeout)
  if mode == "explicit":
    coordinator_address = coordinator_address or _env("COORDINATOR_ADDRESS")
    num_processes = num_processes if num_processes is not None else int(_env("NUM_PROCESSES"))
    process_id = process_id if process_id is not None else int(_env("PROCESS_ID"))
    if local_device_ids is None and _env("LOCAL_DEVICE_IDS"):
      local_device_ids = [int(i) for i in _env("LOCAL_DEVICE_IDS").split(",")]
    kwargs.update(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
    if local_device_ids is not None:
      kwargs["local_device_ids"] = local_device_ids
  log.info("jax.distributed.initialize (%s) %s", mode,
           {k: v for k, v in kwargs.items() if k != "initialization_timeout"})
  jax.distributed.initialize(**kwargs)
  _initialized = True
  log.info("process %d of %d; %d local / %d global devices (%s)", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count(),
           jax.devices()[0].platform)
  return jax.process_count() > 1


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def is_main() -> bool:
  """Process 0: the one that writes logs, exported models and results."""
  return jax.process_index() == 0


def barrier(name: str):
  """Blocks until every process reaches `name` (no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def process_slice(global_batch_size: int) -> slice:
  """This process's rows of a global batch (caopd_jax.data.BatchIterator's layout)."""
  n, p = jax.process_count(), jax.process_index()
  if global_batch_size % n:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {n} processes.")
  b = global_batch_size // n
  return slice(p * b, (p + 1) * b)


def shutdown():
  global _initialized
  if _initialized:
    jax.distributed.shutdown()
    _initialized = False
