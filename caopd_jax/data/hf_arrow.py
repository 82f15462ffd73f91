"""Read HF `datasets` save_to_disk folders with pyarrow only (no `datasets`, no TensorFlow).

A save_to_disk folder holds one or more `data-XXXXX-of-YYYYY.arrow` files in Arrow IPC *stream*
format, plus `dataset_info.json` and `state.json` (whose `_data_files` lists the shards in
order). Every problem is raised as `DataFormatError` / `FileNotFoundError` with a message that
names the file, says what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence

import pyarrow as pa

SAVE_TO_DISK_HINT = (
    "Expected a HF `datasets` save_to_disk folder: one or more data-*.arrow files (Arrow IPC "
    "stream) plus dataset_info.json and state.json. Re-create it with "
    "`datasets.Dataset.save_to_disk(path)` or point manual_dir at the right folder."
)


class DataFormatError(ValueError):
  """A data file exists but is malformed (not arrow, empty, missing columns, bad values)."""


def data_files(folder: str) -> list[str]:
  """Shard paths in order: from state.json `_data_files` when present, else data-*.arrow."""
  state_path = os.path.join(folder, "state.json")
  if os.path.exists(state_path):
    try:
      with open(state_path) as f:
        state = json.load(f)
      names = [d["filename"] for d in state.get("_data_files", [])]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
      raise DataFormatError(
          f"{state_path}: malformed state.json ({type(e).__name__}: {e}). It must be a JSON object "
          f"with `_data_files: [{{'filename': ...}}, ...]`. {SAVE_TO_DISK_HINT}"
      ) from e
    if names:
      paths = [os.path.join(folder, n) for n in names]
      for p in paths:
        if not os.path.exists(p):
          raise FileNotFoundError(
              f"{p}: listed in {state_path} (`_data_files`) but missing. {SAVE_TO_DISK_HINT}"
          )
      return paths
  names = sorted(n for n in os.listdir(folder) if n.startswith("data-") and n.endswith(".arrow"))
  if not names:
    raise FileNotFoundError(
        f"{folder}: no data-*.arrow files (found: {sorted(os.listdir(folder))}). {SAVE_TO_DISK_HINT}"
    )
  return [os.path.join(folder, n) for n in names]


def read_arrow_file(path: str) -> pa.Table:
  """One arrow file -> Table. Accepts the IPC stream format (HF) and, as a fallback, IPC file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file. {SAVE_TO_DISK_HINT}")
  if os.path.getsize(path) == 0:
    raise DataFormatError(f"{path}: file is empty (0 bytes). {SAVE_TO_DISK_HINT}")
  errors = []
  with open(path, "rb") as f:
    try:
      return pa.ipc.open_stream(f).read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
      errors.append(f"as IPC stream: {e}")
    f.seek(0)
    try:
      return pa.ipc.open_file(f).read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
      errors.append(f"as IPC file: {e}")
  raise DataFormatError(
      f"{path}: not an Arrow IPC stream ({'; '.join(errors)}). The file is corrupt or not an "
      f"arrow file. {SAVE_TO_DISK_HINT}"
  )


def read_save_to_disk(folder: str) -> tuple[pa.Table, list[str]]:
  """Reads all shards of a save_to_disk folder -> (table, shard paths). Rejects empty tables."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: folder does not exist. {SAVE_TO_DISK_HINT}")
  paths = data_files(folder)
  tables = [read_arrow_file(p) for p in paths]
  for p, t in zip(paths[1:], tables[1:]):
    if not t.schema.equals(tables[0].schema, check_metadata=False):
      raise DataFormatError(
          f"{p}: schema {t.schema} differs from the first shard {paths[0]} ({tables[0].schema}). "
          "All shards of one split must share a schema."
      )
  table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
  if table.num_rows == 0:
    raise DataFormatError(f"{', '.join(paths)}: the split has no rows. {SAVE_TO_DISK_HINT}")
  return table, paths


def require_columns(table: pa.Table, required: Iterable[str | tuple[str, ...]], where: str,
                    what_to_do: str = "") -> None:
  """Raises naming the file(s) and the missing columns. A tuple entry means 'one of these'."""
  have = set(table.column_names)
  missing = []
  for req in required:
    alts = (req,) if isinstance(req, str) else tuple(req)
    if not any(a in have for a in alts):
      missing.append(" or ".join(repr(a) for a in alts))
  if missing:
    raise DataFormatError(
        f"{where}: missing required column(s) {', '.join(missing)}; found columns "
        f"{sorted(have)}. {what_to_do}".rstrip()
    )


def fingerprint(paths: Sequence[str], extra: Mapping[str, str] | None = None) -> str:
  """sha256 over the bytes of `paths` (and `extra`), used to invalidate prepared caches."""
  h = hashlib.sha256()
  for k, v in sorted((extra or {}).items()):
    h.update(f"{k}={v}\n".encode())
  for p in paths:
    h.update(os.path.basename(p).encode() + b"\0")
    with open(p, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
  return h.hexdigest()[:16]
