"""`arithmetic`: the embedded task (caopd_jax/data/arithmetic.py), generated from a seed.

Options: op (one of add, sub, mul1, or a comma-separated mixture such as "add,sub": the
continual-learning pair), the builder's digit ranges and counts, and two writing choices:
answer_order "lsb" writes answers least-significant digit first, the order in which small
transformers learn addition quickly (Lee et al. 2023, "Teaching arithmetic to small
transformers"); pad_operands zero-pads both operands to one width ("37+05"), so a digit's place
in the question depends only on the difficulty. Verified in the graph by exact match.
"""

import numpy as np

from caopd_jax import data
from caopd_jax.tasks.plain import PlainTask

BUILDER_OPTIONS = ("min_digits", "max_digits", "ood_digits", "seed", "num_train", "num_test",
                   "num_ood")


class Mixture:
  """Random-access concatenation of sources (a multi-op task)."""

  def __init__(self, sources):
    self.sources = list(sources)
    self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

  def __len__(self):
    return int(self.offsets[-1])

  def __getitem__(self, i):
    k = int(np.searchsorted(self.offsets, i, side="right")) - 1
    return self.sources[k][int(i - self.offsets[k])]

  def __getitems__(self, indices):
    return [self[i] for i in indices]

  def __iter__(self):
    for s in self.sources:
      yield from data.records(s)


class Arithmetic(PlainTask):
  name = "arithmetic"
  OPTIONS = ("op", *BUILDER_OPTIONS, "answer_order", "pad_operands")

  def __init__(self, cfg):
    super().__init__(cfg)
    if cfg.answer_order not in ("msb", "lsb"):
      raise ValueError(f"task.answer_order must be 'msb' or 'lsb', got {cfg.answer_order!r}.")
    self.ops = tuple(op.strip() for op in cfg.op.split(","))
    if not set(self.ops) <= {"add", "sub"}:
      self.LEVELS = ("difficulty",)  # carries are counted for add and sub only

  def sources(self, data_dir, splits):
    kw = {k: self.cfg[k] for k in BUILDER_OPTIONS}
    per_op = [{s: data.get_source("arithmetic", s, data_dir, op=op, **kw) for s in splits}
              for op in self.ops]
    if len(per_op) == 1:
      return per_op[0]
    return {s: Mixture([p[s] for p in per_op]) for s in splits}

  can_corrupt = True

  def corrupt(self, record, rng):
    """One digit of the answer replaced by a different digit (uniform over positions and the
    nine other digits); the length and sign are kept."""
    a = list(record["answer"])
    digits = [i for i, ch in enumerate(a) if ch.isdigit()]
    i = digits[int(rng.integers(len(digits)))]
    a[i] = str((int(a[i]) + int(rng.integers(1, 10))) % 10)
    return {**record, "answer": "".join(a)}

  LEVELS = ("difficulty", "carries")

  def level(self, record, by):
    """by="carries": the number of carries (add) or borrows (sub) of column arithmetic, the
    steps where small models err most (Lee et al. 2023)."""
    if by != "carries":
      return super().level(record, by)
    q = record["question"]
    op = next((c for c in "+-" if c in q[1:]), None)
    if op is None:
      raise ValueError(f"level 'carries' is defined for add and sub questions, got {q!r}.")
    a, b = (int(x) for x in q.split(op, 1) if x)
    count, carry = 0, 0
    while a or b:
      col = a % 10 + b % 10 + carry if op == "+" else a % 10 - b % 10 - carry
      carry = int(col >= 10 if op == "+" else col < 0)
      count += carry
      a, b = a // 10, b // 10
    return count

  def question(self, record):
    q = record["question"]
    if not self.cfg.pad_operands:
      return q
    ops = [c for c in q if not c.isdigit()]
    if len(ops) != 1:
      raise ValueError(f"pad_operands needs a binary question like '37+5', got {q!r}.")
    a, b = q.split(ops[0])
    width = max(len(a), len(b))
    return a.zfill(width) + ops[0] + b.zfill(width)

  def answer(self, record):
    a = record["answer"]
    return a[::-1] if self.cfg.answer_order == "lsb" else a
