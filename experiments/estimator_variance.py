r"""Bias and variance of OPD gradient estimators on the exactly enumerable toy and the 1-D control toy.

Enumerable toy (caopd_jax/toy/enumerable.py): every estimator is the registry objective with
reduction="sequence_sum"; its per-sequence gradient g(y) is evaluated on all V^H sequences and
weighted by pi(y), so its mean and trace covariance are exact (no Monte Carlo error):
  bias_seq = ||E g - grad KL(pi||q)|| / ||grad KL(pi||q)||   (sequence-level target)
  bias_tok = ||E g - E sum_t grad KL_t|| / ||E sum_t grad KL_t||  (token-level target)
  var      = E ||g - E g||^2  (one sequence; a batch of B divides it by B)
Control toy (caopd_jax/toy/control1d.py): Var = mean_m ||g_m - g_bar||^2 of the output-layer
gradient, B=64 in M=8 micro-batches, at init and at a gamma=0-trained student; and an Adam
distillation run per gamma (terminal error of the greedy policy).

  python -m experiments.estimator_variance --config configs/estimator_variance.py --out OUT
Writes OUT/{enumerable.csv, control1d.csv, results.md, estimator_variance.png}.
"""
import csv
import os

from absl import app, flags
import jax
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags
import numpy as np
from tqdm import tqdm

from caopd_jax.toy import control1d, enumerable as en

_CONFIG = config_flags.DEFINE_config_file("config", "configs/estimator_variance.py")
_OUT = flags.DEFINE_string("out", None, "output directory")
flags.DEFINE_alias("workdir", "out")


def estimators(cfg):
  k = cfg.enum.topk
  return ([(f"discounted g={g}", "discounted", (("gamma", g),)) for g in cfg.enum.gammas]
          + [("vopd", "vopd", ()), (f"vopd top{k} baseline", "vopd", (("baseline_top_k", k),)),
             ("full_reverse", "full_reverse", ()), (f"topk_reverse k={k}", "topk_reverse",
                                                    (("k", k),))])


def run_enumerable(cfg):
  e = cfg.enum
  rows, cells = [], [(h, c) for h in e.horizons for c in e.couplings]
  for h, c in tqdm(cells, desc="enumerable toy"):
    toy = en.Toy(e.vocab, h)
    acc = {}
    for s in range(e.seeds):
      theta, teacher = en.init_tables(jax.random.key(cfg.seed + s), toy, c, e.student_scale,
                                      e.student_noise, e.teacher_scale)
      g_seq, g_tok = (np.asarray(g) for g in en.exact_gradients(theta, teacher, toy))
      for label, name, hp in estimators(cfg):
        mean, var = en.exact_moments(name, theta, teacher, toy, hp)
        mean = np.asarray(mean)
        acc.setdefault(label, []).append((np.linalg.norm(mean - g_seq) / np.linalg.norm(g_seq),
                                          np.linalg.norm(mean - g_tok) / np.linalg.norm(g_tok),
                                          float(var)))
    for label, vals in acc.items():
      b_seq, b_tok, var = np.mean(vals, axis=0)
      rows.append({"horizon": h, "coupling": c, "estimator": label, "bias_seq": b_seq,
                   "bias_tok": b_tok, "variance": var})
  return rows


def run_regimes(cfg):
  """var(vopd) / var(token_sampled) for (student_scale, teacher_scale) regimes."""
  e, out = cfg.enum, []
  toy = en.Toy(e.vocab, e.main_horizon)
  for ss, ts in e.regimes:
    ratios = []
    for s in range(e.seeds):
      theta, teacher = en.init_tables(jax.random.key(cfg.seed + s), toy, e.main_coupling, ss,
                                      e.student_noise, ts)
      v = {n: float(en.exact_moments(n, theta, teacher, toy, hp)[1]) for n, hp in (
          ("token_sampled", ()), ("vopd", ()), ("full_reverse", ()))}
      vk = float(en.exact_moments("vopd", theta, teacher, toy, (("baseline_top_k", e.topk),))[1])
      ratios.append((v["vopd"] / v["token_sampled"], vk / v["token_sampled"],
                     v["full_reverse"] / v["token_sampled"]))
    out.append((ss, ts, *np.mean(ratios, axis=0)))
  return out


