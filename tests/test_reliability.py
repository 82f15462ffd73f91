"""Runs that cannot silently go wrong (issue: divergence guard, config-changed reruns, workdir
lock, loud truncation, early validation, safe re-preparation, vocabulary checks), and the
properties earlier tests did not pin down: the importance weights' behaviour log-probs are the
sampler's truncated ones; the rollout RNG is restored on resume; the logged training metrics'
values against numpy."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from caopd_jax import contexts, data, jobs, tasks, workdir
from caopd_jax.jobs import opd, sft
from caopd_jax.logging_utils import MetricWriter, read_jsonl
from caopd_jax.models import ModelConfig, Transformer, save_hf
from caopd_jax.opd import prompts, verify
from caopd_jax.opd.iteration import Iteration
from caopd_jax.sampling import SamplingConfig
from caopd_jax.tokenizers import CharTokenizer, load_tokenizer
from caopd_jax.train import checkpoint
from caopd_jax.train.loop import Diverged, train_loop
from caopd_jax.train.step import init_state, make_opd_step, make_sft_step
from configs import common, smoke

import fast_xla  # pylint: disable=g-bad-import-order
import test_data  # pylint: disable=g-bad-import-order

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = tasks.get(common.arithmetic_task(pad_operands=False, answer_order="msb"))
TOK = TASK.new_tokenizer()


def strict_json(line):
  """json.loads that rejects NaN / Infinity (Python's json accepts them by default)."""
  return json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def run_py(*args, env=None):
  e = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=fast_xla.added_to(""), **(env or {}))
  return subprocess.run([sys.executable, os.path.join(_ROOT, "run.py"), *args], cwd=_ROOT, env=e,
                        capture_output=True, text=True, timeout=300)


# ---- 1. the divergence guard ----------------------------------------------------------------
def sft_problem(k_bad):
  """A tiny SFT step whose learning rate becomes inf at step index k_bad (params -> NaN)."""
  graphdef, params = nnx.split(Transformer(ModelConfig.tiny(vocab_size=TOK.vocab_size,
                                                            num_layers=1)))
  opt = optax.sgd(lambda s: jnp.where(s >= k_bad, jnp.inf, 1e-2))
  rs = np.random.RandomState(0)
  batch = {"tokens": rs.randint(3, TOK.vocab_size, (4, 8)).astype(np.int32),
           "valid": np.ones((4, 8), bool), "loss_mask": np.ones((4, 8), bool)}
  return graphdef, params, opt, batch


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_at_step_k_never_reaches_a_checkpoint(tmp_path, policy):
  graphdef, params, opt, batch = sft_problem(k_bad=5)
  step = make_sft_step(graphdef, opt, on_nonfinite=policy)
  loop = dict(workdir=str(tmp_path), step_fn=step, get_batch=lambda s: batch, total_steps=8,
              log_every=3, checkpoint_every=2, keep=5, desc="sft")
  if policy == "stop":
    with pytest.raises(Diverged, match=r"at step 6;.*last good checkpoint \(step 4\) is kept"):
      train_loop(state=init_state(params, opt), **loop)
  else:
    final = train_loop(state=init_state(params, opt), **loop)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(final.params))
  ck = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  steps = ck.steps()
  assert steps == ([2, 4] if policy == "stop" else [2, 4, 6, 8])
  restored, _ = ck.restore_latest(init_state(params, opt))
  ck.close()
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
  lines = [strict_json(line) for line in open(tmp_path / "metrics.jsonl")]  # valid JSON
  assert [m["step"] for m in lines] == ([3, 6] if policy == "stop" else [3, 6, 8])
  assert lines[1]["train/nonfinite"] > 0
  if policy == "skip":
    assert lines[1]["train/skipped"] == pytest.approx(1 / 3) and lines[2]["train/skipped"] == 1


