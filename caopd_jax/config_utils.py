"""Config-file arguments and sweeps, in the big_vision manner.

A config file `configs/NAME.py` defines `get_config(arg=None)`; `arg` is the string after the
colon in `--config=configs/NAME.py:ARG`, e.g. `objective=full_reverse,lr=1e-3,fast`:

    def get_config(arg=None):
      a = config_utils.parse_arg(arg, objective="full_forward", lr=3e-4, fast=False)
      ...

A file may also define a sweep, `get_sweep(add, arg=None)`, calling `add(**job)` once per job;
each keyword is a config argument (merged into ARG) or, when it starts with "config.", a
command-line override (`--config.opd.steps=10`):

    def get_sweep(add, arg=None):
      for objective in ("full_forward", "full_reverse"):
        for lr in (3e-4, 1e-3):
          add(objective=objective, lr=lr)

experiments/sweep.py runs (or prints) one `python run.py` per job; experiments/gather.py
collects their results into one table.
"""

import inspect
import re

import ml_collections

_TRUE = ("1", "true", "yes", "on", "t", "y")
_FALSE = ("0", "false", "no", "off", "f", "n", "")


def _auto(value: str):
  """int, then float, then bool words, else the string itself."""
  for cast in (int, float):
    try:
      return cast(value)
    except ValueError:
      pass
  if value.lower() in ("true", "false"):
    return value.lower() == "true"
  return value


def as_bool(key: str, value) -> bool:
  """A strict boolean: True/False, 0/1, or one of the words true/false, yes/no, on/off, t/f, y/n."""
  if isinstance(value, bool):
    return value
  if isinstance(value, int) and value in (0, 1):
    return bool(value)
  v = str(value).lower()
  if v in _TRUE:
    return True
  if v in _FALSE and v:
    return False
  raise ValueError(f"Config argument {key}={value!r}: expected a boolean (true/false, 1/0).")


def check_choice(key: str, value, choices):
  """Raises ValueError naming the valid choices unless value is one of them."""
  if value not in choices:
    raise ValueError(f"Config argument {key}={value!r}: valid values are {sorted(choices)}.")
  return value


def _convert(key: str, value: str, default):
  if isinstance(default, bool):
    return as_bool(key, value)
  if isinstance(default, int):
    try:
      return int(value)
    except ValueError:
      f = float(value)
      if f != int(f):
        raise ValueError(f"Config argument {key}={value!r}: expected an integer.") from None
      return int(f)
  if isinstance(default, float):
    return float(value)
  if default is None:
    return _auto(value)
  return value


def split_arg(arg: str | None) -> list[tuple[str, str | None]]:
  """'a=1,b,c=x' -> [('a', '1'), ('b', None), ('c', 'x')] (a bare key has value None)."""
  out = []
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, eq, value = item.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      raise ValueError(f"Bad config argument {item!r} in {arg!r} (expected key=value).")
    out.append((key, value.strip() if eq else None))
  return out


def parse_arg(arg: str | None, *, lazy: bool = False, **spec) -> ml_collections.ConfigDict:
  """Parses a config argument string against the defaults in `spec`.

  `key=value` pairs are separated by commas; a bare `key` means True. Values take the type of
  their default (bool, int, float, str; a None default auto-detects int / float / bool / str).
  Unknown keys raise ValueError listing the valid ones, unless `lazy`, which keeps them
  (auto-typed). Repeated keys: the last one wins (so arguments can be appended to override).
  Returns an unlocked ConfigDict with every key of `spec`.
  """
  out = dict(spec)
  for key, value in split_arg(arg):
    if key not in spec and not lazy:
      raise ValueError(f"Unknown config argument {key!r} in {arg!r}; valid: {sorted(spec)}.")
    default = spec.get(key)
    if value is None:
      if key in spec and not isinstance(default, bool) and default is not None:
        raise ValueError(f"Config argument {key!r} needs a value ({key}=...).")
      out[key] = True
    else:
      out[key] = _convert(key, value, default)
  return ml_collections.ConfigDict(out, type_safe=False)


def format_arg(values: dict) -> str:
  """The inverse of parse_arg for simple values: {'a': 1, 'b': 'x'} -> 'a=1,b=x'."""
  parts = []
  for k, v in values.items():
    s = repr(v) if isinstance(v, float) else str(v)
    if "," in s or "=" in s:
      raise ValueError(f"Config argument {k}={s!r} may not contain ',' or '='.")
    parts.append(f"{k}={s}")
  return ",".join(parts)


def merge_args(*args: str | None) -> str:
  """Concatenates argument strings; for a key given twice the later value wins."""
  merged = {}
  for arg in args:
    for key, value in split_arg(arg):
      merged.pop(key, None)
      merged[key] = value
  return ",".join(k if v is None else f"{k}={v}" for k, v in merged.items())


def job_name(arg_values: dict, overrides: dict) -> str:
  """A short, filesystem-safe name for a sweep job: 'objective-full_reverse.lr-0.001'."""
  parts = [f"{k}-{v}" for k, v in arg_values.items()]
  parts += [f"{k.removeprefix('config.').split('.')[-1]}-{v}" for k, v in overrides.items()]
  name = ".".join(parts) or "default"
  return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def sweep_jobs(module, arg: str | None = None) -> list[dict]:
  """The jobs of a config module's sweep: [{name, arg, overrides}] (arg merged with `arg`).

  The module defines `get_sweep(add[, arg])`, or a list `sweep` of keyword dicts.
  """
  raw = []
  if hasattr(module, "get_sweep"):
    fn = module.get_sweep
    if len(inspect.signature(fn).parameters) >= 2:
      fn(lambda **kw: raw.append(kw), arg)
    else:
      fn(lambda **kw: raw.append(kw))
  elif hasattr(module, "sweep"):
    raw = [dict(kw) for kw in module.sweep]
  else:
    raise ValueError(f"{module.__name__} defines no sweep (get_sweep(add, arg) or `sweep`).")
  jobs, names = [], set()
  for kw in raw:
    name = kw.pop("name", None)
    overrides = {k: v for k, v in kw.items() if k.startswith("config.")}
    values = {k: v for k, v in kw.items() if not k.startswith("config.")}
    name = name or job_name(values, overrides)
    if name in names:
      raise ValueError(f"Two sweep jobs are both named {name!r}; pass name=... to add().")
    names.add(name)
    jobs.append(dict(name=name, arg=merge_args(arg, format_arg(values)), values=values,
                     overrides=overrides))
  return jobs
