"""LoRA students: only the adapters change in an OPD step (the base frozen, shared with the EMA
teacher), the merged export loads in transformers with the adapted model's logits, the PEFT
export loads with `peft` with the same logits, and the planner's saving at the 8B config."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from caopd_jax.jobs import opd
from caopd_jax.models import load_hf, lora
from caopd_jax.train.step import model_state
from configs import common

import hf_fixtures  # pylint: disable=g-bad-import-order
from hf_fixtures import tiny_model_dir  # pylint: disable=g-bad-import-order

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def lora_config(root, student, **overrides):
  c = common.opd(data_dir=str(root / "tfds"), init_from=student, steps=1, num_samples=2,
                 prompts_per_step=2, report_objectives=(), log_every=1, checkpoint_every=1)
  c.task.update(dict(num_train=40, num_test=8, num_ood=4))
  c.sampling.max_new_tokens = 6
  c.eval.enabled = False
  c.lora.update(dict(rank=4, alpha=8.0, dropout=0.1))
  c.optim.update(dict(lr=1e-2, schedule="constant", warmup_frac=0.0))
  c.update(overrides)
  return c


def test_only_adapters_change_and_the_teacher_shares_the_base(tmp_path):
  from caopd_jax import tasks  # pylint: disable=g-import-not-at-top
  tok = tasks.get(common.arithmetic_task()).new_tokenizer()
  student = tiny_model_dir(tmp_path / "s", tok, 0)
  run = opd.setup(lora_config(tmp_path, student), str(tmp_path / "w"))
  state = run.state
  assert state.frozen is not None and run.iteration.teacher_shares_base
  n_adapters = len(jax.tree.leaves(state.params))
  assert n_adapters == 2 * len(TARGETS) and len(jax.tree.leaves(state.teacher)) == n_adapters
  before = jax.tree.map(np.asarray, (state.params, state.frozen, state.teacher))
  new, metrics = jax.jit(run.iteration)(state, jax.tree.map(jnp.asarray, run.get_batch(0)))
  assert np.isfinite(float(metrics["train/loss"]))
  for a, b in zip(jax.tree.leaves(before[1]), jax.tree.leaves(new.frozen)):
    np.testing.assert_array_equal(a, np.asarray(b))  # the base is frozen
  changed = [not np.allclose(a, np.asarray(b)) for a, b in
             zip(jax.tree.leaves(before[0]), jax.tree.leaves(new.params))]
  assert all(changed[1::2])  # every B moved off 0 (A gets its first gradient once B != 0)
  # the EMA teacher follows the adapters: (1 - a) T + a S
  a = run.teacher.ema_alpha
  for t0, t1, s1 in zip(jax.tree.leaves(before[2]), jax.tree.leaves(new.teacher),
                        jax.tree.leaves(new.params)):
    np.testing.assert_allclose(np.asarray(t1), (1 - a) * t0 + a * np.asarray(s1), rtol=1e-6,
                               atol=1e-8)


def test_merged_and_peft_exports_match_the_adapted_model(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  peft = pytest.importorskip("peft", reason="peft did not install (a test-only dependency)")
  hf = hf_fixtures.make_hf_model("qwen3", seed=5)
  base = hf_fixtures.save_hf_model(hf, str(tmp_path / "base"))
  model = load_hf(base, lora_rank=4, lora_alpha=8.0, lora_targets=TARGETS)
  graphdef, adapters, frozen = nnx.split(model, lora.LoRAParam, nnx.Param)
  rs = np.random.RandomState(0)
  adapters = jax.tree.map(lambda x: x + 0.05 * rs.standard_normal(x.shape).astype(np.float32),
                          adapters)
  model = nnx.merge(graphdef, model_state(adapters, frozen))
  ids = rs.randint(0, 97, (2, 11))
  ours = np.asarray(model(jnp.asarray(ids)))
  assert np.abs(ours - hf_fixtures.hf_logits(hf, ids)).max() > 1e-3  # the adapters matter
  from caopd_jax.models import save_hf  # pylint: disable=g-import-not-at-top
  save_hf(model, str(tmp_path / "merged"))
  merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
  np.testing.assert_allclose(hf_fixtures.hf_logits(merged, ids), ours, atol=1e-4)
  lora.save_peft(model, str(tmp_path / "adapter"), base)
  adapted = peft.PeftModel.from_pretrained(
      transformers.AutoModelForCausalLM.from_pretrained(base).float().eval(),
      str(tmp_path / "adapter")).eval()
  with torch.no_grad():
    got = adapted(input_ids=torch.tensor(ids)).logits.float().numpy()
  np.testing.assert_allclose(got, ours, atol=1e-4)
  assert os.path.exists(tmp_path / "adapter" / "adapter_config.json")
