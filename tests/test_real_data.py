"""Real data end to end on tiny local models: the public eval rows (science MCQ, tool use) through
a locally trained byte-level BPE with a Qwen-style chat template and tiny random HF Qwen3
checkpoints (no hub access).

Checked against independent references: prompts/teacher contexts against the whole string the
chat template renders; host verification against `verifiers` run here on the decoded rollouts;
the spliced completions against the released code's regex replacement on text (cut at the last
marker); the separate-teacher loss against the unchunked objective on both models' full logits.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from caopd_jax import caopd as ops
from caopd_jax import calibration, chat_prompts, data, verifiers
from caopd_jax.jobs import evaluate, real_opd
from caopd_jax.models import load_hf
from caopd_jax.sampling import SampleOutput
from caopd_jax.teachers import VocabularyMismatch, check_compatible, make_teacher
from caopd_jax.tokenizers import load_tokenizer, pad_right
from configs.paper import common, evaluate as evaluate_config, qwen3_science

from shared_eval import EVAL_DIR, FOUND, REASON  # pylint: disable=g-bad-import-order

pytestmark = pytest.mark.skipif(not FOUND, reason=REASON)

QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
K = 4


# ---- fixtures: data, a Qwen-style BPE, tiny Qwen3 checkpoints -------------------------------
def _records(tfds_dir, task):
  return list(data.get_source(task, "eval", tfds_dir, manual_dir=EVAL_DIR))


def _train_tokenizer(texts, path, vocab_size, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                     eos="<|im_end|>"):
  import tokenizers
  import transformers
  from tokenizers import pre_tokenizers
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(QWEN_PATTERN), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  bpe.decoder = tokenizers.decoders.ByteLevel()
  bpe.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos,
                                              pad_token="<|endoftext|>")
  fast.chat_template = CHAT_TEMPLATE
  fast.save_pretrained(path)
  return path


def _corpus(sci, tool):
  texts = []
  for i, r in enumerate(sci):
    texts += [m["content"] for m in r["messages"]]
    texts.append(f"<reasoning>\nThe product needs it.\n</reasoning>\n<answer>\n{r['answer']}\n"
                 f"</answer>{'' if i % 2 else chr(10)}Confidence: 0.{i % 10}")
  for r in tool:
    texts.append(r["prompt"])
    g = r["golden_answer"][0]
    texts.append(f"Thought: I should call it.\nAction: {g['Action']}\nAction Input: "
                 f"{g['Action_Input']}\nConfidence: 0.88")
  return texts + [chat_prompts.CONFIDENCE_LINE, "This is an example for a response to the question"]


def _save_qwen3(path, vocab_size, seed, hidden=32, layers=1, tokenizer_dir=None):
  import torch
  import transformers
  cfg = transformers.AutoConfig.for_model(
      "qwen3", vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
      max_position_embeddings=4096, tie_word_embeddings=False)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
  model.save_pretrained(path)
  if tokenizer_dir:
    transformers.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("real")
  tfds_dir = str(root / "tfds")
  sci, tool = _records(tfds_dir, "science"), _records(tfds_dir, "tooluse")
  corpus = _corpus(sci, tool)
  tok_dir = _train_tokenizer(corpus, str(root / "tok"), 1024)
  n = len(load_tokenizer(tok_dir).hf)
  e = dict(root=root, tfds=tfds_dir, sci=sci, tool=tool, tok_dir=tok_dir)
  e["student"] = _save_qwen3(str(root / "student"), n, 0, tokenizer_dir=tok_dir)
  e["teacher"] = _save_qwen3(str(root / "teacher"), n, 1, hidden=48, layers=2, tokenizer_dir=tok_dir)
  bad_tok = _train_tokenizer(corpus[::2], str(root / "bad_tok"), 900)
  e["bad_teacher"] = _save_qwen3(str(root / "bad_teacher"), n, 2, tokenizer_dir=bad_tok)
  return e


def _config(env, task, **overrides):
  c = qwen3_science.get_config("size=0.6b")
  with c.unlocked():
    c.task = task
    c.init_from = env["student"]
    c.data.update(dict(split="eval", data_dir=env["tfds"], manual_dir=EVAL_DIR, limit=16))
    c.dtype = "float32"
    c.num_samples, c.prompts_per_step, c.steps = K, 2, 2  # (optim: cosine needs >= 2 steps)
    c.max_prompt_len, c.max_demo_len, c.max_completion_len = 160, 64, 10
    c.chunk_size = 32
    c.eval.update(dict(task=task, limit=3, batch_size=3, max_new_tokens=8, max_prompt_len=160,
                       dtype="float32"))
    c.eval.data.update(dict(manual_dir=EVAL_DIR, data_dir=env["tfds"]))
    c.export_dtype = "float32"
    for k, v in overrides.items():
      c[k] = v
  return c


def _released_splice(text, p_acc):
  """The released code's text replacement, cutting at the LAST marker (our documented choice)."""
  starts = [m.start() for m in re.finditer("confidence:", text, re.IGNORECASE)]
  base = (text[:starts[-1]] if starts else text).rstrip()
  return base + f"\nConfidence: {p_acc}"


