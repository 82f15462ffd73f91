r"""Gradient alignment of OPD objectives by teacher context on the embedded task.

For a weak base student (configs/gradient_alignment.py): K rollouts on held-out questions; at one
node per geometric depth window of each rollout, p_succ of the sampled token and the student's
top-m tokens by targeted rollouts (caopd_jax.diagnostics.alignment); the cosine between the ideal
logit direction pi (p_succ - pbar) and each objective's descent direction -d loss_t / dz, for the
student as its own teacher (self-distillation: demo, correct_solution) and a longer-trained
teacher (demo, correct_solution, none), split by whether the rollout was correct. A sample of
nodes is re-scored in parameter space (all parameters; and the output kernel at fixed features,
where the two must agree exactly).

  python -m experiments.gradient_alignment --config configs/gradient_alignment.py --out OUT
Writes OUT/{nodes.csv, results.md, gradient_alignment.png}; trains missing bases in
OUT/bases (or config.bases_dir).
"""
import csv
import os
import time

from absl import app, flags
import jax
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags
import numpy as np
from flax import nnx

from caopd_jax.diagnostics import alignment as al, lm_alignment
from caopd_jax import tasks
from caopd_jax.jobs import sft
from caopd_jax.models import load_hf
from caopd_jax.opd import prompts as opd_prompts
from caopd_jax.sampling import SamplingConfig
from caopd_jax.tokenizers import load_tokenizer

_CONFIG = config_flags.DEFINE_config_file("config", "configs/gradient_alignment.py")
_OUT = flags.DEFINE_string("out", None, "output directory")
flags.DEFINE_alias("workdir", "out")


def ensure_base(cfg, role, bases_dir):
  """HF directory of the `role` base: config dir, else trained (once) in bases_dir/role."""
  if cfg[role].dir:
    return cfg[role].dir
  c = cfg.base.copy_and_resolve_references()
  with c.unlocked():
    c.steps, c.checkpoint_every = cfg[role].steps, cfg[role].steps
    c.data_dir = os.path.join(bases_dir, "tfds")
  return sft.main(c, os.path.join(bases_dir, role, "base"))


def wmean(x, w):
  return float(np.sum(w * x) / np.sum(w)) if np.sum(w) > 0 else float("nan")


def summarize(out, cfg):
  """Rows {teacher, context, objective, split, token_mean, question_mean, question_se, nodes,
  questions} and per-window rows."""
  rows, win_rows = [], []
  corr = out["correct"][:, None] & np.ones_like(out["weights"], bool)
  for (teacher, ctx, label), cos in out["cos"].items():
    ok = out["ok"][(teacher, ctx, label)]
    for split, sel in (("correct", corr), ("incorrect", ~corr), ("all", np.ones_like(corr))):
      m = ok & sel
      w = np.where(m, out["weights"], 0.0)
      per_q = [wmean(cos[out["question"] == q], w[out["question"] == q])
               for q in np.unique(out["question"])]
      per_q = np.asarray([v for v in per_q if np.isfinite(v)])
      rows.append(dict(teacher=teacher, context=ctx, objective=label, split=split,
                       token_mean=wmean(cos, w),
                       question_mean=float(np.mean(per_q)) if len(per_q) else float("nan"),
                       question_se=float(np.std(per_q) / np.sqrt(len(per_q))) if len(per_q) > 1
                       else float("nan"), nodes=int(m.sum()), questions=len(per_q)))
      if split == "all":
        continue
      for k, (s, e) in enumerate(al.depth_windows(out["horizon"], cfg.budget.first,
                                                  cfg.budget.growth)):
        mk = m[:, k]
        win_rows.append(dict(teacher=teacher, context=ctx, objective=label, split=split,
                             window=f"{s}-{e}", mean=float(np.mean(cos[:, k][mk]))
                             if mk.any() else float("nan"), nodes=int(mk.sum())))
  return rows, win_rows


def fmt(x, pm=None):
  if not np.isfinite(x):
    return "n/a"
  return f"{x:+.3f}" if pm is None or not np.isfinite(pm) else f"{x:+.3f}±{pm:.3f}"


