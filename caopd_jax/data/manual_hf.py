"""Base tfds builder for tasks shipped as HF `datasets` save_to_disk folders (manual_dir).

`manual_dir` is the task folder holding `eval_data/` and/or `train_data/` (each a save_to_disk
folder), e.g. `shared/data/caopd_eval/science_data`; the parent folder holding
`<task>_data/` (e.g. `shared/data/caopd_eval`) is accepted too. Split names are those of the
folders found: `eval_data` -> `eval`, `train_data` -> `train`.

Prepared data is stamped with a fingerprint of the source files (`info.metadata
["source_fingerprint"]`); `loader.get_source` regenerates when the source changed.
String features that hold JSON are listed in `JSON_FEATURES`; `loader.Source` decodes them.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from caopd_jax.data import hf_arrow
from caopd_jax.data.hf_arrow import DataFormatError

SPLIT_DIRS = {"eval": "eval_data", "train": "train_data"}


def manual_instructions(task_dir: str) -> str:
  return (
      f"Pass manual_dir=<folder> holding {SPLIT_DIRS['eval']}/ and/or {SPLIT_DIRS['train']}/ "
      f"(HF datasets save_to_disk folders), e.g. <shared>/data/caopd_eval/{task_dir}, or its "
      f"parent holding {task_dir}/; or set CAOPD_DATA_DIR=<parent> to make that the default. "
      "Do not copy the data into the repository."
  )


class ManualHFBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Subclasses set TASK_DIR, TEXT_FEATURES, JSON_FEATURES and implement `normalize`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  TASK_DIR = ""  # e.g. "science_data"; subclasses also set MANUAL_DOWNLOAD_INSTRUCTIONS
  TEXT_FEATURES: tuple[str, ...] = ()
  JSON_FEATURES: tuple[str, ...] = ()
  DESCRIPTION = ""
  # No-TF workaround: tfds' default `code_path` lazily imports `importlib_resources` (an etils
  # [epath] extra that may be missing) only to look for a checksums.tsv beside this module. We
  # download nothing, so there is no checksums file: say so directly.
  code_path = None

  @classmethod
  def manual_instructions(cls) -> str:
    return manual_instructions(cls.TASK_DIR)

  # ------------------------------------------------------------------ source discovery

  @classmethod
  def resolve_manual_dir(cls, manual_dir: str | os.PathLike) -> str:
    root = os.fspath(manual_dir)
    if not os.path.isdir(root):
      raise FileNotFoundError(f"{root}: manual_dir does not exist. {cls.manual_instructions()}")
    if any(os.path.isdir(os.path.join(root, d)) for d in SPLIT_DIRS.values()):
      return root
    nested = os.path.join(root, cls.TASK_DIR)
    if os.path.isdir(nested) and any(
        os.path.isdir(os.path.join(nested, d)) for d in SPLIT_DIRS.values()):
      return nested
    raise FileNotFoundError(
        f"{root}: no {' or '.join(d + '/' for d in SPLIT_DIRS.values())} folder here nor under "
        f"{nested}/ (found: {sorted(os.listdir(root))}). {cls.manual_instructions()}"
    )

  @classmethod
  def split_dirs(cls, manual_dir: str | os.PathLike) -> dict[str, str]:
    root = cls.resolve_manual_dir(manual_dir)
    return {s: os.path.join(root, d) for s, d in SPLIT_DIRS.items()
            if os.path.isdir(os.path.join(root, d))}

  @classmethod
  def source_fingerprint(cls, manual_dir: str | os.PathLike) -> str:
    paths = []
    for split, folder in sorted(cls.split_dirs(manual_dir).items()):
      paths += hf_arrow.data_files(folder)
    return hf_arrow.fingerprint(paths, {"builder": cls.name, "version": str(cls.VERSION)})

  @classmethod
  def read_split(cls, folder: str, split: str) -> list[dict[str, Any]]:
    """Reads and normalises one split folder; every error names the file."""
    table, paths = hf_arrow.read_save_to_disk(folder)
    where = paths[0] if len(paths) == 1 else f"{folder} ({len(paths)} shards)"
    return cls.normalize(table, split, where)

  @classmethod
  def normalize(cls, table, split: str, where: str) -> list[dict[str, Any]]:
    raise NotImplementedError

  # ------------------------------------------------------------------ tfds hooks

  def _info(self) -> tfds.core.DatasetInfo:
    feats = {"id": np.int64}
    feats.update({k: tfds.features.Text() for k in self.TEXT_FEATURES})
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(feats),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(json_features=list(self.JSON_FEATURES)),
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    dirs = self.split_dirs(root)
    # Read and validate everything eagerly so that errors surface before any writing.
    data = {split: self.read_split(folder, split) for split, folder in dirs.items()}
    self.info.metadata["source_fingerprint"] = self.source_fingerprint(root)
    self.info.metadata["source_dirs"] = dirs
    return {split: self._generate_examples(rows) for split, rows in data.items()}

  def _generate_examples(self, rows):
    for r in rows:
      yield r["id"], r


# ---------------------------------------------------------------------- value helpers


def as_messages(value: Any, where: str, row: int, column: str) -> list[dict[str, str]]:
  """A chat prompt: list of {role, content}, a JSON string of it, or a plain string (user)."""
  if isinstance(value, str):
    s = value.strip()
    if s.startswith("[") and s.endswith("]"):
      try:
        value = json.loads(s)
      except json.JSONDecodeError:
        return [{"role": "user", "content": value}]
    else:
      return [{"role": "user", "content": value}]
  if not isinstance(value, (list, tuple)) or not value:
    raise DataFormatError(
        f"{where} row {row}: column {column!r} must be a non-empty list of {{role, content}} "
        f"messages or a string, got {type(value).__name__}: {str(value)[:80]!r}.")
  out = []
  for m in value:
    if not (isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)):
      raise DataFormatError(
          f"{where} row {row}: column {column!r} has a message that is not "
          f"{{'role': str, 'content': str}}: {str(m)[:80]!r}.")
    out.append({"role": m["role"], "content": m["content"]})
  return out


def as_text(value: Any, where: str, row: int, column: str) -> str:
  """A string, or a list of strings joined with newlines (SDFT `golden_response`); None -> ''."""
  if value is None:
    return ""
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
    return "\n".join(value)
  raise DataFormatError(f"{where} row {row}: column {column!r} must be a string or a list of "
                        f"strings, got {type(value).__name__}: {str(value)[:80]!r}.")


def as_str_list(value: Any, where: str, row: int, column: str) -> list[str]:
  if value is None:
    return []
  if isinstance(value, str):
    return [value]
  if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
    return list(value)
  raise DataFormatError(f"{where} row {row}: column {column!r} must be a list of strings, got "
                        f"{type(value).__name__}: {str(value)[:80]!r}.")


_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S | re.I)


def answer_from_demo(demo: str) -> str:
  """The last <answer>X</answer> of a demonstration (stripped, upper-cased), or ''."""
  found = _ANSWER_TAG.findall(demo)
  return found[-1].strip().upper() if found else ""
