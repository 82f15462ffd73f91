r"""Calibration of base / OPD / CaOPD over seeds (mean +- std), on the held-out and the
out-of-distribution split, and under continual learning (task A then task B).

  python -m experiments.calibration_table --config=configs/calibration_table.py --workdir=OUT

Writes OUT/{seeds.csv, continual.csv, results.md, calibration_table.png}; every run keeps its own
workdir under OUT (seed_S/, continual_S/), so an interrupted experiment resumes.
"""

import copy
import csv
import json
import os

from absl import app, flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags
import numpy as np

from caopd_jax import evaluation
from caopd_jax.jobs import opd, pipeline, sft

_CONFIG = config_flags.DEFINE_config_file("config", "configs/calibration_table.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)

METRICS = ("accuracy", "ece", "brier", "spr", "ocg", "auroc", "mean_confidence")


def seed_runs(cfg, out):
  """{seed: {split: {stage: metrics}}} from one default pipeline per seed."""
  runs = {}
  for seed in cfg.seeds:
    c = copy.deepcopy(cfg.pipeline)
    with c.unlocked():
      c.seed = seed
      c.data_dir = os.path.join(out, "tfds")
    pipeline.main(c, os.path.join(out, f"seed_{seed}"))
    with open(os.path.join(out, f"seed_{seed}", "results.json")) as f:
      runs[seed] = json.load(f)["splits"]
  return runs


def _stage(cfg, name, seed, op, init_from, data_dir):
  c = copy.deepcopy(cfg.pipeline[name])
  with c.unlocked():
    c.seed, c.data_dir, c.task = seed, data_dir, copy.deepcopy(cfg.pipeline.task)
    c.task.op = op
    if init_from:
      c.init_from = init_from
      c.eval.enabled = False  # evaluated below, on both tasks
  return c


def continual_runs(cfg, out):
  """[(seed, method, after, task, metrics)]: base on A+B, then OPD/CaOPD on A, then on B."""
  rows = []
  a, b = cfg.continual.task_a, cfg.continual.task_b
  for seed in cfg.continual.seeds:
    root = os.path.join(out, f"continual_{seed}")
    data_dir = os.path.join(out, "tfds")
    base = sft.main(_stage(cfg, "base", seed, f"{a},{b}", "", data_dir), os.path.join(root, "base"))
    models = {("base", "-"): base}
    for method in ("opd", "caopd"):
      after_a = opd.main(_stage(cfg, method, seed, a, base, data_dir), os.path.join(root, f"{method}_A"))
      after_b = opd.main(_stage(cfg, method, seed, b, after_a, data_dir),
                         os.path.join(root, f"{method}_AB"))
      models[(method, "A")], models[(method, "A then B")] = after_a, after_b
    for (method, after), model_dir in models.items():
      for task in (a, b):
        ev = copy.deepcopy(cfg.pipeline)
        with ev.unlocked():
          ev.data_dir, ev.task.op, ev.eval.splits = data_dir, task, ("test",)
        name = f"{method}_{after}_{task}".replace(" ", "")
        metrics, _ = evaluation.evaluate_model(model_dir, ev, root, name)["test"]
        rows.append((seed, method, after, task, metrics))
  return rows


def mean_std(values):
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def seed_table(runs, split):
  lines = ["| stage | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
  for stage in pipeline.STAGES:
    cells = []
    for m in METRICS:
      mu, sd = mean_std([runs[s][split][stage][m] for s in runs])
      cells.append(f"{mu:.3f} ± {sd:.3f}")
    lines.append(f"| {stage} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def per_seed_table(runs, split, metrics=("accuracy", "ece", "ocg", "mean_confidence")):
  """One row per (seed, stage): a mean +- std hides a seed whose base failed to train."""
  lines = ["| seed | stage | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
  for seed in runs:
    for stage in pipeline.STAGES:
      m = runs[seed][split][stage]
      lines.append(f"| {seed} | {stage} | " + " | ".join(f"{m[k]:.3f}" for k in metrics) + " |")
  return "\n".join(lines)


def continual_table(rows):
  lines = ["| method | trained on | eval task | accuracy | ece | ocg | mean_confidence |",
           "|---|---|---|---|---|---|---|"]
  keys = sorted({(m, a, t) for _, m, a, t, _ in rows}, key=lambda k: (k[0] != "base", k[0], k[1], k[2]))
  for method, after, task in keys:
    vals = [r[4] for r in rows if r[1:4] == (method, after, task)]
    cells = [f"{mean_std([v[m] for v in vals])[0]:.3f}" for m in ("accuracy", "ece", "ocg", "mean_confidence")]
    lines.append(f"| {method} | {after} | {task} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(runs, path):
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
  splits = list(next(iter(runs.values())).keys())
  for ax, metric in zip(axes, ("accuracy", "mean_confidence", "ece")):
    width = 0.8 / len(splits)
    for i, split in enumerate(splits):
      stats = [mean_std([runs[s][split][st][metric] for s in runs]) for st in pipeline.STAGES]
      x = np.arange(len(pipeline.STAGES)) + i * width
      ax.bar(x, [m for m, _ in stats], width, yerr=[s for _, s in stats], capsize=3, label=split)
    ax.set_xticks(np.arange(len(pipeline.STAGES)) + width * (len(splits) - 1) / 2)
    ax.set_xticklabels(pipeline.STAGES)
    ax.set_title(f"{metric} (mean ± std over {len(runs)} seeds)")
    ax.set_ylim(0, 1.05)
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  cfg, out = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  os.makedirs(out, exist_ok=True)
  runs = seed_runs(cfg, out)
  with open(os.path.join(out, "seeds.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["seed", "split", "stage", *METRICS])
    for seed, splits in runs.items():
      for split, stages in splits.items():
        for stage, m in stages.items():
          w.writerow([seed, split, stage, *(m[k] for k in METRICS)])
  md = [f"## Over {len(runs)} seeds (mean ± std)"]
  for split in next(iter(runs.values())):
    md.append(f"### {split} split\n\n{seed_table(runs, split)}")
  for split in next(iter(runs.values())):
    md.append(f"### Per seed, {split} split\n\n{per_seed_table(runs, split)}")
  if cfg.continual.enabled:
    rows = continual_runs(cfg, out)
    with open(os.path.join(out, "continual.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["seed", "method", "trained_on", "eval_task", *METRICS])
      for seed, method, after, task, m in rows:
        w.writerow([seed, method, after, task, *(m[k] for k in METRICS)])
    md.append(f"## Continual learning ({cfg.continual.task_a} then {cfg.continual.task_b}; "
              f"seeds {tuple(cfg.continual.seeds)})\n\n{continual_table(rows)}")
  plot(runs, os.path.join(out, "calibration_table.png"))
  text = "\n\n".join(md) + "\n"
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