def _decode(tok, ids, valid):
  return tok.decode(np.asarray(ids)[np.asarray(valid)], skip_special=False)


# ---- prompts ------------------------------------------------------------------------------
@pytest.mark.parametrize("task", chat_prompts.TASKS)
def test_student_prompt_and_constants_through_the_chat_template(env, task):
  tok = load_tokenizer(env["tok_dir"])
  t = chat_prompts.ChatTemplates()
  recs = (env["sci"] if task == "science" else env["tool"])[:3]
  text = chat_prompts.student_text(tok, t, recs[0], task)
  assert text.startswith("<|im_") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
  assert "Confidence: your confidence level (0.0-1.0)" in text
  if task == "tooluse":  # before "Begin!", as released
    assert text.index(chat_prompts.CONFIDENCE_LINE) < text.index("\n\nBegin!")
  widths = chat_prompts.chat_widths(tok, t, recs, task, "demo", max_prompt_len=4096)
  p = chat_prompts.encode_chat_prompts(tok, t, recs, task, "demo", widths)
  for i, r in enumerate(recs):
    assert _decode(tok, p["student_prompt"][i], p["student_valid"][i]) == (
        chat_prompts.student_text(tok, t, r, task))
  tail = ("Now answer with a response of your own, including the thinking process.\n"
          "<|im_end|>\n<|im_start|>assistant\n")
  text = lambda seg: tok.decode(seg[0][0], skip_special=False)
  opd = chat_prompts.encode_chat_constants(tok, t, recs, task, "demo", note=False)
  assert (text(opd["confidence_prefix"]), text(opd["tail"])) == ("\nConfidence: ", "\n\n" + tail)
  caopd = chat_prompts.encode_chat_constants(tok, t, recs, task, "demo", note=True)
  assert text(caopd["note_post"]) + text(caopd["tail"]) == (
      ". Output this exact value in the 'Confidence:' field.\n\n" + tail)
  np.testing.assert_array_equal(p["row"], [r["id"] for r in recs])


def _fake_samples(tok, texts, width=48):
  ids, mask = pad_right([tok.encode(s) + [tok.eos_id] for s in texts], width, tok.pad_id)
  z = jnp.zeros(ids.shape)
  return SampleOutput(jnp.asarray(ids), jnp.asarray(mask), z, z, jnp.asarray(mask.sum(-1)))


@pytest.mark.parametrize("task,mode,caopd", [("science", "demo", True),
                                             ("tooluse", "correct_solution", True),
                                             ("science", "correct_solution", False)])