def markdown(cfg, out, rows, win_rows, meta):
  labels = [o[0] for o in cfg.objectives]
  groups = list(dict.fromkeys((r["teacher"], r["context"]) for r in rows))
  cell = {(r["teacher"], r["context"], r["objective"], r["split"]): r for r in rows}
  md = [f"Student {meta['student']} (rollout accuracy {meta['accuracy']:.3f}), strong teacher "
        f"{meta['teacher']}; {meta['questions']} questions x {cfg.num_samples} rollouts "
        f"({meta['correct']} correct, {meta['incorrect']} incorrect chains); horizon "
        f"{out['horizon']}, windows {meta['windows']}, {cfg.budget.num_candidates} top tokens + "
        f"the sampled one, {cfg.budget.num_rollouts} continuations each = "
        f"{meta['rollouts_per_chain']} targeted rollouts per chain; mean candidate coverage "
        f"pi(C) = {meta['coverage']:.3f}; {meta['seconds']:.0f} s.\n"]
  for title, key in (("per token (node-weighted mean over all scored nodes)", "token"),
                     ("per question (mean ± s.e. over questions of the per-question mean)",
                      "question")):
    md += [f"\nAlignment cos(ideal, -grad loss_t), {title}:\n",
           "| teacher / context | split | " + " | ".join(labels) + " | nodes |",
           "|---|---|" + "---|" * len(labels) + "---|"]
    for g in groups:
      for split in ("correct", "incorrect"):
        cs = [cell[(*g, l, split)] for l in labels]
        vals = [fmt(c["token_mean"]) if key == "token" else fmt(c["question_mean"],
                                                                 c["question_se"]) for c in cs]
        md.append(f"| {g[0]} / {g[1]} | {split} | " + " | ".join(vals) + f" | {cs[0]['nodes']} |")
  windows = list(dict.fromkeys(r["window"] for r in win_rows))
  wcell = {(r["teacher"], r["context"], r["objective"], r["split"], r["window"]): r
           for r in win_rows}
  for label in ("full_reverse", "full_forward"):
    if label not in labels:
      continue
    md += [f"\n{label} alignment by depth window (per token; node count in brackets):\n",
           "| teacher / context | split | " + " | ".join(windows) + " |",
           "|---|---|" + "---|" * len(windows)]
    for g in groups:
      for split in ("correct", "incorrect"):
        md.append(f"| {g[0]} / {g[1]} | {split} | " + " | ".join(
            f"{fmt(wcell[(*g, label, split, w)]['mean'])} ({wcell[(*g, label, split, w)]['nodes']})"
            for w in windows) + " |")
  if out["param_check"]:
    md += ["\nLogit space vs parameter space at sampled scored nodes (pooled over teachers and "
           "contexts):\n",
           "| objective | nodes | corr(logit, all params) | mean abs diff (all params) | "
           "same sign | max abs diff (output kernel, fixed features) |",
           "|---|---|---|---|---|---|"]
    for label in labels:
      chk = [v for k, v in out["param_check"].items() if k[2] == label]
      if not chk:
        continue
      ok = np.concatenate([c[3] for c in chk]).astype(bool)  # defined directions only
      lc, pc, hc = (np.concatenate([c[i] for c in chk])[ok] for i in range(3))
      if not len(lc):
        continue
      corr = np.corrcoef(lc, pc)[0, 1] if len(lc) > 2 else float("nan")
      md.append(f"| {label} | {len(lc)} | {corr:.3f} | {np.mean(np.abs(lc - pc)):.3f} | "
                f"{np.mean(np.sign(lc) == np.sign(pc)):.2f} | {np.max(np.abs(lc - hc)):.1e} |")
  return "\n".join(md) + "\n"