def test_huge_learning_rate_in_a_job_stops_with_a_clear_error(tmp_path):
  """Weights near float32's max read as loss 0 / grad norm 0 without the parameter-norm check."""
  c = smoke.get_config("stage=base")
  c.update(dict(steps=6, log_every=6, checkpoint_every=2, data_dir=str(tmp_path / "tfds")))
  c.optim.update(dict(lr=1e30, grad_clip=0.0))
  with pytest.raises(Diverged, match="non-finite"):
    jobs.run(c, str(tmp_path / "base"))
  assert not os.path.exists(tmp_path / "base" / "model")


def test_metric_writer_truncates_on_resume(tmp_path):
  w = MetricWriter(str(tmp_path), tensorboard=False)
  for s in (1, 2, 3, 4):
    w.write(s, {"x": float(s), "y": float("nan") if s == 3 else 1.0})
  w.truncate(2)
  w.write(3, {"x": 30.0})
  w.close()
  lines = [strict_json(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [m["step"] for m in lines] == [1, 2, 3] and lines[2]["x"] == 30.0


# ---- 2. config-changed reruns; 3. the workdir lock; 9. short errors -----------------------------
def test_config_changed_rerun_exits_with_the_diff_and_leaves_the_workdir(tmp_path):
  wd = str(tmp_path / "w")
  base = ["--config=configs/smoke.py:stage=base", f"--workdir={wd}", "--config.steps=2",
          "--config.log_every=1", f"--config.data_dir={tmp_path / 'tfds'}"]
  c = smoke.get_config("stage=base")  # the run of `base`, made as run.py makes it
  c.update(dict(steps=2, log_every=1, data_dir=str(tmp_path / "tfds")))
  workdir.check_config(wd, c)
  jobs.run(c, wd)
  workdir.mark_complete(wd, c)
  files = lambda: {p: os.path.getmtime(os.path.join(dp, p)) for dp, _, fs in os.walk(wd)
                   for p in fs if p != workdir.LOCK}
  before = files()
  changed = run_py(*base, "--config.optim.lr=0.01")
  assert changed.returncode == 2
  assert "optim.lr: 0.003 -> 0.01" in changed.stderr and "--allow_config_change" in changed.stderr
  assert "Traceback" not in changed.stderr
  assert files() == before  # the workdir was left as it was
  ok = run_py(*base, "--config.optim.lr=0.01", "--config.log_every=2", "--allow_config_change")
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert [f for f in os.listdir(wd) if f.startswith("config.2")]  # the old record is kept
  # an unknown --config key: one line naming the flag and the close match
  bad = run_py(*base, "--config.optim.lrr=1")
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert "--config.optim.lrr is not a key of the config; did you mean --config.optim.lr?" in bad.stderr


def test_a_held_workdir_is_refused_naming_the_holder(tmp_path):
  with workdir.lock(str(tmp_path)):
    with pytest.raises(workdir.WorkdirLocked, match=f"in use by pid {os.getpid()} on host"):
      with workdir.lock(str(tmp_path)):
        pass
  with workdir.lock(str(tmp_path)):  # released: free again
    pass


def test_resumed_stage_with_a_changed_config_stops(tmp_path):
  c = smoke.get_config("stage=base")
  workdir.check_config(str(tmp_path), c)  # an interrupted run recorded its config
  c.steps = 5
  with pytest.raises(workdir.ConfigChanged, match="steps: 20 -> 5"):
    sft.main(c, str(tmp_path))
  workdir.check_config(str(tmp_path), c, allow_change=True)
  c.eval = common.evaluation()  # (a new eval block: volatile)
  c.log_every = 1
  workdir.check_config(str(tmp_path), c)


def test_stale_lock_is_taken_over(tmp_path, caplog):
  (tmp_path / workdir.LOCK).write_text("pid 999999 on host gone since 2026-01-01 00:00:00")
  with caplog.at_level("INFO"), workdir.lock(str(tmp_path)):
    assert f"pid {os.getpid()}" in (tmp_path / workdir.LOCK).read_text()
  assert any("pid 999999" in r.getMessage() for r in caplog.records)
  workdir.mark_complete(str(tmp_path), common.sft())
  workdir.mark_complete(str(tmp_path), common.sft())  # idempotent
  assert workdir.is_complete(str(tmp_path), common.sft())


def test_no_restorable_checkpoint_is_one_line(tmp_path):
  c = smoke.get_config("stage=base")
  c.update(dict(steps=2, checkpoint_every=1, data_dir=str(tmp_path / "tfds")))
  jobs.run(c, str(tmp_path / "w"))
  for p in (tmp_path / "w" / "checkpoints").rglob("*"):
    if p.is_file() and "/state/" in str(p):
      p.write_bytes(b"")
  os.remove(tmp_path / "w" / "model" / "config.json")
  r = run_py("--config=configs/smoke.py:stage=base", f"--workdir={tmp_path / 'w'}",
             "--config.steps=2", "--config.checkpoint_every=1",
             f"--config.data_dir={tmp_path / 'tfds'}")
  assert r.returncode == 2
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("Error: None of the checkpoints") and "Move the directory away" in last


# ---- 4. truncation is counted; drop instead -------------------------------------------------------
def test_truncation_is_counted_and_can_drop(tmp_path, caplog):
  records = [{"id": i, "question": "1" * n + "+2", "answer": "3"} for i, n in enumerate((1, 9, 2, 20))]
  ctx = contexts.get("demo")
  lengths = [len(TOK.encode(TASK.student_text(TOK, r))) for r in records]
  cap = sorted(lengths)[1]
  over = prompts.overlong(TOK, TASK, records, ctx, max_prompt_len=cap)
  heads = [len(TOK.encode(TASK.teacher_parts(TOK, r, ctx)[0])) for r in records]
  np.testing.assert_array_equal(over, [(s > cap) or (h > cap) for s, h in zip(lengths, heads)])
  w = prompts.widths(TOK, TASK, records, ctx, max_prompt_len=cap)
  p = prompts.encode(TOK, TASK, records, ctx, w)
  np.testing.assert_array_equal(p["truncated"], [(s > w["student"]) or (h > w["head"])
                                                 for s, h in zip(lengths, heads)])
  with caplog.at_level("INFO"):
    prompts.report_overlong(over, len(records), "t/train", "drop")
  assert any(f"{over.sum()} of 4 records" in r.getMessage() for r in caplog.records)
  # through the OPD iteration: the fraction reaches the step's metrics
  graphdef, params = nnx.split(Transformer(ModelConfig.tiny(vocab_size=TOK.vocab_size, num_layers=1)))
  sampling = SamplingConfig(max_new_tokens=4, stop_ids=(TOK.eos_id,))
  it = Iteration(graphdef, graphdef, make_opd_step(graphdef, graphdef, optax.sgd(0.0),
                                                   objective="full_forward"),
                 verify.make(TASK, TOK, records, num_samples=2, width=4), ctx,
                 prompts.constants(TOK, TASK, ctx, records, 2), 2, sampling)
  _, metrics = jax.jit(it)(init_state(params, optax.sgd(0.0), teacher=params),
                           jax.tree.map(jnp.asarray, p))
  np.testing.assert_allclose(metrics["data/truncated_prompts"], np.mean(p["truncated"]))


# ---- 5. a prepared dataset survives a corrupt new source ------------------------------------------
def test_prepared_copy_survives_a_corrupt_new_source(tmp_path, monkeypatch):
  monkeypatch.delenv(data.DATA_ENV, raising=False)
  root, dd = tmp_path / "science_data", str(tmp_path / "tfds")
  test_data._write_hf(str(root / "eval_data"), [test_data._sci_row("q1", "B")])
  assert [r["answer"] for r in data.get_source("science", "eval", dd, manual_dir=str(root))] == ["B"]
  f = test_data._write_hf(str(root / "eval_data"), [test_data._sci_row("q1", "B"),
                                                    test_data._sci_row("q2", "C")])
  with open(f, "wb") as fh:  # the new source is corrupt
    fh.write(b"not arrow" * 20)
  with pytest.raises(data.DataFormatError):
    data.get_source("science", "eval", dd, manual_dir=str(root))
  assert [r["answer"] for r in data.get_source("science", "eval", dd)] == ["B"]  # still there
  test_data._write_hf(str(root / "eval_data"), [test_data._sci_row("q1", "B"),
                                                test_data._sci_row("q2", "C")])
  assert len(data.get_source("science", "eval", dd, manual_dir=str(root))) == 2  # swapped in
  assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


# ---- 6. tokenizer / model checks; 7. steps; 8. config validation ---------------------------------
def test_tokenizer_checks(tmp_path):
  tok = CharTokenizer()
  small = ModelConfig.tiny(vocab_size=tok.vocab_size - 10, num_layers=1)
  save_hf(Transformer(small), str(tmp_path / "m"), tokenizer=tok)
  c = common.opd(init_from=str(tmp_path / "m"), data_dir=str(tmp_path / "tfds"))
  c.task.update(dict(num_train=20, num_test=4, num_ood=2))
  with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model .* has only"):
    opd.setup(c, str(tmp_path / "w"))
  save_hf(Transformer(small), str(tmp_path / "bare"))  # no tokenizer files
  with pytest.raises(FileNotFoundError, match="no tokenizer files"):
    load_tokenizer(str(tmp_path / "bare"))


@pytest.mark.parametrize("change, match", [
    (("base", "steps", 0), "base.steps=0: must be >= 1"),
    (("opd", "steps", -3), "opd.steps=-3"),
    (("caopd", "teacher_context", "bogus"), "bogus"),
    (("opd", "mesh", (3, 1, 1)), "mesh"),
    (("base", "mix", (("student", 1.0), ("nope", 1.0))), "nope"),
    (("caopd", "objective", common.C(dict(name="reverse_kl", hparams=common.C()))), "reverse_kl.*valid"),
    (("caopd", "num_samples", 16), r"caopd.num_samples=16: .* K=8 grid \(config.base.num_samples\)"),
])
def test_pipeline_config_is_validated_up_front(change, match):
  c = smoke.get_config()
  stage, key, value = change
  c[stage][key] = value
  with pytest.raises(jobs.ConfigError, match=match):
    jobs.validate(c)


# ---- 11. properties earlier tests left open -------------------------------------------------------
def iteration_setup(top_p=1.0, k=3):
  records = [{"id": 0, "question": "12+7", "answer": "19"}, {"id": 1, "question": "45+68", "answer": "113"}]
  ctx = contexts.get("demo")
  graphdef, params = nnx.split(Transformer(ModelConfig.tiny(vocab_size=TOK.vocab_size,
                                                            num_layers=1), rngs=nnx.Rngs(2)))
  sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=top_p,
                            stop_ids=(TOK.eos_id,), pad_id=TOK.pad_id)
  it = Iteration(graphdef, graphdef, None, verify.make(TASK, TOK, records, num_samples=k, width=6),
                 ctx, prompts.constants(TOK, TASK, ctx, records, k), k, sampling)
  p = prompts.encode(TOK, TASK, records, ctx, prompts.widths(TOK, TASK, records, ctx))
  return it, jax.tree.map(jnp.asarray, p), params


def test_behaviour_logprobs_are_the_samplers_truncated_ones():
  it, p, params = iteration_setup(top_p=0.6)
  state = init_state(params, optax.sgd(0.0), teacher=params)

  @jax.jit
  def go(state, p, key):
    samples, verdict = it.rollout(state, p, key)
    return samples, it.batch(p, samples, verdict)[0]

  samples, batch = go(state, p, jax.random.key(3))
  c = samples.tokens.shape[1]
  m = np.asarray(samples.mask)
  mu, pi = np.asarray(samples.logprobs), np.asarray(samples.policy_logprobs)
  np.testing.assert_array_equal(np.asarray(batch["behavior_logprobs"])[:, :c], mu)
  assert np.all(mu[m] >= pi[m] - 1e-6) and np.any(mu[m] > pi[m] + 1e-3)  # truncated: mu >= pi


def test_rollout_rng_is_restored_on_resume(tmp_path):
  """An OPD stage interrupted after step 2 and resumed ends bitwise where an uninterrupted run
  does (the rollouts of step 3 depend on state.rng), and logs each step once."""
  it_parts = iteration_setup()
  it, p, params = it_parts
  opt = optax.adam(1e-2)
  it = Iteration(it.graphdef, it.teacher_graphdef,
                 make_opd_step(it.graphdef, it.graphdef, opt, objective="full_reverse"),
                 it.verify, it.context, it.consts, it.num_samples, it.sampling)
  host = jax.tree.map(np.asarray, p)

  def run(wd, fail_at=None):
    def get_batch(step):
      if step == fail_at:
        raise KeyboardInterrupt
      return host
    fresh = jax.tree.map(jnp.copy, params)  # the loop donates the state it is given
    return train_loop(workdir=str(wd), state=init_state(fresh, opt, teacher=fresh, seed=4),
                      step_fn=it, get_batch=get_batch, total_steps=4, log_every=1,
                      checkpoint_every=2, desc="opd")

  straight = run(tmp_path / "a")
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path / "b", fail_at=3)  # steps 1-3 logged, checkpoint at 2
  resumed = run(tmp_path / "b")
  for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert [m["step"] for m in read_jsonl(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_logged_metric_values_against_numpy():
  """train/kl_forward, kl_reverse, log_ratio and advantage under the effective mask (skip_first and
  a special token masked at its first occurrence) against float64 numpy on the full logits."""
  V, B, P, C = TOK.vocab_size, 3, 4, 6
  graphdef, params = nnx.split(Transformer(ModelConfig.tiny(vocab_size=V, num_layers=1)))
  tparams = jax.tree.map(lambda x: 1.3 * x, params)
  rs = np.random.RandomState(1)
  comp = rs.randint(3, V, (B, C))
  special = int(comp[0, 3])
  mask = np.ones((B, C), bool)
  mask[2, 4:] = False
  tokens = np.concatenate([rs.randint(3, V, (B, P)), comp], 1).astype(np.int32)
  batch = {"student_tokens": tokens, "student_valid": np.ones_like(tokens, bool),
           "teacher_tokens": tokens, "teacher_valid": np.ones_like(tokens, bool),
           "completion_mask": mask}
  hp = {"skip_first": 1, "special_token_ids": (special,)}
  opt = optax.sgd(0.0)
  metrics = {}
  for name in ("mix", "token_sampled"):
    step = jax.jit(make_opd_step(graphdef, graphdef, opt, objective=name, hparams=hp, chunk_size=4))
    _, m = step(init_state(params, opt, teacher=tparams), jax.tree.map(jnp.asarray, batch))
    metrics[name] = jax.device_get(m)
  forward = jax.jit(lambda ps: nnx.merge(graphdef, ps)(jnp.asarray(tokens)))
  logits = lambda ps: np.asarray(forward(ps), np.float64)[:, P - 1:-1]
  ls = lambda x: x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
  lp, lq = ls(logits(params)), ls(logits(tparams))
  eff = mask.copy()
  for b in range(B):
    valid = np.flatnonzero(mask[b])
    eff[b, valid[:1]] = False  # skip_first=1
    hits = [t for t in valid if comp[b, t] == special]
    if hits:
      eff[b, hits[0]] = False
  rev = (np.exp(lp) * (lp - lq)).sum(-1)
  fwd = (np.exp(lq) * (lq - lp)).sum(-1)
  ratio = np.take_along_axis(lp - lq, comp[..., None], -1)[..., 0]
  mean = lambda x: x[eff].mean()
  for name, m in metrics.items():
    np.testing.assert_allclose(m["train/kl_reverse"], mean(rev), rtol=2e-4)
    np.testing.assert_allclose(m["train/log_ratio"], mean(ratio), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(m["train/num_tokens"], eff.sum())
  np.testing.assert_allclose(metrics["mix"]["train/kl_forward"], mean(fwd), rtol=2e-4)
  np.testing.assert_allclose(metrics["token_sampled"]["train/advantage"], mean(-ratio), rtol=2e-4,
                             atol=1e-6)
