"""Embedded arithmetic task as a tfds builder (array_record, no TensorFlow needed).

Difficulty d = number of digits (graded min_digits..max_digits for train/test; max_digits+1 ..
max_digits+ood_digits for `ood`). Level 1 of `add` has only 100 questions (single-digit facts
that cannot be learned for unseen pairs), so experiments that test generalisation start at
min_digits=2. Operations (`op`):

  add   "a+b"  a, b in [0, 10^d) and max(a, b) has exactly d digits (d = 1: 0..9)
  sub   "a-b"  a has exactly d digits, 0 <= b <= a            (answer never negative)
  mul1  "a*b"  a has exactly d digits, b a single digit 0..9  (multiplication by one digit)

`add` then `sub` (or `mul1`) is the continual-learning pair (task A then task B).
Questions are valid Python expressions, so `str(eval(question)) == answer`.

Splits (all generated from `seed`, byte-identical across runs and machines):
  test   `num_test` distinct questions, split evenly over difficulties 1..max_digits; a level
         holds at most half of its distinct questions (level 1 of `add` has only 100), the
         rest of its quota moves to the harder levels.
  train  `num_train` i.i.d. draws, difficulty split evenly over 1..max_digits, rejecting every
         question that is in `test` (so train and test are disjoint; train may repeat a
         question, which happens only on the tiny low levels).
  ood    `num_ood` distinct questions at difficulties max_digits+1 .. max_digits+ood_digits.

A split whose count is 0 is not written (tfds cannot store an empty split).

Records: {id: int64 (= index in the split), question: str, answer: str, difficulty: int32,
op: str}. Records are stored in id order (`disable_shuffling`), so `source[i]["id"] == i`.
Bump `VERSION` whenever the generation rule changes (prepared data is cached by config name).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

OPS = ("add", "sub", "mul1")
_OP_ID = {"add": 0, "sub": 1, "mul1": 2}
_SYMBOL = {"add": "+", "sub": "-", "mul1": "*"}
_SPLIT_ID = {"test": 0, "train": 1, "ood": 2}
MAX_TOTAL_DIGITS = 17  # operands and results stay within int64


@dataclasses.dataclass(eq=False)
class ArithmeticConfig(tfds.core.BuilderConfig):
  """Every field changes the generated data, so every field is encoded in the config name."""

  op: str = "add"
  min_digits: int = 1
  max_digits: int = 3
  ood_digits: int = 2
  seed: int = 0
  num_train: int = 20000
  num_test: int = 1000
  num_ood: int = 500


DEFAULTS = dict(min_digits=1, max_digits=3, ood_digits=2, seed=0, num_train=20000, num_test=1000, num_ood=500)


def make_config(op: str = "add", **kw) -> ArithmeticConfig:
  """Config for `op` with overrides of DEFAULTS. Name is `op` at defaults, else encodes all."""
  unknown = set(kw) - set(DEFAULTS)
  if unknown:
    raise ValueError(f"Unknown arithmetic option(s) {sorted(unknown)}; valid: {sorted(DEFAULTS)}.")
  if op not in OPS:
    raise ValueError(f"Unknown arithmetic op {op!r}; valid: {list(OPS)}.")
  p = {**DEFAULTS, **kw}
  for k, v in p.items():
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
      raise ValueError(f"arithmetic option {k}={v!r} must be an int.")
  if not 1 <= p["min_digits"] <= p["max_digits"] or p["ood_digits"] < 0:
    raise ValueError(f"need 1 <= min_digits <= max_digits and ood_digits >= 0, got {p}.")
  if p["max_digits"] + p["ood_digits"] > MAX_TOTAL_DIGITS:
    raise ValueError(f"max_digits + ood_digits must be <= {MAX_TOTAL_DIGITS}, got {p}.")
  if min(p["num_train"], p["num_test"], p["num_ood"]) < 0 or p["seed"] < 0:
    raise ValueError(f"counts and seed must be >= 0, got {p}.")
  if p["num_ood"] > 0 and p["ood_digits"] == 0:
    raise ValueError("num_ood > 0 needs ood_digits >= 1.")
  if p == DEFAULTS:
    name = op
  else:
    name = (f"{op}_d{p['max_digits']}_o{p['ood_digits']}_s{p['seed']}"
            f"_n{p['num_train']}_{p['num_test']}_{p['num_ood']}")
    if p["min_digits"] != 1:  # names of configs without min_digits stay as they were
      name += f"_m{p['min_digits']}"
  return ArithmeticConfig(name=name, op=op, description=f"{op} with {p}", **{
      k: int(v) for k, v in p.items()})


# ------------------------------------------------------------------------ pure generation


def _bounds(d: int) -> tuple[int, int]:
  return (10 ** (d - 1) if d > 1 else 0), 10 ** d


def level_capacity(op: str, d: int) -> int:
  """Number of distinct questions of difficulty d."""
  lo, hi = _bounds(d)
  if op == "add":
    return hi * hi - lo * lo
  if op == "sub":  # sum_{a=lo}^{hi-1} (a + 1)
    return (hi * (hi + 1) - lo * (lo + 1)) // 2
  if op == "mul1":
    return (hi - lo) * 10
  raise ValueError(f"Unknown arithmetic op {op!r}; valid: {list(OPS)}.")


def _draw(op: str, d: int, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
  """n i.i.d. uniform draws (a, b) from level d of `op` (uniform over its question set)."""
  lo, hi = _bounds(d)
  out: list[tuple[int, int]] = []
  while len(out) < n:
    m = max(2 * (n - len(out)), 16)
    if op == "add":
      a = rng.integers(0, hi, size=m, dtype=np.int64)
      b = rng.integers(0, hi, size=m, dtype=np.int64)
      keep = np.maximum(a, b) >= lo
      a, b = a[keep], b[keep]
    elif op == "sub":
      # P(a) proportional to a + 1 makes (a, b) uniform over {0 <= b <= a}; sample a by
      # rejection from a uniform proposal with acceptance (a + 1) / hi.
      a = rng.integers(lo, hi, size=m, dtype=np.int64)
      u = rng.integers(0, hi, size=m, dtype=np.int64)
      a = a[u <= a]
      b = rng.integers(0, a + 1, dtype=np.int64) if a.size else a
    else:  # mul1
      a = rng.integers(lo, hi, size=m, dtype=np.int64)
      b = rng.integers(0, 10, size=m, dtype=np.int64)
    out.extend(zip(a.tolist(), b.tolist()))
  return out[:n]


def _rng(seed: int, op: str, split: str, d: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([seed, _OP_ID[op], _SPLIT_ID[split], d]))


def _distinct(op: str, d: int, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
  seen: dict[tuple[int, int], None] = {}
  while len(seen) < n:
    for q in _draw(op, d, n - len(seen), rng):
      seen.setdefault(q, None)
      if len(seen) == n:
        break
  return list(seen)


def _even_split(n: int, k: int) -> list[int]:
  return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _fmt(op: str, a: int, b: int, d: int) -> dict:
  ans = a + b if op == "add" else a - b if op == "sub" else a * b
  return {"question": f"{a}{_SYMBOL[op]}{b}", "answer": str(ans), "difficulty": d, "op": op}


def generate(op: str = "add", **kw) -> dict[str, list[dict]]:
  """Pure generator behind the builder: {'train'|'test'|'ood': [record, ...]} (ids assigned)."""
  c = make_config(op, **kw)
  levels = list(range(c.min_digits, c.max_digits + 1))
  # test: distinct, quota per level capped at half the level's capacity.
  test: list[tuple[int, int, int]] = []
  remaining = c.num_test
  for i, d in enumerate(levels):
    quota = min(remaining // (len(levels) - i), level_capacity(op, d) // 2)
    test += [(a, b, d) for a, b in _distinct(op, d, quota, _rng(c.seed, op, "test", d))]
    remaining -= quota
  if remaining:
    raise ValueError(f"num_test={c.num_test} exceeds half the distinct questions of {op} "
                     f"with max_digits={c.max_digits}; lower num_test.")
  test_set = {(a, b) for a, b, _ in test}
  train: list[tuple[int, int, int]] = []
  for d, n in zip(levels, _even_split(c.num_train, len(levels))):
    rng = _rng(c.seed, op, "train", d)
    got: list[tuple[int, int]] = []
    while len(got) < n:
      got += [q for q in _draw(op, d, n - len(got), rng) if q not in test_set]
    train += [(a, b, d) for a, b in got[:n]]
  ood_levels = list(range(c.max_digits + 1, c.max_digits + c.ood_digits + 1))
  ood: list[tuple[int, int, int]] = []
  if ood_levels:
    for d, n in zip(ood_levels, _even_split(c.num_ood, len(ood_levels))):
      ood += [(a, b, d) for a, b in _distinct(op, d, n, _rng(c.seed, op, "ood", d))]
  out = {}
  for split, rows in (("train", train), ("test", test), ("ood", ood)):
    # Interleave difficulties so that reading a split in order is not sorted by level.
    perm = _rng(c.seed, op, split, 0).permutation(len(rows))
    out[split] = [{"id": i, **_fmt(op, *rows[j])} for i, j in enumerate(perm.tolist())]
  return out


# ------------------------------------------------------------------------ tfds builder


class CaopdArithmetic(tfds.core.GeneratorBasedBuilder):
  """tfds name `caopd_arithmetic`; configs `add`, `sub`, `mul1` (+ any `make_config(...)`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [make_config(op) for op in OPS]
  DEFAULT_CONFIG_NAME = "add"
  # No-TF workaround: tfds' default `code_path` lazily imports `importlib_resources` (an etils
  # [epath] extra that may be missing) only to look for a checksums.tsv beside this module. We
  # download nothing, so there is no checksums file: say so directly.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Embedded arithmetic task for OPD/CaOPD experiments (caopd_jax).",
        features=tfds.features.FeaturesDict({
            "id": np.int64,
            "question": tfds.features.Text(),
            "answer": tfds.features.Text(),
            "difficulty": np.int32,
            "op": tfds.features.Text(),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            op=self.builder_config.op,
            **{k: getattr(self.builder_config, k) for k in DEFAULTS}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    data = generate(c.op, **{k: getattr(c, k) for k in DEFAULTS})
    # tfds cannot write an empty split: a split with count 0 is simply absent.
    return {split: self._generate_examples(rows) for split, rows in data.items() if rows}

  def _generate_examples(self, rows):
    for r in rows:
      yield r["id"], r
