"""Real data end to end on tiny local models (tests/real_env.py): the public eval rows through a
locally trained byte-level BPE with a Qwen-style chat template and tiny random HF Qwen3s.

Checked against independent references: prompts / teacher contexts against the whole string the
chat template renders; host verification against the task's verifier run here on the decoded
rollouts; spliced completions against the released code's regex replacement on text; the loss
against KL computed from the HF torch models' full logits.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from caopd_jax import calibration, contexts, tasks
from caopd_jax.jobs import opd
from caopd_jax.models import load_hf
from caopd_jax.opd import caopd as ops, prompts as opd_prompts, verify
from caopd_jax.opd.teachers import VocabularyMismatch, check_compatible, make_teacher
from caopd_jax.sampling import SampleOutput
from caopd_jax.tasks.chat import CONFIDENCE_LINE
from caopd_jax.tokenizers import load_tokenizer, pad_right
from configs.paper import common as paper, evaluate as evaluate_config, qwen3_science

import real_env  # pylint: disable=g-bad-import-order
from shared_eval import EVAL_DIR  # pylint: disable=g-bad-import-order

K = 4
TASKS = ("science", "tooluse")


def config(env, task, **overrides):
  """The paper config shrunk to the tiny models and 16 eval rows."""
  c = qwen3_science.get_config("size=0.6b")
  with c.unlocked():
    c.task = paper.task(task, manual_dir=EVAL_DIR, limit=16)
    c.train_split, c.data_dir, c.init_from, c.dtype = "eval", env["tfds"], env["student"], "float32"
    c.num_samples, c.prompts_per_step, c.steps = K, 2, 2  # (optim: cosine needs >= 2 steps)
    c.max_prompt_len, c.max_demo_len, c.chunk_size = 160, 64, 32
    c.sampling.max_new_tokens = 10
    c.eval.update(dict(limit=3, batch_size=3, max_prompt_len=160))
    c.eval.sampling.max_new_tokens = 8
    c.export_dtype = "float32"
    for k, v in overrides.items():
      c[k] = v
  return c


def released_splice(text, p_acc):
  """The released code's text replacement, cutting at the LAST marker (our documented choice)."""
  starts = [m.start() for m in re.finditer("confidence:", text, re.IGNORECASE)]
  base = (text[:starts[-1]] if starts else text).rstrip()
  return base + f"\nConfidence: {p_acc}"


def decode(tok, ids, valid):
  return tok.decode(np.asarray(ids)[np.asarray(valid)], skip_special=False)


def task_records(env, name):
  return env["sci"] if name == "science" else env["tool"]


# ---- prompts ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TASKS)
def test_student_prompt_and_constants_through_the_chat_template(real_env, name):
  tok = load_tokenizer(real_env["tok_dir"])
  task = tasks.get(paper.task(name))
  recs = task_records(real_env, name)[:3]
  text = task.student_text(tok, recs[0])
  assert text.startswith("<|im_") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
  assert "Confidence: your confidence level (0.0-1.0)" in text
  if name == "tooluse":  # before "Begin!", as released
    assert text.index(CONFIDENCE_LINE) < text.index("\n\nBegin!")
  ctx = contexts.get("demo")
  widths = opd_prompts.widths(tok, task, recs, ctx, max_prompt_len=4096)
  p = opd_prompts.encode(tok, task, recs, ctx, widths)
  for i, r in enumerate(recs):
    assert decode(tok, p["student_prompt"][i], p["student_valid"][i]) == task.student_text(tok, r)
  tail = ("\n\nNow answer with a response of your own, including the thinking process.\n"
          "<|im_end|>\n<|im_start|>assistant\n")
  consts = opd_prompts.constants(tok, task, ctx, recs, K)
  text = lambda seg: tok.decode(seg[0][0], skip_special=False)
  assert (text(consts.confidence_prefix), text(consts.tail)) == ("\nConfidence: ", tail)
  assert text(consts.note_post) == ". Output this exact value in the 'Confidence:' field."
  np.testing.assert_array_equal(p["row"], [r["id"] for r in recs])
  assert not p["truncated"].any()


