"""Evaluation of a model on a task's splits, one path for every task.

`eval.num_samples` = n sampled responses per question (the deployed policy; sampling from
config.eval.sampling), each judged by the task's verifier (in the graph, or on the host with
`task.eval_correct`), its stated confidence read with `calibration.parse_confidence` (unparsed
-> 0, counted in the metrics and reported as adherence). `eval.confidence` says how the stated
confidence is read: "sampled" (the response as drawn), or the response cut after its last
confidence marker and the rest decoded again (`eval.confidence_tokens` tokens at most), the answer
and its correctness staying the sampled ones: "greedy" (at T=0: the modal report, biased toward
the mode of a skewed distribution) or "mean" (the mean of `eval.confidence_draws` draws with
eval.sampling: an unbiased estimate of the student's expected stated confidence for its answer,
E_{c ~ pi(.|x, y)}[c]). A student distilled on K-rollout P_acc targets learns their binomial spread;
"sampled" counts that spread as miscalibration, "mean" reads the belief without it. Metrics: every calibration metric over
all responses (`calibration.summarize`), Pass@k for k in `eval.k` and Avg@n
(`calibration.sampling_metrics`), and a breakdown by the record field `eval.group_by` (e.g.
difficulty). Writes, under WORKDIR/eval:
  {name}_{split}.json              metrics + bin stats + settings
  {name}_{split}_responses.jsonl   id, gold, response, correct, confidence, parsed
  {name}_{split}_reliability.png   reliability diagram
"""

import dataclasses
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from caopd_jax import calibration, data, plots, tasks
from caopd_jax.models import load_hf
from caopd_jax.opd import prompts as opd_prompts, verify as opd_verify
from caopd_jax.sampling import SampleOutput, SamplingConfig, sample
from caopd_jax.tokenizers import check_vocabulary, load_tokenizer, pad_left


READOUTS = ("sampled", "greedy", "mean")


@functools.partial(jax.jit, static_argnames=("verify",))
def _judge(prompts, tokens, mask, verify):
  z = jnp.zeros(tokens.shape, jnp.float32)
  return verify(prompts, SampleOutput(tokens, mask, z, z, jnp.sum(mask, -1))).correct[:, 0]


def _run_sampler(graphdef, params, prompt, valid, key, sampling, mesh):
  if mesh is not None:
    from caopd_jax import sharding  # pylint: disable=g-import-not-at-top
    return sharding.shard_sample(graphdef, params, prompt, valid, key, sampling, mesh)
  return sample(graphdef, params, jnp.asarray(prompt), jnp.asarray(valid), key, sampling)


def marker_prefix(tokenizer, ids, marker: str) -> int:
  """The fewest leading tokens of `ids` whose text holds the last `marker` (case-insensitive)
  of the whole text, or 0 when it has none. Binary search: decoded prefixes only grow."""
  full = tokenizer.decode(ids).lower()
  j = full.rfind(marker.lower())
  if j < 0:
    return 0
  end = j + len(marker)
  lo, hi = 1, len(ids)
  while lo < hi:
    mid = (lo + hi) // 2
    if len(tokenizer.decode(ids[:mid])) >= end:
      hi = mid
    else:
      lo = mid + 1
  return lo if tokenizer.decode(ids[:lo]).lower()[j:end] == marker.lower() else 0


def reread_confidence(graphdef, params, tokenizer, prompt, valid, responses, marker: str,
                      sampling, num_tokens: int, draws: int = 0, key=None, mesh=None):
  """Each response (a token list after its left-padded prompt row) cut after its last confidence
  marker and continued for up to `num_tokens` tokens: greedily (draws=0, one continuation) or
  `draws` times with `sampling` (T, top-k, top-p; `key`). Returns per row the list of new token
  lists; a row without a marker gets [its response] back. One fixed-shape sampler call."""
  cuts = [marker_prefix(tokenizer, r, marker) for r in responses]
  reps = max(draws, 1)
  rows = [list(np.asarray(prompt[i])[np.asarray(valid[i])]) + list(r[:c])
          for i, (r, c) in enumerate(zip(responses, cuts)) for _ in range(reps)]
  ids, ok = pad_left(rows, prompt.shape[1] + sampling.max_new_tokens, tokenizer.pad_id)
  cfg = dataclasses.replace(sampling, decode_segments=1, max_new_tokens=num_tokens)
  if not draws:
    cfg = dataclasses.replace(cfg, temperature=0.0, top_k=0, top_p=1.0)
  key = jax.random.key(0) if key is None else key
  s = _run_sampler(graphdef, params, ids, ok, key, cfg, mesh)
  tokens, mask = jax.device_get((s.tokens, s.mask))
  return [[list(r[:c]) + list(tokens[i * reps + j][mask[i * reps + j]]) for j in range(reps)]
          if c else [list(r)] for i, (r, c) in enumerate(zip(responses, cuts))]


