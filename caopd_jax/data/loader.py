"""Dataset registry, random-access sources and the deterministic, resumable batch iterator.

    src = get_source("arithmetic", "train", data_dir, op="add")       # prepares once, cached
    it = BatchIterator(src, global_batch_size=32, seed=0,
                       process_index=jax.process_index(), process_count=jax.process_count(),
                       start_step=restored_step)
    for batch in it:            # list of this host's records (Python dicts), G / P of them
      ...; checkpoint it.step   # the step index is the whole data position

Everything is read through tfds array_record data sources (`builder.as_data_source`); no
TensorFlow is imported. Multi-host: let process 0 call `prepare(...)` on a shared data_dir
(or prepare before launching) and the other hosts call `get_source` after a barrier; tfds
writes into a temporary folder and renames it, so readers never see half-written data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from caopd_jax.data import arithmetic, math, science, tooluse
from caopd_jax.data.manual_hf import ManualHFBuilder

log = logging.getLogger(__name__)

FILE_FORMAT = "array_record"
DATA_ENV = "CAOPD_DATA_DIR"  # default manual_dir root for science / tooluse (holds *_data/)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  builder_cls: type
  options: tuple[str, ...]  # keyword options accepted by get_source / prepare
  doc: str


DATASETS: dict[str, DatasetSpec] = {
    "arithmetic": DatasetSpec(arithmetic.CaopdArithmetic, ("op", *arithmetic.DEFAULTS),
                              "embedded arithmetic task; splits train, test, ood"),
    "science": DatasetSpec(science.CaopdScience, ("manual_dir",),
                           "science MCQ from manual_dir; splits eval[, train]"),
    "tooluse": DatasetSpec(tooluse.CaopdTooluse, ("manual_dir",),
                           "tool use from manual_dir; splits eval[, train]"),
    "math": DatasetSpec(math.CaopdMath, ("manual_dir",),
                        "GSM8K / MATH-style problems from manual_dir; splits train, test, eval"),
}


def _spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; valid names: {sorted(DATASETS)}.")
  return DATASETS[name]


def data_dir_for(workdir: str | os.PathLike) -> str:
  """The conventional data_dir under an experiment workdir."""
  return os.path.join(os.fspath(workdir), "tfds")


def _read_metadata(builder) -> dict:
  path = os.path.join(os.fspath(builder.data_dir), "metadata.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def get_builder(name: str, data_dir: str | os.PathLike, **kw) -> tfds.core.DatasetBuilder:
  """The (possibly unprepared) builder for `name` with options `kw` writing under data_dir."""
  spec = _spec(name)
  options = [o for o in spec.options if o != "manual_dir"]  # manual_dir goes to `prepare`
  unknown = set(kw) - set(options)
  if unknown:
    raise ValueError(f"Unknown option(s) {sorted(unknown)} for get_builder({name!r}); "
                     f"valid: {options}.")
  if data_dir is None:
    raise ValueError("data_dir is required (e.g. data_dir_for(workdir)); nothing is written "
                     "to ~/tensorflow_datasets implicitly.")
  data_dir = os.fspath(data_dir)
  if name == "arithmetic":
    cfg = arithmetic.make_config(kw.pop("op", "add"), **kw)
    predefined = {c.name for c in arithmetic.CaopdArithmetic.BUILDER_CONFIGS}
    return spec.builder_cls(data_dir=data_dir,
                            config=cfg.name if cfg.name in predefined else cfg,
                            file_format=FILE_FORMAT)
  return spec.builder_cls(data_dir=data_dir, file_format=FILE_FORMAT)


def prepare(name: str, data_dir: str | os.PathLike, **kw) -> tfds.core.DatasetBuilder:
  """Builds the dataset on disk if needed (no-op when already prepared) and returns the builder.

  science / tooluse: `manual_dir` (default $CAOPD_DATA_DIR) is the source; when given, its
  fingerprint is compared with the prepared copy's and a changed source is re-prepared. Without
  manual_dir an already-prepared copy is used as is.
  """
  spec = _spec(name)
  unknown = set(kw) - set(spec.options)
  if unknown:
    raise ValueError(f"Unknown option(s) {sorted(unknown)} for dataset {name!r}; "
                     f"valid: {list(spec.options)}.")
  manual_dir = kw.pop("manual_dir", None)
  builder = get_builder(name, data_dir, **kw)
  if isinstance(builder, ManualHFBuilder):
    manual_dir = manual_dir or os.environ.get(DATA_ENV) or None
    if manual_dir is None:
      if builder.is_prepared():
        return builder
      raise FileNotFoundError(
          f"Dataset {name!r} is not prepared under {data_dir} and no manual_dir was given. "
          f"{builder.manual_instructions()}")
    root = builder.resolve_manual_dir(manual_dir)
    fp = builder.source_fingerprint(root)
    if builder.is_prepared():
      old = _read_metadata(builder).get("source_fingerprint")
      if old == fp:
        return builder
      log.warning("%s: source %s changed (fingerprint %s -> %s); re-preparing.", name, root,
                  old, fp)
      _replace_prepared(name, data_dir, root, kw, os.fspath(builder.data_dir))
      return get_builder(name, data_dir, **kw)
    builder.download_and_prepare(
        file_format=FILE_FORMAT, download_config=tfds.download.DownloadConfig(manual_dir=root))
    # Re-open so that `info` (splits, metadata) is read back from disk.
    return get_builder(name, data_dir, **kw)
  if not builder.is_prepared():
    try:
      builder.download_and_prepare(file_format=FILE_FORMAT)
    except FileExistsError:  # another process (a parallel sweep) finished the same build first
      if not get_builder(name, data_dir, **kw).is_prepared():
        raise
      log.info("%s: prepared concurrently by another process; using that copy.", name)
    builder = get_builder(name, data_dir, **kw)
  return builder


def _replace_prepared(name, data_dir, manual_dir, kw, prepared: str):
  """Prepares into a temporary data_dir and swaps the result in only once it succeeded, so a
  bad new source (e.g. a corrupt manual_dir) leaves the prepared copy as it was."""
  tmp_root = f"{os.fspath(data_dir)}.tmp-{os.getpid()}"
  shutil.rmtree(tmp_root, ignore_errors=True)
  try:
    fresh = get_builder(name, tmp_root, **kw)
    fresh.download_and_prepare(file_format=FILE_FORMAT,
                               download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    trash = f"{prepared}.stale-{os.getpid()}"
    os.replace(prepared, trash)
    os.replace(os.fspath(fresh.data_dir), prepared)
    shutil.rmtree(trash, ignore_errors=True)
  finally:
    shutil.rmtree(tmp_root, ignore_errors=True)


def get_source(name: str, split: str, data_dir: str | os.PathLike, *, decode_json: bool = True,
               **kw) -> "Source":
  """Random-access source of Python records for `split` of dataset `name` (prepared if needed).

  name: 'arithmetic' (kw: op='add'|'sub'|'mul1', max_digits=3, ood_digits=2, seed=0,
  num_train=20000, num_test=1000, num_ood=500), 'science' or 'tooluse' (kw: manual_dir).
  """
  builder = prepare(name, data_dir, **kw)
  splits = sorted(builder.info.splits.keys())
  if split not in splits:
    raise ValueError(f"Dataset {name!r} has no split {split!r}; available: {splits}.")
  json_features = tuple(getattr(builder, "JSON_FEATURES", ())) if decode_json else ()
  return Source(builder.as_data_source(split), name=name, split=split,
                config=builder.builder_config.name if builder.builder_config else "default",
                version=str(builder.version), json_features=json_features,
                location=os.path.abspath(builder.data_dir))


_RECORDS: OrderedDict[tuple, tuple] = OrderedDict()
_RECORDS_KEPT = 2


def records(source) -> list[dict]:
  """Every record of `source` as a list, in storage order. The stages of one process (base, OPD,
  CaOPD in the default job) read the same training split: the decoded records of the last
  `_RECORDS_KEPT` prepared splits are kept (tfds decoding is ~0.15 ms a record: 31 s for the
  default job's 200,000 questions), and each caller gets its own list of fresh dicts."""
  key = (source.location, source.identity, source.json_features) if getattr(
      source, "location", "") else None
  if key is None:
    return list(source)
  if key not in _RECORDS:
    _RECORDS[key] = tuple(source)
    while len(_RECORDS) > _RECORDS_KEPT:
      _RECORDS.popitem(last=False)
  _RECORDS.move_to_end(key)
  return [dict(r) for r in _RECORDS[key]]


class Source:
  """Random access to Python records of one split: str for text, int for ints, JSON decoded.

  Wraps a tfds `ArrayRecordDataSource`: `len(src)`, `src[i]`, `src.__getitems__(indices)`,
  iteration in storage order (for our builders storage order == `id` order).
  """

  def __init__(self, data_source, *, name: str, split: str, config: str = "", version: str = "",
               json_features: Sequence[str] = (), location: str = ""):
    self.data_source = data_source
    self.location = location  # the prepared files' directory (keys `records`' cache)
    self.name, self.split, self.config, self.version = name, split, config, version
    self.json_features = tuple(json_features)

  @property
  def identity(self) -> str:
    """Identifies the data behind the indices; stored with an iterator state."""
    return f"{self.name}/{self.config}@{self.version}:{self.split}[{len(self)}]"

  def __len__(self) -> int:
    return len(self.data_source)

  def _decode(self, rec: dict) -> dict:
    out = {}
    for k, v in rec.items():
      if isinstance(v, bytes):
        v = v.decode("utf-8")
      elif isinstance(v, np.integer):
        v = int(v)
      elif isinstance(v, np.floating):
        v = float(v)
      elif isinstance(v, np.ndarray):
        v = v.tolist()
      if k in self.json_features:
        v = json.loads(v)
      out[k] = v
    return out

  def __getitem__(self, i: int) -> dict:
    n = len(self)
    i = int(i)
    if not -n <= i < n:
      raise IndexError(f"index {i} out of range for {self.identity}")
    return self._decode(self.data_source[i % n])

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    idx = [int(i) for i in indices]
    if not idx:
      return []
    return [self._decode(r) for r in self.data_source.__getitems__(idx)]

  def __iter__(self) -> Iterator[dict]:
    for start in range(0, len(self), 256):
      yield from self.__getitems__(range(start, min(start + 256, len(self))))

  def __repr__(self) -> str:
    return f"Source({self.identity})"


class BatchIterator:
  """Deterministic, resumable, host-sharded batches over a random-access source.

  Position semantics. The global stream is the concatenation over epochs e = 0, 1, ... of
  perm_e, a permutation of range(N) drawn from (seed, e) (identity when shuffle=False). Global
  batch i is stream positions [i*G, (i+1)*G) (a batch may straddle two epochs). Process p of P
  reads only positions [i*G + p*G/P, i*G + (p+1)*G/P). Batch i is therefore a pure function
  of (seed, i) given N, G, P, p: the data position to checkpoint is just `step` (the index of
  the next batch); `BatchIterator(..., start_step=step)` resumes exactly, and resuming with a
  different process_count is also exact as long as G is unchanged.

  num_epochs=None streams forever; otherwise there are floor(E*N/G) batches
  (drop_remainder=True) or ceil(E*N/G) with a short last batch (drop_remainder=False; each
  process then gets the part of its slice that exists, possibly empty).
  Each batch is a list of records (`source.__getitems__`), or whatever `transform` returns.
  """

  def __init__(self, source, global_batch_size: int, *, seed: int = 0, shuffle: bool = True,
               num_epochs: int | None = None, drop_remainder: bool = True,
               process_index: int = 0, process_count: int = 1, start_step: int = 0,
               transform: Callable[[list[dict]], Any] | None = None):
    n = len(source)
    if n <= 0:
      raise ValueError(f"source {source!r} is empty.")
    if global_batch_size <= 0 or process_count <= 0:
      raise ValueError(f"need global_batch_size > 0 and process_count > 0, got "
                       f"{global_batch_size}, {process_count}.")
    if global_batch_size % process_count:
      raise ValueError(f"global_batch_size={global_batch_size} must be divisible by "
                       f"process_count={process_count}.")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
    if num_epochs is not None and num_epochs <= 0:
      raise ValueError(f"num_epochs must be None or > 0, got {num_epochs}.")
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}.")
    self.source = source
    self.num_records = n
    self.global_batch_size = global_batch_size
    self.per_process_batch_size = global_batch_size // process_count
    self.seed, self.shuffle = int(seed), shuffle
    self.num_epochs, self.drop_remainder = num_epochs, drop_remainder
    self.process_index, self.process_count = process_index, process_count
    self.transform = transform
    if num_epochs is None:
      self.num_steps = None
      self._total = None
    else:
      self._total = num_epochs * n
      q, r = divmod(self._total, global_batch_size)
      self.num_steps = q if drop_remainder or not r else q + 1
    if self.num_steps is not None and start_step > self.num_steps:
      raise ValueError(f"start_step={start_step} is past the end ({self.num_steps} steps).")
    self.step = int(start_step)
    self._perms: OrderedDict[int, np.ndarray] = OrderedDict()

  # -------------------------------------------------------------- pure functions of the step

  def permutation(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(self.num_records)
    if epoch not in self._perms:
      rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
      self._perms[epoch] = rng.permutation(self.num_records)
      while len(self._perms) > 2:
        self._perms.popitem(last=False)
    return self._perms[epoch]

  def _positions_to_indices(self, lo: int, hi: int) -> np.ndarray:
    if self._total is not None:
      hi = min(hi, self._total)
    if hi <= lo:
      return np.zeros((0,), np.int64)
    pos = np.arange(lo, hi, dtype=np.int64)
    epochs, offs = np.divmod(pos, self.num_records)
    out = np.empty_like(pos)
    for e in np.unique(epochs).tolist():
      m = epochs == e
      out[m] = self.permutation(e)[offs[m]]
    return out

  def _check_step(self, step: int) -> None:
    if step < 0 or (self.num_steps is not None and step >= self.num_steps):
      raise IndexError(f"step {step} out of range (num_steps={self.num_steps}).")

  def global_indices(self, step: int) -> np.ndarray:
    """Record indices of the whole global batch `step` (all processes, in process order)."""
    self._check_step(step)
    g = self.global_batch_size
    return self._positions_to_indices(step * g, (step + 1) * g)

  def indices(self, step: int) -> np.ndarray:
    """Record indices this process reads for global batch `step`."""
    self._check_step(step)
    lo = step * self.global_batch_size + self.process_index * self.per_process_batch_size
    return self._positions_to_indices(lo, lo + self.per_process_batch_size)

  def batch(self, step: int):
    """This process's records of global batch `step` (reads only its slice)."""
    recs = get_items(self.source, self.indices(step).tolist())
    return self.transform(recs) if self.transform else recs

  # -------------------------------------------------------------- iteration / checkpointing

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self):
    if self.num_steps is not None and self.step >= self.num_steps:
      raise StopIteration
    out = self.batch(self.step)
    self.step += 1
    return out

  def __len__(self) -> int:
    if self.num_steps is None:
      raise TypeError("infinite BatchIterator (num_epochs=None) has no len().")
    return self.num_steps

  def epoch_of(self, step: int) -> int:
    """Epoch of the first element of global batch `step`."""
    return (step * self.global_batch_size) // self.num_records

  def get_state(self) -> dict:
    """JSON-able position: `step` is all that is needed; the rest guards against misuse."""
    ident = getattr(self.source, "identity", None)
    return {"step": self.step, "seed": self.seed, "global_batch_size": self.global_batch_size,
            "num_records": self.num_records, "shuffle": self.shuffle,
            "source": ident if ident is not None else repr(self.source)}

  def set_state(self, state: dict) -> None:
    """Restores `step` after checking the state was written by an equivalent iterator."""
    mine = self.get_state()
    for k in ("seed", "global_batch_size", "num_records", "shuffle"):
      if k in state and state[k] != mine[k]:
        raise ValueError(f"iterator state mismatch on {k!r}: checkpoint has {state[k]!r}, this "
                         f"iterator has {mine[k]!r}; batches would differ.")
    step = int(state["step"])
    if step < 0 or (self.num_steps is not None and step > self.num_steps):
      raise ValueError(f"state step {step} out of range (num_steps={self.num_steps}).")
    self.step = step


class head:  # pylint: disable=invalid-name
  """The first `n` records of a random-access source (same interface; smoke runs)."""

  def __init__(self, source, n: int):
    self.source, self.n = source, min(int(n), len(source))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return self.source[range(self.n)[i]]

  def __getitems__(self, indices):
    return get_items(self.source, [range(self.n)[i] for i in indices])

  def __iter__(self):
    return iter(get_items(self.source, list(range(self.n))))


def get_items(source, indices) -> list:
  """source.__getitems__(indices), or one item at a time (e.g. a plain list of records)."""
  if hasattr(source, "__getitems__"):
    return source.__getitems__(indices)
  return [source[int(i)] for i in indices]


def as_columns(records: Sequence[dict]) -> dict[str, list]:
  """[{k: v}, ...] -> {k: [v, ...]} (keys of the first record)."""
  if not records:
    return {}
  return {k: [r[k] for r in records] for k in records[0]}
