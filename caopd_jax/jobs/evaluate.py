"""Job `evaluate`: a HF model on a real eval split (science MCQ, tool use) with the confidence
instruction; every calibration metric (`calibration.summarize`).

One sampled response per question (the deployed policy; temperature/top_p from the config),
decoded on the host, verified with `verifiers.mcq_correct` / `tooluse_correct`, its stated
confidence read with `calibration.parse_confidence` (unparsed -> 0, counted). Writes, under
WORKDIR (or `out_dir`):
  {task}_{split}.json                metrics (accuracy, ece, brier, spr, ocg, auroc,
                                     mean_confidence, adherence, n) + bin stats + settings
  {task}_{split}_responses.jsonl     one line per question: id, response, gold, correct,
                                     confidence, parsed
  {task}_{split}_reliability.png     reliability diagram

  python run.py --config=configs/paper/evaluate.py:task=science --config.model=/models/Qwen3-0.6B \\
      --workdir=/tmp/eval_qwen3_0.6b
"""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from caopd_jax import calibration, chat_prompts, data, plots
from caopd_jax.models import load_hf
from caopd_jax.sampling import SamplingConfig, sample
from caopd_jax.tokenizers import load_tokenizer, pad_left


def templates(config) -> chat_prompts.ChatTemplates:
  kwargs = tuple(sorted(config.get("chat_template_kwargs", {}).items()))
  return chat_prompts.ChatTemplates(chat_kwargs=kwargs)


def load_records(task, split, data_cfg, workdir, limit=0):
  """Records of a real split through caopd_jax.data (prepared under data_dir once)."""
  data_dir = data_cfg.get("data_dir") or data.data_dir_for(workdir)
  kw = {"manual_dir": data_cfg.manual_dir} if data_cfg.get("manual_dir") else {}
  records = list(data.get_source(task, split, data_dir, **kw))
  return records[:limit] if limit else records


def _mesh(config):
  spec = config.get("mesh", None)
  if spec is None or jax.device_count() == 1:
    return None
  from caopd_jax import sharding  # pylint: disable=g-import-not-at-top
  return sharding.make_mesh(tuple(spec))


def generate_and_score(graphdef, params, tokenizer, t, records, task, *, sampling, batch_size,
                       max_prompt_len, seed=0, mesh=None, desc="eval"):
  """Per-record responses, correctness and parsed confidence (host verification)."""
  texts = [chat_prompts.student_text(tokenizer, t, r, task) for r in records]
  ids = [tokenizer.encode(s) for s in texts]
  width = min(max(len(x) for x in ids), max_prompt_len)
  key = jax.random.key(seed)
  out = {"id": [], "response": [], "gold": [], "correct": [], "conf": [], "parsed": []}
  for start in tqdm(range(0, len(records), batch_size), desc=desc,
                    disable=jax.process_index() != 0):
    chunk = list(range(start, min(start + batch_size, len(records))))
    n = len(chunk)
    chunk += [chunk[-1]] * (batch_size - n)  # fixed shape: one compile
    prompt, valid = pad_left([ids[i] for i in chunk], width, tokenizer.pad_id)
    key, sub = jax.random.split(key)
    if mesh is not None:
      from caopd_jax import sharding  # pylint: disable=g-import-not-at-top
      s = sharding.shard_sample(graphdef, params, prompt, valid, sub, sampling, mesh)
    else:
      s = sample(graphdef, params, jnp.asarray(prompt), jnp.asarray(valid), sub, sampling)
    tokens, mask = jax.device_get((s.tokens, s.mask))
    for row, i in enumerate(chunk[:n]):
      r = records[i]
      text = tokenizer.decode(tokens[row][mask[row]])
      g = chat_prompts.gold(r, task)
      ok, c = calibration.parse_confidence(text)
      out["id"].append(int(r["id"]))
      out["response"].append(text)
      out["gold"].append(g)
      out["correct"].append(chat_prompts.verify_text(task, text, g))
      out["conf"].append(c)
      out["parsed"].append(ok)
  for k in ("correct", "parsed"):
    out[k] = np.asarray(out[k], bool)
  out["conf"] = np.asarray(out["conf"], np.float64)
  return out


def write(scored, metrics, prefix, title):
  """JSON metrics, responses JSONL and the reliability diagram at `prefix`*."""
  os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
  with open(prefix + ".json", "w") as f:
    json.dump(metrics, f, indent=1)
  with open(prefix + "_responses.jsonl", "w") as f:
    for i, text in enumerate(scored["response"]):
      f.write(json.dumps({"id": scored["id"][i], "response": text, "gold": scored["gold"][i],
                          "correct": bool(scored["correct"][i]),
                          "confidence": float(scored["conf"][i]),
                          "parsed": bool(scored["parsed"][i])}, ensure_ascii=False) + "\n")
  conf = np.where(scored["parsed"], scored["conf"], 0.0)
  plots.reliability_diagram(conf, scored["correct"], prefix + "_reliability.png", title=title)


def evaluate_model(model_dir, config, out_dir, *, tokenizer_dir="", records=None, name=""):
  """Evaluates the HF model at `model_dir` on config.task / config.data.split; returns metrics.

  config fields: task, data {manual_dir, data_dir, split}, limit, batch_size, max_prompt_len,
  max_new_tokens, temperature, top_p, top_k, seed, dtype, chat_template_kwargs, mesh.
  """
  task, split = config.task, config.data.split
  tokenizer = load_tokenizer(tokenizer_dir or model_dir)
  graphdef, params = nnx.split(load_hf(model_dir, dtype=jnp.dtype(config.dtype)))
  if records is None:
    records = load_records(task, split, config.data, out_dir, config.limit)
  t = templates(config)
  sampling = SamplingConfig(
      max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
      top_k=config.get("top_k", 0), decode_segments=config.get("decode_segments", 1),
      stop_ids=chat_prompts.stop_ids(tokenizer), pad_id=tokenizer.pad_id)
  name = name or os.path.basename(os.path.normpath(model_dir))
  scored = generate_and_score(graphdef, params, tokenizer, t, records, task, sampling=sampling,
                              batch_size=min(config.batch_size, len(records)),
                              max_prompt_len=config.max_prompt_len, seed=config.seed,
                              mesh=_mesh(config), desc=f"eval {name} {task}/{split}")
  metrics = calibration.summarize(scored["conf"], scored["correct"], scored["parsed"])
  bins = calibration.bin_stats(np.where(scored["parsed"], scored["conf"], 0.0), scored["correct"])
  result = {**metrics, "task": task, "split": split, "model": os.path.abspath(model_dir),
            "bins": {k: [None if np.isnan(x) else float(x) for x in v] for k, v in bins.items()},
            "sampling": {"temperature": config.temperature, "top_p": config.top_p,
                         "max_new_tokens": config.max_new_tokens, "seed": config.seed}}
  if jax.process_index() == 0:
    prefix = os.path.join(out_dir, f"{task}_{split}")
    write(scored, result, prefix, title=f"{name} ({task} {split})")
    logging.info("%s %s/%s: %s", name, task, split,
                 ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k != "n"))
  return result


def main(config, workdir):
  if not config.model:
    raise ValueError("Set --config.model to a local HF model directory.")
  return evaluate_model(config.model, config, workdir, tokenizer_dir=config.get("tokenizer", ""),
                        name=config.get("name", ""))
