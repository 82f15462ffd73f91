"""Tasks by name (`TASKS`); a new task is a file here plus a line below (caopd_jax.tasks.base)."""

from caopd_jax.tasks.arithmetic import Arithmetic
from caopd_jax.tasks.base import Task
from caopd_jax.tasks.chat import ChatTask
from caopd_jax.tasks.math import Math
from caopd_jax.tasks.plain import PlainTask
from caopd_jax.tasks.science import Science
from caopd_jax.tasks.tooluse import Tooluse

TASKS: dict[str, type[Task]] = {"arithmetic": Arithmetic, "science": Science, "tooluse": Tooluse,
                                 "math": Math}


def get(cfg) -> Task:
  """The task named `cfg.name`, built from config.task `cfg`."""
  if cfg.name not in TASKS:
    raise ValueError(f"Unknown task {cfg.name!r}; valid: {sorted(TASKS)}.")
  return TASKS[cfg.name](cfg)


__all__ = ["TASKS", "Task", "PlainTask", "ChatTask", "get"]