def test_batch_decodes_to_the_whole_string(env, task, mode, caopd):
  """Hand-written rollouts (some correct): every assembled sequence decodes to the string the
  chat template renders; host verification and P_acc; spliced confidence parses to P_acc."""
  c = _config(env, task, caopd=caopd, teacher_context=mode)
  with c.unlocked():  # no truncation: whole strings are compared
    c.max_completion_len, c.max_prompt_len, c.max_demo_len = 96, 4096, 4096
  run = real_opd.setup(c, str(env["root"] / f"w_{task}_{mode}"))
  tok, t, it = run["tokenizer"], run["templates"], run["iteration"]
  recs = (env["sci"] if task == "science" else env["tool"])[:2]
  prompts = chat_prompts.encode_chat_prompts(tok, t, recs, task, mode, run["widths"])
  texts, golds = [], []
  for b, r in enumerate(recs):
    for k in range(K):
      right = k < 2 * b + 1  # prompt 0: 1 of 4 correct, prompt 1: 3 of 4
      if task == "science":
        letter = r["answer"] if right else "Z"
        texts.append(f"<reasoning>\nconfidence: fine\n</reasoning>\n<answer>\n{letter}\n</answer>"
                     f"{' ' if k % 2 else chr(10)}Confidence: 0.9{k}")
      else:
        g = r["golden_answer"][0]
        texts.append(f"Thought: call it\nAction: {g['Action'] if right else 'nope'}\nAction Input:"
                     f" {g['Action_Input']}\nconfidence:1")
      golds.append(chat_prompts.gold(r, task))
  samples = _fake_samples(tok, texts, width=96)
  correct, edits = it.verify(prompts, samples)
  want = [verifiers.mcq_correct(s, g) if task == "science" else verifiers.tooluse_correct(s, g)
          for s, g in zip(texts, golds)]
  np.testing.assert_array_equal(correct.reshape(-1), want)
  assert correct.sum(-1).tolist() == [1, 3]
  batch, metrics = it.build_batch(jax.tree.map(jnp.asarray, prompts), samples,
                                  jnp.asarray(correct), jax.tree.map(jnp.asarray, edits))
  width = batch["completion_mask"].shape[1]
  boundary_diffs = 0
  for row in range(2 * K):
    b = row // K
    p_acc = ops.format_confidence(int(correct[b].sum()), K)
    comp = _decode(tok, batch["student_tokens"][row, -width:], batch["completion_mask"][row])
    expect = (_released_splice(texts[row], p_acc) if caopd else texts[row]) + "<|im_end|>"
    assert comp == expect
    ok, conf = calibration.parse_confidence(comp)
    assert ok and (not caopd or abs(conf - correct[b].mean()) <= 0.005)
    student = _decode(tok, batch["student_tokens"][row], batch["student_valid"][row])
    assert student == chat_prompts.student_text(tok, t, recs[b], task) + comp
    if mode == "correct_solution":  # first verified rollout's answer part
      first = b * K + int(np.argmax(correct[b]))
      solution = _released_splice(texts[first], "x")[:-len("\nConfidence: x")]
    else:
      solution = chat_prompts.demo_text(t, recs[b], task)
    teacher = _decode(tok, batch["teacher_tokens"][row], batch["teacher_valid"][row])
    whole = chat_prompts.teacher_text(tok, t, recs[b], task, mode, solution,
                                      p_acc if caopd else "1.00", note=caopd)
    assert teacher == whole + comp
    ctx = np.asarray(batch["teacher_tokens"][row, :-width])
    ctx = ctx[np.asarray(batch["teacher_valid"][row, :-width])]
    whole_ids = tok.encode(whole)
    boundary_diffs += ctx.tolist() != whole_ids
    assert 0 <= len(ctx) - len(whole_ids) <= 1  # one boundary (demo -> "\nConfidence: ")
  assert ("empirical confidence for this question is" in teacher) == caopd
  # Segments are tokenised separately: ids may differ from encoding the whole string at the
  # segment boundaries (e.g. ">\n" in "</answer>\nConfidence"), the text never does.
  print(f"{task}/{mode}: {boundary_diffs} of {2 * K} teacher contexts tokenise differently")
  np.testing.assert_allclose(metrics["rollout/accuracy"], 4 / 8)
  np.testing.assert_allclose(metrics["rollout/marker_found"], 1.0)


def test_host_cut_handles_merged_and_non_canonical_markers(env):
  tok = load_tokenizer(env["tok_dir"])
  vocab = tok.hf.get_vocab()
  merged = [s for s in vocab if s.endswith("Confidence") and len(s) > len("Confidence")]
  assert merged, "the tokenizer should merge the marker with a preceding character"
  texts = ["</answer>Confidence: 0.9", "x Confidence: 0.2 and Confidence: 0.7", "no marker \n",
           "é CONFIDENCE:1", "", "a\u00e9\u4e2d\nConfidence: 0.5 tail"]
  seqs = [tok.encode(s) + [tok.eos_id] for s in texts]
  conf = tok.encode("Confidence")  # a sampled, non-canonical split of the marker
  seqs.append(tok.encode("<answer>\nB\n</answer>") + tok.encode("\nConf") + tok.encode("idence: 1"))
  texts.append("<answer>\nB\n</answer>\nConfidence: 1")
  assert len(conf) >= 1
  ids, mask = pad_right(seqs, 32, tok.pad_id)
  (suf, suf_len), _ = ops.confidence_tables(tok, K)
  k = np.arange(len(texts)) % (K + 1)
  out = ops.host_replace_completion(ops.token_bytes(tok), tok.encode, ids, mask, k, suf, suf_len,
                                    width=40, pad_id=tok.pad_id)
  for i, s in enumerate(texts):
    got = _decode(tok, out.tokens[i], out.valid[i])
    assert got == _released_splice(s, ops.format_confidence(k[i], K)) + "<|im_end|>", (s, got)
    kept = np.asarray(ids[i][:out.answer_len[i]])
    n_same = int(np.sum(np.cumprod(kept == np.asarray(out.tokens[i][:len(kept)]))))
    assert n_same >= len(kept) - 3  # the sampled ids are kept (up to the straddling token)
  assert out.found.tolist() == [True, True, False, True, False, True, True]
  assert not out.fallback.any() and not out.truncated.any()


