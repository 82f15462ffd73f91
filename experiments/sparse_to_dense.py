r"""Sparse-to-dense: GRPO on the student vs GRPO on a larger teacher -> warm-up -> OPD.

At one budget of rollout steps (configs/sparse_to_dense.py):
  (a) `grpo` on the student, `budget` steps;
  (b) `grpo` on the teacher base (split[0]), forward-KL warm-up of the student on the RL'd
      teacher's rollouts (split[1], prefix_source="teacher"), OPD on the student's rollouts
      scored by the RL'd teacher (split[2]).
Every stage is the `opd` job. Per stage: held-out accuracy and calibration (one sample per test
question) and the rollout accuracy by step (`rollout/accuracy`: the student's, or the teacher's
samples during the warm-up).

  python -m experiments.sparse_to_dense --config=configs/sparse_to_dense.py --out=OUT
Writes OUT/{results.md, stages.csv, sparse_to_dense.png}; stages live in OUT/{a,b}_*.
"""
import os
import time

from absl import flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from caopd_jax import evaluation
from caopd_jax.jobs import opd
from experiments import runs as runs_lib


COLUMNS = ("accuracy", "accuracy_d2", "accuracy_d3", "ece", "ocg", "mean_confidence")


def stage_configs(cfg, student, teacher_base, data_dir, out_dir):
  """[(name, workdir, config)] of (a) and (b); a stage's init_from / teacher is an earlier
  stage's model (its workdir/model)."""
  steps = [max(1, int(round(f * cfg.budget))) for f in cfg.split]
  steps[-1] = max(1, cfg.budget - sum(steps[:-1]))

  def stage(init_from, n, *, grpo, teacher="", prefix_source="student"):
    c = cfg.opd.copy_and_resolve_references()
    with c.unlocked():
      c.task, c.data_dir, c.seed, c.init_from, c.steps = cfg.task, data_dir, cfg.seed, init_from, n
      c.prefix_source = prefix_source
      c.eval.enabled = False
      if grpo:
        c.objective.name, c.objective.hparams = "grpo", cfg.grpo.hparams.to_dict()
        c.optim.lr = cfg.grpo.lr
      else:
        c.objective.name, c.optim.lr = cfg.distill.objective, cfg.distill.lr
        c.teacher.kind, c.teacher.path = "fixed", teacher
    return c

  d = lambda name: os.path.join(out_dir, name)
  model = lambda name: os.path.join(d(name), "model")
  return [
      ("(a) GRPO on the student", d("a_grpo_student"), stage(student, cfg.budget, grpo=True)),
      ("(b1) GRPO on the teacher", d("b1_grpo_teacher"), stage(teacher_base, steps[0], grpo=True)),
      ("(b2) warm-up on teacher rollouts", d("b2_warmup"),
       stage(student, steps[1], grpo=False, teacher=model("b1_grpo_teacher"),
             prefix_source="teacher")),
      ("(b3) OPD from the RL'd teacher", d("b3_opd"),
       stage(model("b2_warmup"), steps[2], grpo=False, teacher=model("b1_grpo_teacher"))),
  ]


def evaluate(c, model_dir, workdir):
  metrics, _ = evaluation.evaluate_model(model_dir, c, workdir, "final")[c.eval.splits[0]]
  return {k: metrics.get(k, float("nan")) for k in COLUMNS}


def main(_):
  cfg, out_dir, data_dir, t0 = runs_lib.start(flags.FLAGS)
  student, teacher_base = (runs_lib.sft_model(cfg, n, data_dir, out_dir) for n in ("student", "teacher"))
  stages = stage_configs(cfg, student, teacher_base, data_dir, out_dir)
  ref = stages[0][2]
  rows = [{"stage": "student (SFT)", "steps": 0, **evaluate(ref, student, out_dir)},
          {"stage": "teacher base (SFT)", "steps": 0, **evaluate(ref, teacher_base, out_dir)}]
  curves = {}
  for name, workdir, c in stages:
    model = opd.main(c, workdir)
    rows.append({"stage": name, "steps": c.steps, **evaluate(c, model, workdir)})
    curves[name] = runs_lib.curve(workdir)
    print(rows[-1], flush=True)
  runs_lib.write_csv(os.path.join(out_dir, "stages.csv"), rows)
  names = ("accuracy", "2-digit", "3-digit", "ECE", "OCG", "mean conf")
  md = [f"Budget {cfg.budget} rollout steps x {cfg.opd.prompts_per_step} prompts x "
        f"{cfg.opd.num_samples} samples; GRPO lr {cfg.grpo.lr}, distillation "
        f"`{cfg.distill.objective}` lr {cfg.distill.lr}; held-out: one sample per test question; "
        f"seed {cfg.seed}; {time.time() - t0:.0f} s.\n",
        "| stage | steps | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
  md += [f"| {r['stage']} | {r['steps']} | " + " | ".join(f"{r[k]:.3f}" for k in COLUMNS) + " |"
         for r in rows]
  md = "\n".join(md) + "\n"
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(md)
  fig, ax = plt.subplots(figsize=(8, 4.5))
  offset = 0
  for name, _, c in stages:
    x, y = curves[name]
    if name.startswith("(a)"):
      ax.plot(x, y, label=name, color="k", lw=1)
      continue
    ax.plot(x + offset, y, label=name)
    offset += c.steps
  ax.set(xlabel="rollout steps of the budget ((b1), (b2): the teacher's samples)",
         ylabel="rollout accuracy (train prompts)", title="Sparse (GRPO) vs sparse-to-dense")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "sparse_to_dense.png"), dpi=120)
  print(md)


if __name__ == "__main__":
  runs_lib.run_main(main, "configs/sparse_to_dense.py")
