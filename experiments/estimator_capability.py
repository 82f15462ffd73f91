r"""OPD estimators compared on capability: a fixed stronger teacher -> a weaker student.

For each cell (an estimator, or a Fu et al. fix on `token_sampled`) and OPD seed, the `opd` job
trains the student on its own rollouts scored by the fixed teacher (configs/estimator_capability.py).
Per run: the rollout accuracy by step (the K samples' verifier accuracy on the training prompts,
`rollout/accuracy` in metrics.jsonl) and, at the end, held-out accuracy (overall and per digit
count), calibration (ECE, OCG, mean confidence) and the student's mean token entropy on held-out
prompts. Per cell, at the student base: `variance.steps` lr-0 steps with compare_estimators give
the per-batch gradient norm (its mean and coefficient of variation over rollout batches) and the
cosine to the exact full-vocabulary gradient (`train_step` docstring).

  python -m experiments.estimator_capability --config=configs/estimator_capability.py --out=OUT
Writes OUT/{runs.csv, gradients.csv, results.md, estimator_capability.png}; runs live in
OUT/cells/NAME/seed_S (a finished run is reused, so an interrupted experiment resumes).
"""
import json
import os
import time

from absl import flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from caopd_jax import evaluation
from caopd_jax.jobs import opd
from caopd_jax.logging_utils import read_jsonl
from caopd_jax.tokenizers import load_tokenizer
from experiments import runs as runs_lib


FINAL = ("accuracy", "accuracy_d2", "accuracy_d3", "ece", "ocg", "mean_confidence",
         "heldout_entropy")


def cell_config(cfg, cell, *, seed, student, teacher, data_dir, stop_ids):
  _, objective, hparams, overrides = cell
  c = cfg.opd.copy_and_resolve_references()
  with c.unlocked():
    c.task, c.data_dir, c.seed, c.init_from = cfg.task, data_dir, seed, student
    c.teacher.path = teacher
    c.objective.name = objective
    for k, v in hparams:
      c.objective.hparams[k] = tuple(stop_ids) if v == "stop_ids" else v
    for path, v in overrides:
      *parents, leaf = path.split(".")
      node = c
      for p in parents:
        node = node[p]
      node[leaf] = v
  return c


