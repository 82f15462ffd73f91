r"""Calibration of base / OPD / CaOPD over seeds (mean +- std), on the held-out and the
out-of-distribution split, and under continual learning (task A then task B).

  python -m experiments.calibration_table --config=configs/calibration_table.py --workdir=OUT

Writes OUT/{seeds.csv, continual.csv, results.md, calibration_table.png}; every run keeps its own
workdir under OUT (seed_S/, continual_S/), so an interrupted experiment resumes. Each seed's
models are also evaluated with every confidence readout in `readouts` other than the pipeline's
own (`eval.confidence`, caopd_jax.evaluation) under seed_S/readout_R/, and the issue-14 targets
(`TARGETS`) are checked per seed and readout.
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


# (name, test) over one seed's {stage: metrics}: what the default job must show (issue 14).
TARGETS = (
    ("base accuracy > 0.50", lambda m: m["base"]["accuracy"] > 0.50),
    ("OPD accuracy >= base + 0.05", lambda m: m["opd"]["accuracy"] >= m["base"]["accuracy"] + 0.05),
    ("OPD OCG > +0.10", lambda m: m["opd"]["ocg"] > 0.10),
    ("CaOPD accuracy >= OPD - 0.02", lambda m: m["caopd"]["accuracy"] >= m["opd"]["accuracy"] - 0.02),
    ("abs(CaOPD OCG) < 0.05", lambda m: abs(m["caopd"]["ocg"]) < 0.05),
    ("CaOPD ECE <= 0.5 x OPD ECE", lambda m: m["caopd"]["ece"] <= 0.5 * m["opd"]["ece"]),
)


def seed_runs(cfg, out):
  """{readout: {seed: {split: {stage: metrics}}}}: one default pipeline per seed (its own
  readout), its three models re-evaluated with each other readout."""
  runs = {r: {} for r in dict.fromkeys((cfg.pipeline.eval.confidence, *cfg.readouts))}
  for seed in cfg.seeds:
    c = copy.deepcopy(cfg.pipeline)
    with c.unlocked():
      c.seed = seed
      c.data_dir = os.path.join(out, "tfds")
    root = os.path.join(out, f"seed_{seed}")
    pipeline.main(c, root)
    with open(os.path.join(root, "results.json")) as f:
      runs[c.eval.confidence][seed] = json.load(f)["splits"]
    for readout in runs:
      if readout == c.eval.confidence:
        continue
      ev = copy.deepcopy(c)
      with ev.unlocked():
        ev.eval.confidence = readout
      runs[readout][seed] = {}
      for stage in pipeline.STAGES:
        evals = evaluation.evaluate_model(os.path.join(root, stage, "model"), ev,
                                          os.path.join(root, f"readout_{readout}"), stage)
        for split, (metrics, _) in evals.items():
          runs[readout][seed].setdefault(split, {})[stage] = metrics
  return runs


def target_table(runs, split):
  """One row per target, one column per seed: whether it holds; the count of those that do."""
  seeds = list(runs)
  lines = ["| target | " + " | ".join(f"seed {s}" for s in seeds) + " |",
           "|---" * (len(seeds) + 1) + "|"]
  for name, test in TARGETS:
    lines.append(f"| {name} | " + " | ".join("yes" if test(runs[s][split]) else "**no**"
                                             for s in seeds) + " |")
  held = sum(test(runs[s][split]) for s in seeds for _, test in TARGETS)
  return "\n".join(lines) + f"\n\n{held} of {len(TARGETS) * len(seeds)} hold."


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
    base_cfg = _stage(cfg, "base", seed, f"{a},{b}", "", data_dir)
    with base_cfg.unlocked():
      base_cfg.steps = cfg.continual.base_steps or base_cfg.steps  # 0: the pipeline's
    base = sft.main(base_cfg, os.path.join(root, "base"))
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
  by_readout = seed_runs(cfg, out)
  runs = by_readout[cfg.pipeline.eval.confidence]
  with open(os.path.join(out, "seeds.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["readout", "seed", "split", "stage", *METRICS])
    for readout, r in by_readout.items():
      for seed, splits in r.items():
        for split, stages in splits.items():
          for stage, m in stages.items():
            w.writerow([readout, seed, split, stage, *(m[k] for k in METRICS)])
  md = []
  for readout, r in by_readout.items():
    md.append(f"## Confidence readout '{readout}': over {len(r)} seeds (mean ± std)")
    for split in next(iter(r.values())):
      md.append(f"### {split} split\n\n{seed_table(r, split)}")
    for split in next(iter(r.values())):
      md.append(f"### Per seed, {split} split\n\n{per_seed_table(r, split)}")
    first = cfg.pipeline.eval.splits[0]
    md.append(f"### Targets ({first} split)\n\n{target_table(r, first)}")
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