# ---- one CaOPD step on sampled rollouts; separate teacher; vocabulary check ---------------
def _reference_loss(batch, student_dir, teacher_dir):
  """KL(teacher || student) over the full vocabulary from the HF torch models on each row with its
  padding removed, first 3 completion tokens skipped, per-sequence token mean (numpy)."""
  import torch
  import transformers
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


def _two_phase(run):
  """Rollouts with the key the fused step will use, host verification, the batch (eagerly)."""
  it, state = run["iteration"], run["state"]
  prompts = jax.tree.map(jnp.asarray, run["get_batch"](0))
  _, sub = jax.random.split(jax.random.wrap_key_data(state.rng))
  samples = it.sample(state, prompts, sub)
  correct, edits = it.verify(prompts, samples)
  batch, _ = it.build_batch(prompts, samples, jnp.asarray(correct), jax.tree.map(jnp.asarray, edits))
  return prompts, samples, correct, edits, batch


def _science_step(env):
  """setup + two phases + reference loss of the science CaOPD config (computed once)."""
  if "science_step" not in env:
    run = real_opd.setup(_config(env, "science"), str(env["root"] / "w_step"))
    out = _two_phase(run)
    # the EMA teacher starts as a copy of the student
    env["science_step"] = (run, out, _reference_loss(out[-1], env["student"], env["student"]))
  return env["science_step"]