def fake_samples(tok, texts, width=48):
  ids, mask = pad_right([tok.encode(s) + [tok.eos_id] for s in texts], width, tok.pad_id)
  z = jnp.zeros(ids.shape)
  return SampleOutput(jnp.asarray(ids), jnp.asarray(mask), z, z, jnp.asarray(mask.sum(-1)))


@pytest.mark.parametrize("name,context,caopd", [("science", "demo", True),
                                                ("tooluse", "correct_solution", True),
                                                ("science", "correct_solution", False)])
def test_batch_decodes_to_the_whole_string(real_env, name, context, caopd):
  """Hand-written rollouts (some correct): every assembled sequence decodes to the string the
  chat template renders; host verification and P_acc; spliced confidence parses to P_acc."""
  c = config(real_env, name, caopd=caopd, teacher_context=context)
  with c.unlocked():  # no truncation: whole strings are compared
    c.max_prompt_len, c.max_demo_len = 4096, 4096
    c.sampling.max_new_tokens = 96
  run = opd.setup(c, str(real_env["root"] / f"w_{name}_{context}"))
  tok, task, it = run.tokenizer, run.task, run.iteration
  recs = task_records(real_env, name)[:2]
  p = jax.tree.map(jnp.asarray, run.encode(recs))
  texts, golds = [], []
  for b, r in enumerate(recs):
    for k in range(K):
      right = k < 2 * b + 1  # prompt 0: 1 of 4 correct, prompt 1: 3 of 4
      if name == "science":
        letter = r["answer"] if right else "Z"
        texts.append(f"<reasoning>\nconfidence: fine\n</reasoning>\n<answer>\n{letter}\n</answer>"
                     f"{' ' if k % 2 else chr(10)}Confidence: 0.9{k}")
      else:
        g = r["golden_answer"][0]
        texts.append(f"Thought: call it\nAction: {g['Action'] if right else 'nope'}\nAction Input:"
                     f" {g['Action_Input']}\nconfidence:1")
      golds.append(task.gold(r))
  samples = fake_samples(tok, texts, width=96)
  verdict = jax.jit(it.verify)(p, samples)
  correct = np.asarray(verdict.correct)
  np.testing.assert_array_equal(correct.reshape(-1), [task.is_correct(s, g) for s, g in zip(texts, golds)])
  assert correct.sum(-1).tolist() == [1, 3]
  batch, metrics = jax.jit(it.batch)(p, samples, verdict)
  width = batch["completion_mask"].shape[1]
  ctx = contexts.get(context)
  for row in range(2 * K):
    b = row // K
    p_acc = ops.format_confidence(int(correct[b].sum()), K)
    comp = decode(tok, batch["student_tokens"][row, -width:], batch["completion_mask"][row])
    assert comp == (released_splice(texts[row], p_acc) if caopd else texts[row]) + "<|im_end|>"
    ok, conf = calibration.parse_confidence(comp)
    assert ok and (not caopd or abs(conf - correct[b].mean()) <= 0.005)
    assert decode(tok, batch["student_tokens"][row], batch["student_valid"][row]) == (
        task.student_text(tok, recs[b]) + comp)
    if context == "correct_solution":  # the first verified rollout's answer part
      first = b * K + int(np.argmax(correct[b]))
      solution = released_splice(texts[first], "x")[:-len("\nConfidence: x")]
    else:
      solution = task.solution_text(recs[b])
    teacher = decode(tok, batch["teacher_tokens"][row], batch["teacher_valid"][row])
    whole = opd_prompts.teacher_text(tok, task, recs[b], ctx, solution,
                                     p_acc if caopd else "1.00", note=caopd)
    assert teacher == whole + comp
    ids = np.asarray(batch["teacher_tokens"][row, :-width])[np.asarray(batch["teacher_valid"][row, :-width])]
    # Segments are tokenised separately: the ids may differ from encoding the whole string at
    # the boundaries (e.g. ">\n" in "</answer>\nConfidence"); the text never does.
    assert 0 <= len(ids) - len(tok.encode(whole)) <= (2 if caopd else 1)
  assert ("empirical confidence for this question is" in teacher) == caopd
  np.testing.assert_allclose(metrics["rollout/accuracy"], 4 / 8)
  np.testing.assert_allclose(metrics["rollout/marker_found"], 1.0)