def final_metrics(cfg, c, model_dir, run_dir):
  """Held-out metrics of a trained run (cached in RUN/final.json)."""
  path = os.path.join(run_dir, "final.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  metrics, _ = evaluation.evaluate_model(model_dir, c, run_dir, "final")[c.eval.splits[0]]
  row = {k: metrics.get(k, float("nan")) for k in FINAL if k != "heldout_entropy"}
  row["heldout_entropy"], _ = evaluation.heldout_entropy(model_dir, c, c.data_dir,
                                                         cfg.heldout_prompts, cfg.seed + 11)
  with open(path, "w") as f:
    json.dump(row, f)
  return row


def gradient_stats(cfg, cell, out_dir, **kw):
  """Per-batch gradient norm (mean, CV) and cosine to the exact gradient at the student base."""
  c = cell_config(cfg, cell, seed=0, **kw)
  with c.unlocked():
    c.update(dict(steps=cfg.variance.steps, log_every=1, checkpoint_every=0,
                  compare_estimators=True))
    c.optim.update(dict(lr=0.0, warmup_frac=0.0))
    c.eval.enabled = False
  run_dir = os.path.join(out_dir, "gradients", runs_lib.slug(cell[0]))
  opd.main(c, run_dir)
  rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
  norms = np.asarray([r["train/grad_norm"] for r in rows])
  cos = np.asarray([r[f"estimators/{cell[1]}/cos_exact"] for r in rows])
  return {"cell": cell[0], "grad_norm_mean": float(norms.mean()),
          "grad_norm_cv": float(norms.std(ddof=1) / norms.mean()) if len(norms) > 1 else 0.0,
          "cos_exact_mean": float(cos.mean()), "batches": len(rows)}


def mean_std(xs):
  xs = np.asarray(xs, float)
  return f"{xs.mean():.3f} ± {xs.std(ddof=1):.3f}" if len(xs) > 1 else f"{xs.mean():.3f}"


def markdown(cfg, base_row, teacher_row, runs, grads, seconds):
  o = cfg.opd
  lines = [f"{o.steps} OPD steps x {o.prompts_per_step} prompts x {o.num_samples} rollouts, lr "
           f"{o.optim.lr} ({o.optim.schedule}), fixed teacher, context `{o.teacher_context}`, "
           f"reduction {o.objective.hparams.reduction}; held-out: one sample per test question at "
           f"T={o.eval.sampling.temperature}; mean ± std over OPD seeds {tuple(cfg.seeds)}; "
           f"gradients: {cfg.variance.steps} rollout batches at the student base; {seconds:.0f} s."
           "\n"]
  names = ("accuracy", "2-digit", "3-digit", "ECE", "OCG", "mean conf", "token entropy")
  lines += ["| cell | seeds | " + " | ".join(names) +
            " | grad-norm mean | grad-norm CV | cos(exact) |", "|---" * (len(names) + 5) + "|"]
  for who, r in (("teacher", teacher_row), ("student base", base_row)):
    lines.append(f"| {who} | - | " + " | ".join(f"{r[k]:.3f}" for k in FINAL) + " | | | |")
  for cell in cfg.cells:
    rs = [r for r in runs if r["cell"] == cell[0]]
    if not rs:
      continue
    g = grads.get(cell[0], {})
    gtxt = (f"{g['grad_norm_mean']:.3g} | {g['grad_norm_cv']:.3f} | {g['cos_exact_mean']:.3f}"
            if g else "| |")
    lines.append(f"| {cell[0]} | {len(rs)} | " +
                 " | ".join(mean_std([r[k] for r in rs]) for k in FINAL) + f" | {gtxt} |")
  return "\n".join(lines) + "\n"


def plot(cfg, curves, base_acc, path):
  fig, ax = plt.subplots(figsize=(9, 5.5))
  for i, cell in enumerate(cfg.cells):
    cs = curves.get(cell[0])
    if not cs:
      continue
    steps = cs[0][0]
    ys = np.stack([c[1][:len(steps)] for c in cs if len(c[1]) >= len(steps)])
    m = ys.mean(0)
    line, = ax.plot(steps, m, label=f"{cell[0]} (n={len(ys)})", ls="-" if i < 10 else "--")
    if len(ys) > 1:
      ax.fill_between(steps, m - ys.std(0), m + ys.std(0), color=line.get_color(), alpha=0.12)
  ax.axhline(base_acc, color="k", lw=0.8, ls=":", label="student base (held-out)")
  ax.set(xlabel="OPD step", ylabel="rollout accuracy (train prompts, T=1)",
         title="Fixed stronger teacher -> student: accuracy by estimator (mean ± std over seeds)")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(_):
  cfg, out_dir, data_dir, t0 = runs_lib.start(flags.FLAGS)
  teacher, student = (runs_lib.sft_model(cfg, n, data_dir, out_dir) for n in ("teacher", "student"))
  kw = dict(student=student, teacher=teacher, data_dir=data_dir,
            stop_ids=load_tokenizer(student).stop_ids)
  ref = cell_config(cfg, cfg.cells[0], seed=0, **kw)
  rows = {}
  for who, model in (("teacher", teacher), ("student", student)):
    rows[who] = final_metrics(cfg, ref, model, os.path.join(out_dir, f"{who}_eval"))
  grads, runs, curves = {}, [], {}
  for cell in cfg.cells:  # gradient statistics first: cheap, and every cell gets them
    grads[cell[0]] = gradient_stats(cfg, cell, out_dir, **kw)
    runs_lib.write_csv(os.path.join(out_dir, "gradients.csv"), list(grads.values()))
  for seed in cfg.seeds:  # seed-major: an interrupted experiment has whole seeds of every cell
    for cell in cfg.cells:
      c = cell_config(cfg, cell, seed=seed, **kw)
      with c.unlocked():
        c.eval.enabled = False
      run_dir = os.path.join(out_dir, "cells", runs_lib.slug(cell[0]), f"seed_{seed}")
      model = opd.main(c, run_dir)
      runs.append({"cell": cell[0], "seed": seed, **final_metrics(cfg, c, model, run_dir)})
      curves.setdefault(cell[0], []).append(runs_lib.curve(run_dir))
      print({k: runs[-1][k] for k in ("cell", "seed", "accuracy", "accuracy_d3")}, flush=True)
      runs_lib.write_csv(os.path.join(out_dir, "runs.csv"), runs)
      md = markdown(cfg, rows["student"], rows["teacher"], runs, grads, time.time() - t0)
      with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(md)
      plot(cfg, curves, rows["student"]["accuracy"],
           os.path.join(out_dir, "estimator_capability.png"))
  print(md)


if __name__ == "__main__":
  runs_lib.run_main(main, "configs/estimator_capability.py")
