"""The one OPD program on every task: a matrix of one-iteration runs of the OPD job (every
registered task x {OPD, CaOPD} x {EMA, fixed teacher}), and a brand-new task defined here, outside
the package, registered and run end to end (base -> OPD -> CaOPD -> evaluation) through the job
`run.py` runs."""

import json
import os

import numpy as np
import pytest
from flax import nnx

from caopd_jax import jobs, tasks
from caopd_jax.models import ModelConfig, Transformer, save_hf
from caopd_jax.tasks.plain import PlainTask
from configs import common, smoke
from configs.paper import common as paper

from shared_eval import EVAL_DIR  # pylint: disable=g-bad-import-order


def tiny_model_dir(path, tokenizer, seed, hidden=16):
  cfg = ModelConfig.tiny(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=8, intermediate_size=32)
  save_hf(Transformer(cfg, rngs=nnx.Rngs(seed)), str(path), tokenizer=tokenizer)
  return str(path)


@pytest.fixture(scope="module")
def arithmetic_models(tmp_path_factory):
  root = tmp_path_factory.mktemp("arith")
  tok = tasks.get(common.arithmetic_task()).new_tokenizer()
  return root, tiny_model_dir(root / "student", tok, 0), tiny_model_dir(root / "teacher", tok, 1, 24)


def one_step_config(name, env, caopd, teacher):
  if name == "arithmetic":
    root, student, fixed = env
    c = common.opd(data_dir=str(root / "tfds"))
    c.task.update(dict(num_train=40, num_test=8, num_ood=4))
  else:
    student, fixed = env["student"], env["teacher"]
    c = common.opd(data_dir=env["tfds"], train_split="eval", max_prompt_len=96, max_demo_len=32)
    c.task = paper.task(name, manual_dir=EVAL_DIR, limit=4)
  c.update(dict(init_from=student, caopd=caopd, steps=1, num_samples=2, prompts_per_step=2,
                report_objectives=(), log_every=1, checkpoint_every=1))
  c.teacher.update(dict(kind=teacher, path=fixed if teacher == "fixed" else ""))
  c.sampling.max_new_tokens = 6
  c.eval.enabled = False
  return c


@pytest.mark.parametrize("teacher", ["ema", "fixed"])
@pytest.mark.parametrize("caopd", [False, True])
@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_runs_an_iteration_of_the_opd_job(request, tmp_path, name, caopd, teacher):
  env = request.getfixturevalue("arithmetic_models" if name == "arithmetic" else "real_env")
  c = one_step_config(name, env, caopd, teacher)
  jobs.run(c, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    (m,) = [json.loads(line) for line in f]
  assert m["step"] == 1 and np.isfinite(m["train/loss"]) and m["train/grad_norm"] > 0
  assert 0 <= m["rollout/accuracy"] <= 1
  assert ("rollout/marker_found" in m) == (tasks.TASKS[name].verification == "text")
  assert os.path.exists(tmp_path / "model" / "config.json")


# ---- a task defined outside the package --------------------------------------------------------
class Reverse(PlainTask):
  """Spell a word backwards: 'Q: abc\\n...A: ' -> 'cba\\nConfidence: c'."""
  name = "reverse_test_task"
  OPTIONS = ("num_train", "num_test", "seed")

  def sources(self, data_dir, splits):
    rng = np.random.default_rng(self.cfg.seed)
    words = ["".join(rng.choice(list("abcdef"), size=int(rng.integers(2, 4))))
             for _ in range(self.cfg.num_train + self.cfg.num_test)]
    recs = [{"id": i, "question": w, "answer": w[::-1]} for i, w in enumerate(words)]
    return {s: {"train": recs[:self.cfg.num_train], "test": recs[self.cfg.num_train:]}[s]
            for s in splits}


def test_a_new_task_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
  monkeypatch.setitem(tasks.TASKS, Reverse.name, Reverse)
  c = smoke.get_config()
  task = common.C(dict(name=Reverse.name, num_train=64, num_test=8, seed=0))
  with c.unlocked():
    c.task = task
    c.eval.update(dict(splits=("test",), group_by="", batch_size=8))
  jobs.run(c, str(tmp_path))
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert set(results["splits"]["test"]) == {"base", "opd", "caopd"}
  for stage in ("opd", "caopd"):
    with open(tmp_path / stage / "metrics.jsonl") as f:
      logged = [json.loads(line) for line in f]
    assert logged[-1]["step"] == 4 and np.isfinite(logged[-1]["train/loss"])
  with open(tmp_path / "eval" / "caopd_test_responses.jsonl") as f:
    golds = [json.loads(line)["gold"] for line in f]
  assert golds[0] == Reverse(task).target_text(Reverse(task).sources("", ("test",))["test"][0])