def test_host_cut_handles_merged_and_non_canonical_markers(real_env):
  tok = load_tokenizer(real_env["tok_dir"])
  merged = [s for s in tok.hf.get_vocab() if s.endswith("Confidence") and len(s) > len("Confidence")]
  assert merged, "the tokenizer should merge the marker with a preceding character"
  texts = ["</answer>Confidence: 0.9", "x Confidence: 0.2 and Confidence: 0.7", "no marker \n",
           "é CONFIDENCE:1", "", "a\u00e9\u4e2d\nConfidence: 0.5 tail"]
  seqs = [tok.encode(s) + [tok.eos_id] for s in texts]
  # a sampled, non-canonical split of the marker
  seqs.append(tok.encode("<answer>\nB\n</answer>") + tok.encode("\nConf") + tok.encode("idence: 1"))
  texts.append("<answer>\nB\n</answer>\nConfidence: 1")
  ids, mask = pad_right(seqs, 32, tok.pad_id)
  answer, length, found, fallback, truncated = verify.host_answer(
      verify.token_bytes(tok), tok.encode, ids, mask, width=40)
  (suf, suf_len), _ = ops.confidence_tables(tok, K)
  k = np.arange(len(texts)) % (K + 1)
  spliced, valid = ops.splice(jnp.asarray(answer), jnp.asarray(length), suf, suf_len,
                              jnp.asarray(k), tok.pad_id)
  for i, s in enumerate(texts):
    got = decode(tok, spliced[i], valid[i])
    assert got == released_splice(s, ops.format_confidence(k[i], K)) + "<|im_end|>", (s, got)
    kept = np.asarray(ids[i][:length[i]])
    n_same = int(np.sum(np.cumprod(kept == answer[i][:len(kept)])))
    assert n_same >= len(kept) - 3  # the sampled ids are kept (up to the straddling token)
  assert found.tolist() == [True, True, False, True, False, True, True]
  assert not fallback.any() and not truncated.any()