def run_control(cfg):
  c, env = cfg.control, control1d.Control()
  init = control1d.init_policy(jax.random.key(cfg.seed), env)
  variance = lambda p, g: float(np.mean([control1d.output_grad_variance(
      p, env, jax.random.key(1000 + i), g, c.batch, c.micro) for i in range(c.variance_draws)]))
  trained, rows = {}, []
  for g in tqdm(c.gammas, desc="control toy"):
    errs, greedy = [], []
    for s in range(c.train_seeds):
      p, err = control1d.train(init, env, jax.random.key(cfg.seed + 1 + s), g, c.train_steps,
                               c.batch, c.lr)
      errs.append(float(np.mean(np.asarray(err)[-max(1, c.train_steps // 20):])))
      greedy.append(float(np.mean(control1d.terminal_error(p, env))))
      trained.setdefault(g, p)
    rows.append({"gamma": g, "var_init": variance(init, g), "train_err_final": np.mean(errs),
                 "greedy_err": np.mean(greedy)})
  ref = trained[min(c.gammas)]
  for r in rows:
    r["var_trained"] = variance(ref, r["gamma"])
  return rows


def write_csv(path, rows):
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def table(rows, row_key, col_key, val, fmt):
  cols = sorted({r[col_key] for r in rows})
  labels = list(dict.fromkeys(r[row_key] for r in rows))
  cell = {(r[row_key], r[col_key]): r[val] for r in rows}
  out = [f"| {row_key} \\ {col_key} | " + " | ".join(str(c) for c in cols) + " |",
         "|---" * (len(cols) + 1) + "|"]
  out += [f"| {l} | " + " | ".join(fmt.format(cell[(l, c)]) for c in cols) + " |" for l in labels]
  return "\n".join(out)


def markdown(cfg, rows, regimes, ctrl):
  e = cfg.enum
  at_h = [r for r in rows if r["horizon"] == e.main_horizon]
  at_c = [r for r in rows if r["coupling"] == e.main_coupling]
  md = [f"## Enumerable toy (V={e.vocab}, {e.seeds} random tables per cell, exact moments)",
        f"\nRelative bias vs the sequence-level gradient, H={e.main_horizon}:\n",
        table(at_h, "estimator", "coupling", "bias_seq", "{:.3f}"),
        f"\nRelative bias vs the token-level gradient, H={e.main_horizon}:\n",
        table(at_h, "estimator", "coupling", "bias_tok", "{:.3f}"),
        f"\nPer-sequence variance E||g - Eg||^2, H={e.main_horizon}:\n",
        table(at_h, "estimator", "coupling", "variance", "{:.3g}"),
        f"\nPer-sequence variance vs horizon, coupling={e.main_coupling}:\n",
        table(at_c, "estimator", "horizon", "variance", "{:.3g}"),
        f"\nRelative bias vs the sequence-level gradient vs horizon, coupling={e.main_coupling}:\n",
        table(at_c, "estimator", "horizon", "bias_seq", "{:.3f}"),
        f"\nVariance ratios to token_sampled by regime (H={e.main_horizon}, "
        f"coupling={e.main_coupling}):\n",
        "| student_scale | teacher_scale | vopd | vopd top-k baseline | full_reverse |",
        "|---|---|---|---|---|"]
  md += [f"| {a} | {b} | {x:.3f} | {y:.3f} | {z:.3f} |" for a, b, x, y, z in regimes]
  md += [f"\n## 1-D control toy (B={cfg.control.batch}, M={cfg.control.micro}, "
         f"{cfg.control.variance_draws} draws; Adam lr={cfg.control.lr}, "
         f"{cfg.control.train_steps} steps)\n",
         "| gamma | Var at init | Var at trained student | train err (last 5%) | greedy terminal err |",
         "|---|---|---|---|---|"]
  md += [f"| {r['gamma']} | {r['var_init']:.3g} | {r['var_trained']:.3g} | "
         f"{r['train_err_final']:.3f} | {r['greedy_err']:.3f} |" for r in ctrl]
  return "\n".join(md) + "\n"


def plot(cfg, rows, ctrl, path):
  e = cfg.enum
  fig, ax = plt.subplots(2, 2, figsize=(11, 8))
  gam = lambda l: float(l.split("=")[1])
  for c in e.couplings:
    sel = [r for r in rows if r["horizon"] == e.main_horizon and r["coupling"] == c
           and r["estimator"].startswith("discounted")]
    ax[0, 0].plot([gam(r["estimator"]) for r in sel], [r["variance"] for r in sel], "o-",
                  label=f"coupling {c}")
    ax[0, 1].plot([gam(r["estimator"]) for r in sel], [r["bias_seq"] for r in sel], "o-",
                  label=f"coupling {c}")
  ax[0, 0].set(yscale="log", xlabel="gamma", ylabel="per-sequence variance",
               title=f"discounted, H={e.main_horizon}")
  ax[0, 1].set(xlabel="gamma", ylabel="||E g - grad J|| / ||grad J||",
               title="bias vs sequence gradient")
  for label in dict.fromkeys(r["estimator"] for r in rows):
    sel = [r for r in rows if r["coupling"] == e.main_coupling and r["estimator"] == label]
    ax[1, 0].plot([r["horizon"] for r in sel], [r["variance"] for r in sel], "o-", label=label)
  ax[1, 0].set(yscale="log", xlabel="horizon H", ylabel="per-sequence variance",
               title=f"coupling {e.main_coupling}")
  g = [r["gamma"] for r in ctrl]
  ax[1, 1].plot(g, [r["var_init"] for r in ctrl], "o-", label="at init")
  ax[1, 1].plot(g, [r["var_trained"] for r in ctrl], "o-", label="at trained student")
  ax[1, 1].set(yscale="log", xlabel="gamma", ylabel="Var (output layer)", title="1-D control toy")
  for a in ax.flat:
    wide = a is ax[1, 0]
    a.legend(fontsize=6, ncol=2 if wide else 1, loc="upper left" if wide else "best")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(_):
  cfg, out = _CONFIG.value, _OUT.value
  if not out:
    raise app.UsageError("--out is required")
  os.makedirs(out, exist_ok=True)
  rows = run_enumerable(cfg)
  regimes = run_regimes(cfg)
  ctrl = run_control(cfg)
  write_csv(os.path.join(out, "enumerable.csv"), rows)
  write_csv(os.path.join(out, "control1d.csv"), ctrl)
  md = markdown(cfg, rows, regimes, ctrl)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(md)
  plot(cfg, rows, ctrl, os.path.join(out, "estimator_variance.png"))
  print(md)


if __name__ == "__main__":
  app.run(main)
