"""Pieces the experiment scripts share: run names, SFT models by config, curves, CSV."""
import csv
import os
import re
import time

import numpy as np

from caopd_jax.jobs import sft
from caopd_jax.logging_utils import read_jsonl


def run_main(main, config_path: str):
  """Defines --config (default config_path) and --out (alias --workdir), then runs main.
  (Flags are defined here, not at import, so tests can import the experiment modules.)"""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", config_path)
  flags.DEFINE_string("out", None, "output directory")
  flags.DEFINE_alias("workdir", "out")
  app.run(main)


def start(flag_values):
  """(config, out_dir, data_dir, start time) of an experiment run with --config and --out."""
  cfg, out_dir = flag_values.config, flag_values.out
  if not out_dir:
    raise ValueError("--out is required")
  os.makedirs(out_dir, exist_ok=True)
  return cfg, out_dir, cfg.data_dir or os.path.join(out_dir, "tfds"), time.time()


def slug(label: str) -> str:
  """A directory name for a cell label ("topk_reverse K=4" -> "topk_reverse_k_4")."""
  return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def sft_model(cfg, name: str, data_dir: str, out_dir: str) -> str:
  """The HF directory of model `name`: cfg[name + "_dir"] if set, else the SFT job cfg[name]
  trained on cfg.task in OUT/name (a finished one is reused)."""
  if cfg[f"{name}_dir"]:
    return cfg[f"{name}_dir"]
  c = cfg[name].copy_and_resolve_references()
  with c.unlocked():
    c.data_dir, c.task = data_dir, cfg.task
  return sft.main(c, os.path.join(out_dir, name))


def curve(run_dir: str, key: str = "rollout/accuracy"):
  """(steps, values) of a logged metric of a run."""
  rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
  return np.asarray([r["step"] for r in rows]), np.asarray([r[key] for r in rows])


def write_csv(path: str, rows):
  if rows:
    with open(path, "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=list(rows[0]))
      w.writeheader()
      w.writerows(rows)