def mean_confidence(tokenizer, draws) -> float:
  """Mean stated confidence of token lists `draws`; an unparsed one counts 0 (as in summarize)."""
  values = [calibration.parse_confidence(tokenizer.decode(t)) for t in draws]
  return float(np.mean([c if ok else 0.0 for ok, c in values]))


def generate_and_score(graphdef, params, tokenizer, task, records, *, widths, sampling,
                       batch_size: int, seed: int = 0, mesh=None, desc="eval",
                       confidence: str = "sampled", confidence_tokens: int = 8,
                       confidence_draws: int = 16):
  """Per-record responses, correctness, parsed confidence and record ids (numpy / lists);
  `confidence`: "sampled", "greedy" or "mean" (module docstring)."""
  if confidence not in READOUTS:
    raise ValueError(f"eval.confidence must be one of {READOUTS}, got {confidence!r}.")
  unique = list({int(r["id"]): r for r in records}.values())  # (n samples repeat records)
  verify = opd_verify.make(task, tokenizer, unique, num_samples=1, width=sampling.max_new_tokens,
                           judge=task.eval_correct)
  key = jax.random.key(seed)
  out = {"id": [], "gold": [], "response": [], "correct": [], "conf": [], "parsed": []}
  gold = task.target_text if task.verification == "tokens" else task.gold
  for start in tqdm(range(0, len(records), batch_size), desc=desc, leave=False,
                    disable=jax.process_index() != 0):
    chunk = list(records[start:start + batch_size])
    n = len(chunk)
    chunk += [chunk[-1]] * (batch_size - n)  # fixed shape: one compile
    p = opd_prompts.encode(tokenizer, task, chunk, None, widths)
    key, sub = jax.random.split(key)
    s = _run_sampler(graphdef, params, p["student_prompt"], p["student_valid"], sub, sampling,
                     mesh)
    tokens, mask = jax.device_get((s.tokens, s.mask))
    correct = np.asarray(_judge(jax.tree.map(jnp.asarray, p), jnp.asarray(tokens),
                                jnp.asarray(mask), verify=verify))
    responses = [tokens[i][mask[i]] for i in range(len(chunk))]
    rereads = [[r] for r in responses]
    if confidence != "sampled":
      rereads = reread_confidence(  # its own key: the answers are those of "sampled"
          graphdef, params, tokenizer, p["student_prompt"], p["student_valid"], responses,
          task.marker, sampling, confidence_tokens,
          draws=confidence_draws if confidence == "mean" else 0,
          key=jax.random.fold_in(sub, 1), mesh=mesh)
    for i in range(n):
      text = tokenizer.decode(rereads[i][0] if confidence == "greedy" else responses[i])
      ok, c = calibration.parse_confidence(text)
      if confidence == "mean" and ok:
        c = mean_confidence(tokenizer, rereads[i])
      out["id"].append(int(chunk[i]["id"]))
      out["gold"].append(gold(chunk[i]))
      out["response"].append(text)
      out["correct"].append(bool(correct[i]))
      out["conf"].append(c)
      out["parsed"].append(ok)
  for k in ("correct", "parsed"):
    out[k] = np.asarray(out[k], bool)
  out["conf"] = np.asarray(out["conf"], np.float64)
  return out


def metrics(scored, records, group_by: str = "", num_samples: int = 1, ks=(1,)) -> dict:
  """calibration.summarize, Pass@k / Avg@n over the num_samples responses per question (records
  repeated that many times in a row), and, per value of the record field `group_by`, accuracy
  and mean confidence (keys accuracy_{g}{value}, confidence_{g}{value}, g its first letter)."""
  out = calibration.summarize(scored["conf"], scored["correct"], scored["parsed"])
  out.update(calibration.sampling_metrics(np.arange(len(records)) // num_samples,
                                          scored["correct"], ks))
  if group_by and all(group_by in r for r in records):
    groups = np.asarray([r[group_by] for r in records])
    conf = np.where(scored["parsed"], scored["conf"], 0.0)
    for g in sorted(set(groups.tolist())):
      sel = groups == g
      out[f"accuracy_{group_by[0]}{g}"] = float(np.mean(scored["correct"][sel]))
      out[f"confidence_{group_by[0]}{g}"] = float(np.mean(conf[sel]))
  return out