def test_caopd_step_with_host_verification(env):
  """One CaOPD step on sampled rollouts (EMA self-teacher): every rollout verified on the host,
  P_acc spliced and parsed back, teacher scoring against the unchunked reference, update, EMA.
  (The fused step, host code through pure_callback, and a separate teacher: the job test.)"""
  run, (prompts, samples, correct, edits, batch), ref = _science_step(env)
  tok, it, state = run["tokenizer"], run["iteration"], run["state"]
  texts = [tok.decode(np.asarray(samples.tokens[i])[np.asarray(samples.mask[i])])
           for i in range(samples.tokens.shape[0])]
  rows = np.repeat(np.asarray(prompts["row"]), K)
  golds = {r["id"]: r["answer"] for r in env["sci"]}
  np.testing.assert_array_equal(correct.reshape(-1),
                                [verifiers.mcq_correct(s, golds[int(r)]) for s, r in zip(texts, rows)])
  width = batch["completion_mask"].shape[1]
  for row, text in enumerate(texts):
    p_acc = correct[row // K].mean()
    comp = _decode(tok, batch["student_tokens"][row, -width:], batch["completion_mask"][row])
    assert comp == _released_splice(text, ops.format_confidence(round(p_acc * K), K)) + "<|im_end|>"
    assert calibration.parse_confidence(comp) == (True, pytest.approx(p_acc, abs=0.005))
  new, metrics = jax.jit(it.update)(state, prompts, samples, jnp.asarray(correct),
                                    jax.tree.map(jnp.asarray, edits))
  assert int(new.step) == 1 and ref > 0
  np.testing.assert_allclose(float(metrics["train/loss"]), ref, rtol=1e-3)
  np.testing.assert_allclose(float(metrics["rollout/accuracy"]), correct.mean())
  a = run["teacher"].ema_alpha
  assert run["teacher"].kind == "ema" and a == 0.01
  for t_new, t_old, s_new in zip(*map(jax.tree.leaves, (new.teacher, state.teacher, new.params))):
    np.testing.assert_allclose(np.asarray(t_new), (1 - a) * np.asarray(t_old) + a * np.asarray(s_new),
                               rtol=1e-6, atol=1e-7)


def test_vocabulary_mismatch_is_a_clear_error(env):
  tok = load_tokenizer(env["student"])
  graphdef, params = nnx.split(load_hf(env["student"]))
  with pytest.raises(VocabularyMismatch, match=r"(?s)vocabulary: .* ids differ.*same tokenizer"):
    make_teacher("fixed", graphdef, params, path=env["bad_teacher"], tokenizer=tok)
  other_eos = _train_tokenizer(_corpus(env["sci"][:50], env["tool"][:20]), str(env["root"] / "t3"),
                               1024, eos="<|endoftext|>")
  with pytest.raises(VocabularyMismatch, match="eos token id"):
    check_compatible(tok, load_tokenizer(other_eos))
  with pytest.raises(VocabularyMismatch, match="output size"):
    check_compatible(tok, tok, 1024, 2048)
  check_compatible(tok, load_tokenizer(env["teacher"]), 1, 1)  # same tokenizer: fine


# ---- evaluation harness; the job end to end with export --------------------------------------
def test_evaluate_job_on_both_eval_splits(env):
  from caopd_jax import jobs
  for task in chat_prompts.TASKS:
    c = evaluate_config.get_config(f"task={task},limit=3")
    c.model, c.batch_size, c.max_new_tokens, c.max_prompt_len = env["student"], 3, 8, 160
    c.dtype = "float32"
    c.data.update(dict(manual_dir=EVAL_DIR, data_dir=env["tfds"]))
    out = str(env["root"] / "eval")
    result = jobs.run(c, out)
    for key in ("accuracy", "ece", "brier", "spr", "ocg", "auroc", "mean_confidence", "adherence"):
      assert 0.0 <= abs(result[key]) <= 1.0
    assert result["n"] == 3
    with open(os.path.join(out, f"{task}_eval.json")) as f:
      assert json.load(f)["n"] == 3
    with open(os.path.join(out, f"{task}_eval_responses.jsonl")) as f:
      lines = [json.loads(x) for x in f]
    assert len(lines) == 3 and {"response", "correct", "confidence", "parsed", "gold"} <= set(lines[0])
    assert os.path.getsize(os.path.join(out, f"{task}_eval_reliability.png")) > 1000


def _tooluse_teacher_config(env):
  c = _config(env, "tooluse", teacher_context="correct_solution")
  with c.unlocked():
    c.teacher.update(dict(kind="fixed", path=env["teacher"]))
  return c


def test_real_opd_job_with_a_separate_teacher_exports_a_transformers_model(env):
  """The job end to end on tool use with a fixed teacher that is a different checkpoint (other
  width and depth, same tokenizer): fused steps (host verification through pure_callback) in
  train_loop, loss of the first step against the torch reference, export, evaluation."""
  import torch
  import transformers
  c = _tooluse_teacher_config(env)
  run = real_opd.setup(c, str(env["root"] / "w_job"))
  teacher = run["teacher"]
  assert teacher.kind == "fixed" and teacher.ema_alpha == 0.0
  assert nnx.merge(teacher.graphdef, teacher.params).cfg.hidden_size == 48
  ref = _reference_loss(_two_phase(run)[-1], env["student"], env["teacher"])  # same key as step 1
  workdir = str(env["root"] / "job")
  result = real_opd.main(c, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(x) for x in f]
  assert [m["step"] for m in logged] == [1, 2]
  np.testing.assert_allclose(logged[0]["train/loss"], ref, rtol=1e-3)
  assert {"rollout/accuracy", "rollout/marker_found", "rollout/solution_from_rollout"} <= set(logged[0])
  assert result["n"] == 3 and os.path.exists(os.path.join(workdir, "eval", "tooluse_eval.json"))
  model_dir = os.path.join(workdir, "model")
  hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  ids = hf_tok("Action: getRandomAxolotlImage\nAction Input: {}\nConfidence: 0.5")["input_ids"]
  with torch.no_grad():
    want = hf(torch.tensor([ids])).logits.numpy()
  ours = load_hf(model_dir)(jnp.asarray([ids]))
  np.testing.assert_allclose(np.asarray(ours), want, atol=2e-4)
  trained = jax.tree.leaves(nnx.state(load_hf(model_dir)))
  base = jax.tree.leaves(nnx.state(load_hf(env["student"])))
  assert any(not np.allclose(a, b) for a, b in zip(trained, base))  # training changed it


def test_paper_configs():
  c = qwen3_science.get_config("size=8b,kl=reverse,caopd=0,context=correct_solution,thinking=0")
  assert c.init_from.endswith("Qwen3-8B") and c.objective.name == "full_reverse" and not c.caopd
  assert (c.num_samples, c.prompts_per_step, c.epochs, c.optim.lr) == (8, 4, 1, 2e-5)
  assert c.objective.hparams.to_dict() == {"reduction": "sequence_mean", "skip_first": 3}
  assert dict(c.chat_template_kwargs) == {"enable_thinking": False} and len(c.mesh) == 3
  assert qwen3_science.get_config().objective.name == "full_forward"
  with pytest.raises(ValueError, match="valid"):
    common.parse_arg("sise=8b", **common.DEFAULTS)