# ---- one CaOPD step on sampled rollouts; separate teacher; vocabulary check ---------------
def reference_loss(batch, student_dir, teacher_dir):
  """KL(teacher || student) over the full vocabulary from the HF torch models on each row with its
  padding removed, first 3 completion tokens skipped, per-sequence token mean (numpy)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  models = [transformers.AutoModelForCausalLM.from_pretrained(d).float().eval()
            for d in (student_dir, teacher_dir)]
  per_seq = []
  for row in range(batch["completion_mask"].shape[0]):
    n = int(np.sum(batch["completion_mask"][row]))
    logp = []
    for model, key in zip(models, ("student", "teacher")):
      ids = np.asarray(batch[f"{key}_tokens"][row])[np.asarray(batch[f"{key}_valid"][row])]
      with torch.no_grad():
        logits = model(torch.tensor(ids[None], dtype=torch.long)).logits[0].double()
      logp.append(torch.log_softmax(logits[len(ids) - n - 1:len(ids) - 1], -1).numpy())
    kl = np.sum(np.exp(logp[1]) * (logp[1] - logp[0]), axis=-1)[3:]  # skip 3 completion tokens
    if kl.size:
      per_seq.append(kl.mean())
  return float(np.mean(per_seq))


def first_step(run):
  """The rollouts, verdict and batch of step 1 (the key the fused step uses), in two jits."""
  it, state = run.iteration, run.state
  p = jax.tree.map(jnp.asarray, run.get_batch(0))
  _, sub = jax.random.split(jax.random.wrap_key_data(state.rng))
  samples, verdict = jax.jit(it.rollout)(state, p, sub)
  batch, _ = jax.jit(it.batch)(p, samples, verdict)
  return p, samples, verdict, batch


def test_caopd_step_with_host_verification(real_env):
  """One CaOPD step on sampled rollouts (EMA self-teacher): every rollout verified on the host,
  P_acc spliced and parsed back, the loss against the torch reference, update, EMA."""
  run = opd.setup(config(real_env, "science"), str(real_env["root"] / "w_step"))
  p, samples, verdict, batch = first_step(run)
  tok, state = run.tokenizer, run.state
  texts = [tok.decode(np.asarray(samples.tokens[i])[np.asarray(samples.mask[i])])
           for i in range(samples.tokens.shape[0])]
  rows = np.repeat(np.asarray(p["row"]), K)
  golds = {r["id"]: r["answer"] for r in real_env["sci"]}
  correct = np.asarray(verdict.correct)
  np.testing.assert_array_equal(correct.reshape(-1),
                                [run.task.is_correct(s, golds[int(r)]) for s, r in zip(texts, rows)])
  width = batch["completion_mask"].shape[1]
  for row, text in enumerate(texts):
    p_acc = correct[row // K].mean()
    comp = decode(tok, batch["student_tokens"][row, -width:], batch["completion_mask"][row])
    assert comp == released_splice(text, ops.format_confidence(round(p_acc * K), K)) + "<|im_end|>"
    assert calibration.parse_confidence(comp) == (True, pytest.approx(p_acc, abs=0.005))
  ref = reference_loss(batch, real_env["student"], real_env["student"])  # EMA starts at the student
  new, metrics = jax.jit(run.iteration)(state, p)
  assert int(new.step) == 1 and ref > 0
  np.testing.assert_allclose(float(metrics["train/loss"]), ref, rtol=1e-3)
  np.testing.assert_allclose(float(metrics["rollout/accuracy"]), correct.mean())
  a = run.teacher.ema_alpha
  assert run.teacher.kind == "ema" and a == 0.01
  for t_new, t_old, s_new in zip(*map(jax.tree.leaves, (new.teacher, state.teacher, new.params))):
    np.testing.assert_allclose(np.asarray(t_new), (1 - a) * np.asarray(t_old) + a * np.asarray(s_new),
                               rtol=1e-6, atol=1e-7)


def test_vocabulary_mismatch_is_a_clear_error(real_env):
  tok = load_tokenizer(real_env["student"])
  graphdef, params = nnx.split(load_hf(real_env["student"]))
  with pytest.raises(VocabularyMismatch, match=r"(?s)vocabulary: .* ids differ.*same tokenizer"):
    make_teacher("fixed", graphdef, params, path=real_env["bad_teacher"], tokenizer=tok)
  other_eos = real_env_tokenizer_with_eos(real_env)
  with pytest.raises(VocabularyMismatch, match="eos token id"):
    check_compatible(tok, load_tokenizer(other_eos))
  with pytest.raises(VocabularyMismatch, match="output size"):
    check_compatible(tok, tok, 1024, 2048)
  check_compatible(tok, load_tokenizer(real_env["teacher"]), 1, 1)  # same tokenizer: fine


def real_env_tokenizer_with_eos(env, eos="<|endoftext|>"):
  return real_env.train_tokenizer(real_env.corpus(env["sci"][:50], env["tool"][:20]),
                                  str(env["root"] / "t3"), 1024, eos=eos)


# ---- evaluation harness; the job end to end with export --------------------------------------
def test_evaluate_job_on_both_eval_splits(real_env):
  from caopd_jax import jobs  # pylint: disable=g-import-not-at-top
  for name in TASKS:
    c = evaluate_config.get_config(f"task={name},limit=3")
    c.model, c.dtype, c.data_dir = real_env["student"], "float32", real_env["tfds"]
    c.task.manual_dir = EVAL_DIR
    c.eval.update(dict(batch_size=3, max_prompt_len=160))
    c.eval.sampling.max_new_tokens = 8
    out = str(real_env["root"] / "eval")
    result, _ = jobs.run(c, out)["eval"]
    for key in ("accuracy", "ece", "brier", "spr", "ocg", "auroc", "mean_confidence", "adherence"):
      assert 0.0 <= abs(result[key]) <= 1.0
    assert result["n"] == 3
    with open(os.path.join(out, "eval", "student_eval.json")) as f:
      saved = json.load(f)
    assert saved["n"] == 3 and saved["task"] == name
    with open(os.path.join(out, "eval", "student_eval_responses.jsonl")) as f:
      lines = [json.loads(x) for x in f]
    assert len(lines) == 3 and {"response", "correct", "confidence", "parsed", "gold"} <= set(lines[0])
    assert os.path.getsize(os.path.join(out, "eval", "student_eval_reliability.png")) > 1000


def test_opd_job_with_a_separate_teacher_exports_a_transformers_model(real_env):
  """The job end to end on tool use with a fixed teacher that is a different checkpoint (other
  width and depth, same tokenizer): fused steps (host verification through pure_callback) in
  train_loop, loss of the first step against the torch reference, export, evaluation."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  c = config(real_env, "tooluse", teacher_context="correct_solution")
  with c.unlocked():
    c.teacher.update(dict(kind="fixed", path=real_env["teacher"]))
  run = opd.setup(c, str(real_env["root"] / "w_job"))
  assert run.teacher.kind == "fixed" and run.teacher.ema_alpha == 0.0
  assert nnx.merge(run.teacher.graphdef, run.teacher.params).cfg.hidden_size == 48
  ref = reference_loss(first_step(run)[-1], real_env["student"], real_env["teacher"])
  workdir = str(real_env["root"] / "job")
  opd.main(c, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(x) for x in f]
  assert [m["step"] for m in logged] == [1, 2]
  np.testing.assert_allclose(logged[0]["train/loss"], ref, rtol=1e-3)
  assert {"rollout/accuracy", "rollout/marker_found", "rollout/solution_from_rollout"} <= set(logged[0])
  with open(os.path.join(workdir, "eval", "caopd_eval.json")) as f:
    assert json.load(f)["n"] == 3
  model_dir = os.path.join(workdir, "model")
  hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  ids = hf_tok("Action: getRandomAxolotlImage\nAction Input: {}\nConfidence: 0.5")["input_ids"]
  with torch.no_grad():
    want = hf(torch.tensor([ids])).logits.numpy()
  np.testing.assert_allclose(np.asarray(load_hf(model_dir)(jnp.asarray([ids]))), want, atol=2e-4)
  trained = jax.tree.leaves(nnx.state(load_hf(model_dir)))
  base = jax.tree.leaves(nnx.state(load_hf(real_env["student"])))
  assert any(not np.allclose(a, b) for a, b in zip(trained, base))  # training changed it