def write(scored, result: dict, prefix: str, title: str):
  """JSON metrics, responses JSONL and the reliability diagram at `prefix`*."""
  os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
  with open(prefix + ".json", "w") as f:
    json.dump(result, f, indent=1)
  with open(prefix + "_responses.jsonl", "w") as f:
    for i, text in enumerate(scored["response"]):
      f.write(json.dumps({"id": scored["id"][i], "gold": scored["gold"][i], "response": text,
                          "correct": bool(scored["correct"][i]),
                          "confidence": float(scored["conf"][i]),
                          "parsed": bool(scored["parsed"][i])}, ensure_ascii=False) + "\n")
  plots.reliability_diagram(np.where(scored["parsed"], scored["conf"], 0.0), scored["correct"],
                            prefix + "_reliability.png", title=title)


def evaluate_model(model_dir: str, config, workdir: str, name: str = "", tokenizer_dir: str = ""):
  """Evaluates the HF model at `model_dir` on config.task's config.eval.splits; writes the files
  above and returns {split: (metrics, scored)}. Reads config.{task, data_dir, dtype, mesh, eval}."""
  e = config.eval
  task = tasks.get(config.task)
  tokenizer = load_tokenizer(tokenizer_dir or model_dir)
  mesh = None
  if jax.device_count() > 1:  # the parameters are born sharded, the prompts split over the batch
    from caopd_jax import sharding  # pylint: disable=g-import-not-at-top
    mesh = sharding.make_mesh(tuple(config.mesh))
  model = load_hf(model_dir, dtype=jnp.dtype(config.dtype), mesh=mesh)
  check_vocabulary(tokenizer, model.cfg.vocab_size, model_dir)
  graphdef, params = nnx.split(model)
  sampling = SamplingConfig.from_config(e.sampling, tokenizer)
  name = name or os.path.basename(os.path.normpath(model_dir))
  srcs = task.sources(config.data_dir or data.data_dir_for(workdir), e.splits)
  out = {}
  for split in e.splits:
    questions = list(srcs[split])[:e.limit or None]
    records = [r for r in questions for _ in range(e.num_samples)]
    over = opd_prompts.overlong(tokenizer, task, questions, max_prompt_len=e.max_prompt_len)
    opd_prompts.report_overlong(over, len(questions), f"eval {name}/{split}", "truncate")
    widths = opd_prompts.widths(tokenizer, task, questions, max_prompt_len=e.max_prompt_len)
    scored = generate_and_score(graphdef, params, tokenizer, task, records, widths=widths,
                                sampling=sampling, batch_size=min(e.batch_size, len(records)),
                                seed=e.seed, mesh=mesh, desc=f"eval {name}/{split}",
                                confidence=e.confidence, confidence_tokens=e.confidence_tokens,
                                confidence_draws=e.confidence_draws)
    result = metrics(scored, records, e.group_by, e.num_samples, tuple(e.k))
    bins = calibration.bin_stats(np.where(scored["parsed"], scored["conf"], 0.0), scored["correct"])
    info = {"task": task.name, "split": split, "model": os.path.abspath(model_dir),
            "truncated_prompts": int(over.sum()),
            "bins": {k: [None if np.isnan(x) else float(x) for x in v] for k, v in bins.items()},
            "sampling": e.sampling.to_dict(), "confidence_readout": e.confidence}
    if jax.process_index() == 0:
      write(scored, {**result, **info}, os.path.join(workdir, "eval", f"{name}_{split}"),
            title=f"{name} ({task.name} {split})")
      logging.info("%s %s/%s: %s", name, task.name, split,
                   ", ".join(f"{k}={v:.3f}" for k, v in result.items() if k != "n"))
    out[split] = (result, scored)
  return out


def heldout_entropy(model_dir: str, config, data_dir: str, num_prompts: int, seed: int = 0):
  """(mean token entropy, mean completion length) of the model's own samples (config.sampling)
  on the first `num_prompts` questions of config.eval.splits[0] (the Decoupling-KL reading of
  reverse vs forward KL: reverse lowers the student's entropy)."""
  from caopd_jax.opd import curriculum  # pylint: disable=g-import-not-at-top
  tokenizer = load_tokenizer(model_dir)
  graphdef, params = nnx.split(load_hf(model_dir))
  task = tasks.get(config.task)
  split = config.eval.splits[0]
  recs = list(task.sources(data_dir, (split,))[split])[:num_prompts]
  p = opd_prompts.encode(tokenizer, task, recs, None, opd_prompts.widths(tokenizer, task, recs))
  sampling = SamplingConfig.from_config(config.sampling, tokenizer)
  ent, length = curriculum.heldout_stats(graphdef, params, jnp.asarray(p["student_prompt"]),
                                         jnp.asarray(p["student_valid"]), jax.random.key(seed),
                                         sampling.max_new_tokens, sampling=sampling)
  return float(ent), float(length)
