"""Job `caopd_pipeline` (the default `python run.py`): base -> OPD -> CaOPD on config.task,
then the calibration table on the held-out split(s).

Stages run in WORKDIR/{base,opd,caopd}; a finished stage is reused, an interrupted one resumes.
Writes WORKDIR/results.json ({stage: metrics} on the first eval split; every split under
"splits"), WORKDIR/results.md and WORKDIR/reliability.png.
"""

import json
import os

import jax

from caopd_jax import data, evaluation, plots
from caopd_jax.jobs import opd, sft

STAGES = ("base", "opd", "caopd")
COLUMNS = ("accuracy", "ece", "brier", "spr", "ocg", "auroc", "mean_confidence", "adherence")


def _stage_config(config, name):
  """A stage's config with the pipeline's seed, data and task."""
  c = config[name]
  with c.unlocked():
    c.seed, c.data_dir, c.task = config.seed, config.data_dir, config.task
  return c


def table(results, columns=COLUMNS) -> str:
  """Markdown table: one row per stage."""
  lines = ["| stage | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for stage, m in results.items():
    lines.append(f"| {stage} | " + " | ".join(f"{m[c]:.3f}" for c in columns) + " |")
  return "\n".join(lines)


def main(config, workdir):
  os.makedirs(workdir, exist_ok=True)
  with config.unlocked():
    config.data_dir = config.data_dir or data.data_dir_for(workdir)
  base_dir = sft.main(_stage_config(config, "base"), os.path.join(workdir, "base"))
  model_dirs = {"base": base_dir}
  for name in ("opd", "caopd"):
    c = _stage_config(config, name)
    with c.unlocked():
      c.init_from = base_dir
      c.eval.enabled = False  # the pipeline evaluates every stage below
    model_dirs[name] = opd.main(c, os.path.join(workdir, name))

  splits, scored = {}, {}
  for stage in STAGES:
    evals = evaluation.evaluate_model(model_dirs[stage], config, workdir, stage)
    for split, (metrics, s) in evals.items():
      splits.setdefault(split, {})[stage] = metrics
      scored.setdefault(split, {})[stage] = (s["conf"] * s["parsed"], s["correct"])
  first = config.eval.splits[0]
  results = {stage: splits[first][stage] for stage in STAGES}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({**results, "eval_split": first, "splits": splits}, f, indent=1)
    md = "\n\n".join(f"### {split}\n\n{table(rows)}" for split, rows in splits.items())
    with open(os.path.join(workdir, "results.md"), "w") as f:
      f.write(md + "\n")
    for split, stages in scored.items():
      suffix = "" if split == first else f"_{split}"
      plots.reliability_grid(stages, os.path.join(workdir, f"reliability{suffix}.png"),
                             title=f"Reliability on the {split} split")
    print(f"\nCalibration on the held-out split(s) (workdir {workdir}):\n\n{md}\n")
  return results