def test_paper_configs():
  c = qwen3_science.get_config("size=8b,kl=reverse,caopd=0,context=correct_solution,thinking=0")
  assert c.init_from.endswith("Qwen3-8B") and c.objective.name == "full_reverse" and not c.caopd
  assert (c.num_samples, c.prompts_per_step, c.epochs, c.optim.lr) == (8, 4, 1, 2e-5)
  assert c.objective.hparams.to_dict() == {"reduction": "sequence_mean", "skip_first": 3}
  assert dict(c.task.chat_template_kwargs) == {"enable_thinking": False} and len(c.mesh) == 3
  assert qwen3_science.get_config().objective.name == "full_forward"
  for bad, match in (("sise=8b", "valid"), ("caopd=ture", "boolean"), ("thinking=flase", "boolean"),
                     ("context=bogus", "valid values"), ("size=3b", "valid values")):
    with pytest.raises(ValueError, match=match):
      qwen3_science.get_config(bad)
  # memory plans per slice (docs/scaling.md): scanned + remat by default, more microbatches where
  # the planner needed them, an error naming where it fits (and the LoRA setting) otherwise
  c = qwen3_science.get_config("size=4b,hardware=v5e-16")
  assert (c.scan_layers, c.remat, c.microbatches) == (True, "full", 2)
  assert qwen3_science.get_config("size=8b,hardware=h100x8").microbatches == 1
  with pytest.raises(ValueError, match="fits on.*h100x8.*LoRA fits there.*microbatches=8"):
    qwen3_science.get_config("size=8b,hardware=v4-8")
