r"""The 2x2 (prefix source x KL direction), the lambda mix and the entropy-gated length curriculum.

Each cell runs the `opd` job (prefix_source, objective, curriculum; diag/ metrics on) from one
base student, then evaluates the trained student on the held-out split: accuracy and calibration
(caopd_jax.evaluation -> calibration.summarize), and, on the student's own samples at T=1, the
mean token entropy and the completion length (caopd_jax.opd.curriculum.heldout_stats). The last logged
training diagnostics (student / teacher entropy, fraction of negative sampled-token rewards) are
tabulated beside them.

  python -m experiments.objective_grid --config configs/objective_grid.py --out OUT
Writes OUT/{grid.csv, results.md, objective_grid.png}; each cell's run lives in OUT/cells/NAME.
"""
import csv
import os
import time

from absl import app, flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags
import numpy as np

from caopd_jax import evaluation, tasks
from caopd_jax.jobs import opd, sft
from caopd_jax.logging_utils import read_jsonl
from experiments.runs import slug

_CONFIG = config_flags.DEFINE_config_file("config", "configs/objective_grid.py")
_OUT = flags.DEFINE_string("out", None, "output directory")
flags.DEFINE_alias("workdir", "out")

COLUMNS = ("accuracy", "ece", "brier", "ocg", "mean_confidence", "heldout_entropy",
           "heldout_length", "train_student_entropy", "train_teacher_entropy",
           "train_neg_reward_frac", "final_max_completion")


def base_dir(cfg, bases_dir):
  if cfg.base_dir:
    return cfg.base_dir
  c = cfg.base.copy_and_resolve_references()
  with c.unlocked():
    c.data_dir = os.path.join(bases_dir, "tfds")
  return sft.main(c, os.path.join(bases_dir, "student", "base"))


def cell_config(cfg, cell, base, data_dir):
  _, source, objective, hparams, curriculum = cell
  c = cfg.opd.copy_and_resolve_references()
  with c.unlocked():
    c.init_from, c.data_dir, c.seed = base, data_dir, cfg.seed
    c.prefix_source = source
    c.objective.name = objective
    for k, v in hparams:
      c.objective.hparams[k] = v
    c.curriculum.enabled = curriculum
  return c


def heldout(model_dir, cfg, data_dir):
  """(mean token entropy, mean completion length) of the model's own samples on held-out
  prompts (the sampling settings of the OPD rollouts, no length limit)."""
  return evaluation.heldout_entropy(model_dir, cfg.opd, data_dir, cfg.heldout_prompts,
                                    cfg.seed + 11)


def evaluate(name, model_dir, cfg, data_dir, out_dir, run_dir=None):
  c = cfg.opd.copy_and_resolve_references()
  with c.unlocked():
    c.data_dir = data_dir
  evals = evaluation.evaluate_model(model_dir, c, os.path.join(out_dir, "eval_work"), name)
  metrics, _ = evals[c.eval.splits[0]]
  row = {k: metrics[k] for k in ("accuracy", "ece", "brier", "ocg", "mean_confidence")}
  row["heldout_entropy"], row["heldout_length"] = heldout(model_dir, cfg, data_dir)
  last = {}
  if run_dir and os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
    last = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))[-1]
  row["train_student_entropy"] = last.get("diag/student_entropy", float("nan"))
  row["train_teacher_entropy"] = last.get("diag/teacher_entropy", float("nan"))
  row["train_neg_reward_frac"] = last.get("diag/neg_reward_frac", float("nan"))
  row["final_max_completion"] = last.get("curriculum/max_completion", float("nan"))
  return row


def markdown(cfg, rows, n_eval, seconds):
  o = cfg.opd
  head = (f"OPD cells: {o.steps} steps x {o.prompts_per_step} prompts x {o.num_samples} "
          f"samples, lr {o.optim.lr}, EMA teacher (alpha {o.teacher.ema_alpha}) with the "
          f"`{o.teacher_context}` context, reduction {o.objective.hparams.reduction}; eval: "
          f"{n_eval} held-out questions, one sample each at T={o.eval.sampling.temperature}; held-out "
          f"entropy/length: {cfg.heldout_prompts} questions; {seconds:.0f} s.\n")
  names = ("accuracy", "ECE", "Brier", "OCG", "mean conf", "held-out token entropy",
           "held-out length", "train H(student)", "train H(teacher)", "train neg-reward frac",
           "final max len")
  md = [head, "| cell | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for r in rows:
    vals = [("n/a" if not np.isfinite(r[k]) else f"{r[k]:.3f}" if k != "final_max_completion"
             else f"{r[k]:.0f}") for k in COLUMNS]
    md.append(f"| {r['cell']} | " + " | ".join(vals) + " |")
  return "\n".join(md) + "\n"


def plot(rows, path):
  fig, ax = plt.subplots(1, 3, figsize=(15, 4))
  labels = [r["cell"] for r in rows]
  for a, key, title in zip(ax, ("accuracy", "heldout_entropy", "heldout_length"),
                           ("held-out accuracy", "held-out mean token entropy",
                            "held-out completion length")):
    a.barh(np.arange(len(rows)), [r[key] for r in rows])
    a.set_yticks(np.arange(len(rows)))
    a.set_yticklabels(labels if a is ax[0] else [], fontsize=7)
    a.set(title=title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(_):
  cfg, out_dir = _CONFIG.value, _OUT.value
  if not out_dir:
    raise app.UsageError("--out is required")
  os.makedirs(out_dir, exist_ok=True)
  bases_dir = cfg.bases_dir or os.path.join(out_dir, "bases")
  data_dir = os.path.join(bases_dir, "tfds")
  base = base_dir(cfg, bases_dir)
  t0 = time.time()
  rows = [{"cell": "base (no OPD)", "prefix_source": "", "objective": "",
           **evaluate("base", base, cfg, data_dir, out_dir)}]
  for cell in cfg.cells:
    run_dir = os.path.join(out_dir, "cells", slug(cell[0]))
    model = opd.main(cell_config(cfg, cell, base, data_dir), run_dir)
    rows.append({"cell": cell[0], "prefix_source": cell[1], "objective": cell[2],
                 **evaluate(slug(cell[0]), model, cfg, data_dir, out_dir, run_dir)})
    print({k: rows[-1][k] for k in ("cell", "accuracy", "heldout_entropy", "heldout_length")})
  with open(os.path.join(out_dir, "grid.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  split = cfg.opd.eval.splits[0]
  n_eval = cfg.opd.eval.limit or len(tasks.get(cfg.opd.task).sources(data_dir, (split,))[split])
  md = markdown(cfg, rows, n_eval, time.time() - t0)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(md)
  plot(rows, os.path.join(out_dir, "objective_grid.png"))
  print(md)


if __name__ == "__main__":
  app.run(main)
