"""Teacher contexts by name (`CONTEXTS`); a new one is a file here plus a line below."""

from caopd_jax.contexts.base import TeacherContext
from caopd_jax.contexts.correct_solution import CORRECT_SOLUTION
from caopd_jax.contexts.demo import DEMO
from caopd_jax.contexts.none import NONE

CONTEXTS: dict[str, TeacherContext] = {c.name: c for c in (DEMO, CORRECT_SOLUTION, NONE)}


def get(name: str) -> TeacherContext:
  if name not in CONTEXTS:
    raise ValueError(f"Unknown teacher context {name!r}; valid: {sorted(CONTEXTS)}.")
  return CONTEXTS[name]


__all__ = ["CONTEXTS", "TeacherContext", "get"]
