"""SFT length buckets (config.length_buckets): rows per format fixed by format_counts, each format
at its own width, and the bucketed step equal to the step on the same rows padded to one width."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from caopd_jax import contexts, sharding, tasks
from caopd_jax.jobs import sft
from caopd_jax.models import ModelConfig, Transformer
from caopd_jax.tokenizers import pad_right
from caopd_jax.train.loop import born_sharded
from caopd_jax.train.step import make_sft_step
from configs import common

TASK = tasks.get(common.arithmetic_task(min_digits=2, max_digits=2))
TOK = TASK.new_tokenizer()
RECORDS = [{"id": i, "question": f"{a:02d}+{b:02d}", "answer": str(a + b), "difficulty": 2}
           for i, (a, b) in enumerate(zip(range(10, 90, 3), range(95, 15, -3)))]


@pytest.mark.parametrize("n,unit", [(7, 1), (24, 1), (64, 1), (101, 1), (64, 8), (48, 4),
                                    (40, 8)])
def test_format_counts_round_the_mix_to_the_batch(n, unit):
  probs = (0.6, 0.2, 0.2)
  counts = sft.format_counts(probs, n, unit)
  assert counts.sum() == n and np.all(counts % unit == 0) and np.all(counts > 0)
  assert np.all(np.abs(counts - n * np.asarray(probs)) < unit)
  # brute force: no other split of n into multiples of unit is closer to n x probs (max abs error)
  best = min(max(abs(a - n * 0.6), abs(b - n * 0.2), abs(n - a - b - n * 0.2))
             for a in range(0, n + 1, unit) for b in range(0, n + 1 - a, unit))
  assert max(np.abs(counts - n * np.asarray(probs))) <= best + 1e-9


@pytest.mark.parametrize("n,unit,why", [(1, 1, "no rows"), (16, 8, "no rows"),
                                        (24, 8, "no rows"), (20, 8, "does not split")])
def test_format_counts_refuse_a_batch_that_cannot_hold_the_mix(n, unit, why):
  with pytest.raises(ValueError, match=why):
    sft.format_counts((0.6, 0.2, 0.2), n, unit)


@pytest.mark.parametrize("shape,micro,procs,unit", [
    ({"data": 1, "fsdp": 1, "tensor": 1}, 1, 1, 1), ({"data": 2, "fsdp": 4, "tensor": 1}, 1, 1, 8),
    ({"data": 1, "fsdp": 2, "tensor": 4}, 3, 1, 6), ({"data": 2, "fsdp": 4, "tensor": 1}, 2, 2, 8)])
def test_bucket_unit_is_batch_sharding_devices_times_microbatches_per_process(
    shape, micro, procs, unit):
  mesh = type("Mesh", (), {"shape": shape})()
  assert sft.bucket_unit(mesh, micro, procs) == unit


def test_bucketed_batch_holds_each_format_at_its_own_width():
  c = common.sft(mix=(("student", 0.5), ("demo", 0.25), ("correct_solution", 0.25)))
  widths = sft.format_widths(TOK, TASK, RECORDS, c.mix)
  assert widths["student"] < widths["demo"]  # what the buckets save
  rows = RECORDS[:8]
  c.length_buckets = True
  batch = sft.sft_batch(c, TASK, TOK, rows, 3, [2], widths)
  names = [n for n, _ in c.mix]
  assert [b["tokens"].shape for b in batch["buckets"]] == [
      (k, widths[n]) for k, n in zip(sft.format_counts([p for _, p in c.mix], 8), names)]
  student = [TOK.decode(t[v]) for t, v in zip(batch["buckets"][0]["tokens"],
                                              batch["buckets"][0]["valid"])]
  assert all(s.startswith(TASK.student_text(TOK, r)) for s, r in zip(student, rows[:4]))
  for k, (name, lo) in enumerate((("demo", 4), ("correct_solution", 6)), 1):
    b = batch["buckets"][k]
    heads = [TASK.teacher_parts(TOK, r, contexts.get(name))[0] for r in rows[lo:lo + 2]]
    assert all(TOK.decode(t[v]).startswith(h) for t, v, h in zip(b["tokens"], b["valid"], heads))
  c.length_buckets = False
  plain = sft.sft_batch(c, TASK, TOK, rows, 3, [2], widths)
  assert plain["tokens"].shape == (8, max(widths.values()))


def _rows(rng, n, lo, hi, width):
  seqs, starts = [], []
  for _ in range(n):
    L = int(rng.integers(lo, hi + 1))
    seqs.append(list(rng.integers(3, TOK.vocab_size, L)))
    starts.append(int(rng.integers(1, L - 1)))
  tokens, valid = pad_right(seqs, width, TOK.pad_id)
  mask = valid & (np.arange(width)[None] >= np.asarray(starts)[:, None])
  return {"tokens": tokens, "valid": valid, "loss_mask": mask}


def test_bucketed_step_equals_the_padded_step():
  """The same rows as one padded batch (one microbatch) and as two buckets accumulated over two
  microbatches: the same loss, metrics and update."""
  rng = np.random.default_rng(0)
  short, long = _rows(rng, 6, 5, 8, 8), _rows(rng, 4, 9, 16, 16)
  padded = {k: np.concatenate([np.pad(short[k], ((0, 0), (0, 8))), long[k]]) for k in short}
  cfg = ModelConfig.tiny("qwen3", vocab_size=TOK.vocab_size)
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
  mesh = sharding.make_mesh((1, -1, 1))
  out = []
  for batch, microbatches in ((padded, 1), ({"buckets": (short, long)}, 2)):
    opt = optax.sgd(0.5)
    state, _ = born_sharded(mesh, opt, jax.tree.map(jnp.array, params), seed=0)
    step = jax.jit(make_sft_step(graphdef, opt, microbatches=microbatches))
    out.append(step(state, jax.tree.map(jnp.asarray, batch)))
  (a, ma), (b, mb) = out
  for k in ("train/loss", "train/token_accuracy", "train/num_tokens", "train/grad_norm"):
    np.testing.assert_allclose(mb[k], ma[k], rtol=2e-5, err_msg=k)
  for x, y in zip(jax.tree.leaves(b.params), jax.tree.leaves(a.params)):
    np.testing.assert_allclose(y, x, atol=2e-6)
  assert float(ma["train/num_tokens"]) == padded["loss_mask"][:, 1:].sum()


def test_the_sft_job_refuses_a_batch_that_cannot_hold_the_mix_before_training(tmp_path):
  from caopd_jax.jobs.validate import ConfigError  # pylint: disable=g-import-not-at-top
  c = common.sft(task=common.arithmetic_task(min_digits=2, max_digits=2, num_train=64,
                                             num_test=8, num_ood=4),
                 batch_size=2, steps=2, length_buckets=True)
  with pytest.raises(ConfigError, match="no rows"):
    sft.main(c, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "model").exists()
