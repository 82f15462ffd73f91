"""Evaluation on an embedded-task split: one sampled response per question, correctness by the
jittable verifier, the stated confidence parsed from the decoded text, every calibration metric.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from caopd_jax import calibration
from caopd_jax.prompts import encode_prompts
from caopd_jax.rollouts import rollouts
from caopd_jax.verifiers import exact_match_tokens


def generate_and_score(graphdef, params, tokenizer, templates, records, *, widths, sampling,
                       batch_size: int, seed: int = 0, verifier=exact_match_tokens, desc="eval"):
  """Per-record arrays: conf, correct, parsed, difficulty, and the decoded responses."""
  conf, correct, parsed, texts = [], [], [], []
  key = jax.random.key(seed)
  for start in tqdm(range(0, len(records), batch_size), desc=desc, leave=False,
                    disable=jax.process_index() != 0):
    chunk = list(records[start:start + batch_size])
    n = len(chunk)
    chunk += [chunk[-1]] * (batch_size - n)  # fixed shape: one compile
    p = encode_prompts(tokenizer, templates, chunk, "demo", widths)
    key, sub = jax.random.split(key)
    r = rollouts(graphdef, params, jnp.asarray(p["student_prompt"]), jnp.asarray(p["student_valid"]),
                 jnp.asarray(p["target"]), sub, sampling, 1, verifier)
    tokens, mask = jax.device_get((r.samples.tokens, r.samples.mask))
    correct.extend(np.asarray(r.correct)[:n, 0].tolist())
    for i in range(n):
      text = tokenizer.decode(tokens[i][mask[i]])
      ok, c = calibration.parse_confidence(text)
      texts.append(text)
      parsed.append(ok)
      conf.append(c)
  return {"conf": np.asarray(conf, np.float64), "correct": np.asarray(correct, bool),
          "parsed": np.asarray(parsed, bool),
          "difficulty": np.asarray([r.get("difficulty", 0) for r in records]), "texts": texts}


def metrics(scored) -> dict:
  """calibration.summarize plus per-difficulty accuracy and mean confidence."""
  out = calibration.summarize(scored["conf"], scored["correct"], scored["parsed"])
  for d in sorted(set(scored["difficulty"].tolist())):
    sel = scored["difficulty"] == d
    out[f"accuracy_d{d}"] = float(np.mean(scored["correct"][sel]))
    out[f"confidence_d{d}"] = float(np.mean(np.where(scored["parsed"][sel], scored["conf"][sel], 0)))
  return out


def write(scored, result: dict, path_prefix: str):
  """JSON metrics + JSONL of responses next to each other."""
  os.makedirs(os.path.dirname(path_prefix) or ".", exist_ok=True)
  with open(path_prefix + ".json", "w") as f:
    json.dump(result, f, indent=1)
  with open(path_prefix + "_responses.jsonl", "w") as f:
    for i, text in enumerate(scored["texts"]):
      f.write(json.dumps({"response": text, "correct": bool(scored["correct"][i]),
                          "confidence": float(scored["conf"][i]),
                          "parsed": bool(scored["parsed"][i])}) + "\n")