def plot(cfg, rows, win_rows, path):
  labels = [o[0] for o in cfg.objectives]
  groups = list(dict.fromkeys((r["teacher"], r["context"]) for r in rows))
  cell = {(r["teacher"], r["context"], r["objective"], r["split"]): r for r in rows}
  fig, ax = plt.subplots(1, 3, figsize=(17, 4.5))
  width = 0.8 / len(groups)
  for a, split in zip(ax[:2], ("correct", "incorrect")):
    for i, g in enumerate(groups):
      vals = [cell[(*g, l, split)]["question_mean"] for l in labels]
      errs = [cell[(*g, l, split)]["question_se"] for l in labels]
      a.bar(np.arange(len(labels)) + i * width, vals, width, yerr=np.nan_to_num(errs),
            label=f"{g[0]}/{g[1]}", capsize=2)
    a.set_xticks(np.arange(len(labels)) + 0.4 - width / 2)
    a.set_xticklabels(labels, rotation=30, fontsize=8)
    a.axhline(0, color="k", lw=0.5)
    a.set(title=f"{split} rollouts (per-question mean ± s.e.)", ylabel="cos(ideal, -grad)")
  ax[0].legend(fontsize=7)
  for g in groups:
    for split, style in (("correct", "o-"), ("incorrect", "s--")):
      sel = [r for r in win_rows if (r["teacher"], r["context"]) == g and r["split"] == split
             and r["objective"] == "full_reverse"]
      ax[2].plot([r["window"] for r in sel], [r["mean"] for r in sel], style,
                 label=f"{g[0]}/{g[1]} {split}")
  ax[2].set(title="full_reverse by depth window", xlabel="window", ylabel="mean cos")
  ax[2].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(_):
  cfg, out_dir = _CONFIG.value, _OUT.value
  if not out_dir:
    raise app.UsageError("--out is required")
  os.makedirs(out_dir, exist_ok=True)
  bases_dir = cfg.bases_dir or os.path.join(out_dir, "bases")
  dirs = {role: ensure_base(cfg, role, bases_dir) for role in ("student", "teacher")}
  t0 = time.time()
  tok = load_tokenizer(dirs["student"])
  if load_tokenizer(dirs["teacher"]).vocab_size != tok.vocab_size:
    raise ValueError("student and teacher tokenizers differ")
  models = {role: nnx.split(load_hf(d)) for role, d in dirs.items()}
  task = tasks.get(cfg.base.task)
  pool = list(task.sources(cfg.base.data_dir or os.path.join(bases_dir, "tfds"),
                           (cfg.split,))[cfg.split])
  pick = np.random.default_rng(cfg.seed).permutation(len(pool))[:cfg.num_questions]
  records = [pool[i] for i in sorted(pick)]
  target = opd_prompts.encode(tok, task, records, None, opd_prompts.widths(tok, task, records))["target"]
  horizon = cfg.budget.horizon or int(np.max(np.sum(target >= 0, -1)))
  budget = al.Budget(horizon=horizon, num_candidates=cfg.budget.num_candidates,
                     num_rollouts=cfg.budget.num_rollouts, first=cfg.budget.first,
                     growth=cfg.budget.growth)
  sampling = SamplingConfig.from_config(cfg.sampling, tok)
  specs = tuple((l, n, tuple(tuple(x) for x in hp)) for l, n, hp in cfg.objectives)
  teachers = {"self": models["student"], "strong": models["teacher"]}
  contexts = {k: tuple(v) for k, v in cfg.contexts.items()}
  out = lm_alignment.measure(jax.random.key(cfg.seed), models["student"], teachers, tok, task,
                             records, num_samples=cfg.num_samples, sampling=sampling,
                             budget=budget, contexts=contexts, specs=specs,
                             param_nodes=cfg.param_nodes)
  out["horizon"] = horizon
  rows, win_rows = summarize(out, cfg)
  live = out["weights"] > 0
  meta = dict(student=dirs["student"], teacher=dirs["teacher"],
              accuracy=float(np.mean(out["correct"])), questions=len(records),
              correct=int(out["correct"].sum()), incorrect=int((~out["correct"]).sum()),
              windows=budget.windows, rollouts_per_chain=budget.rollouts_per_chain(),
              coverage=float(np.mean(out["coverage"][live])), seconds=time.time() - t0)
  with open(os.path.join(out_dir, "nodes.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["chain", "question", "correct", "window", "position", "weight", "pbar",
                "coverage", "p_sampled", "teacher", "context", "objective", "cos", "ok"])
    for (teacher, ctx, label), cos in out["cos"].items():
      ok = out["ok"][(teacher, ctx, label)]
      for n, k in zip(*np.nonzero(live)):
        w.writerow([n, out["question"][n], int(out["correct"][n]), k, out["positions"][n, k],
                    out["weights"][n, k], f"{out['pbar'][n, k]:.4f}",
                    f"{out['coverage'][n, k]:.4f}", f"{out['p_sampled'][n, k]:.4f}", teacher,
                    ctx, label, f"{cos[n, k]:.5f}", int(ok[n, k])])
  md = markdown(cfg, out, rows, win_rows, meta)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(md)
  plot(cfg, rows, win_rows, os.path.join(out_dir, "gradient_alignment.png"))
  print(md)


if __name__ == "__main__":
  app.run(main)
