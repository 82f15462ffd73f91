"""Plumbing shared by the embedded-task jobs: data sources, static widths, model/sampling configs,
evaluation of a saved model."""

import os

import jax
import numpy as np
from flax import nnx

from caopd_jax import data, evaluation, plots
from caopd_jax.models import ModelConfig, load_hf
from caopd_jax.prompts import MODES, Templates, auto_widths
from caopd_jax.sampling import SamplingConfig
from caopd_jax.tokenizers import load_tokenizer



def templates(task) -> Templates:
  """The embedded task's templates (the answer's digit order comes from the task config)."""
  return Templates(answer_order=task.get("answer_order", "msb"),
                   pad_operands=task.get("pad_operands", False))


def data_dir(config, workdir):
  """config.data_dir, else WORKDIR/tfds (the pipeline points all its stages at one copy)."""
  return config.data_dir or data.data_dir_for(workdir)


def task_ops(task):
  """config.task.op: one operation ("add") or a comma-separated mixture ("add,sub")."""
  return tuple(op.strip() for op in task.op.split(","))


def task_kwargs(task, op=None):
  """The data builder's options from config.task (for one of its ops)."""
  if task.name != "arithmetic":
    raise ValueError(f"The embedded-task jobs run task.name='arithmetic', got {task.name!r}.")
  return dict(op=op or task_ops(task)[0], min_digits=task.get("min_digits", 1),
              max_digits=task.max_digits, ood_digits=task.ood_digits, seed=task.seed,
              num_train=task.num_train, num_test=task.num_test, num_ood=task.num_ood)


class Mixture:
  """Random-access concatenation of sources (a multi-op task), for data.BatchIterator."""

  def __init__(self, sources):
    self.sources = list(sources)
    self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

  def __len__(self):
    return int(self.offsets[-1])

  def __getitem__(self, i):
    k = int(np.searchsorted(self.offsets, i, side="right")) - 1
    return self.sources[k][int(i - self.offsets[k])]

  def __getitems__(self, indices):
    return [self[i] for i in indices]

  def __iter__(self):
    for s in self.sources:
      yield from s


def sources(config, workdir, splits=("train", "test", "ood")):
  """{split: source} of config.task; a multi-op task concatenates its ops' splits."""
  d = data_dir(config, workdir)
  ops = task_ops(config.task)
  per_op = {op: {s: data.get_source("arithmetic", s, d, **task_kwargs(config.task, op))
                 for s in splits} for op in ops}
  if len(ops) == 1:
    return per_op[ops[0]]
  return {s: Mixture([per_op[op][s] for op in ops]) for s in splits}


def all_records(srcs):
  return [r for s in srcs.values() for r in s]


def widths(tokenizer, t: Templates, records):
  """Static prompt widths covering every record of every split (one compile per run)."""
  per_mode = [auto_widths(tokenizer, t, records, m) for m in MODES]
  return {k: max(w[k] for w in per_mode) for k in per_mode[0]}


def model_config(m, vocab_size: int) -> ModelConfig:
  return ModelConfig(vocab_size=vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
                     num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=m.head_dim,
                     intermediate_size=m.intermediate_size, arch=m.arch, rope_theta=m.rope_theta,
                     tie_word_embeddings=m.tie_word_embeddings, qkv_bias=m.arch == "qwen2",
                     qk_norm=m.arch == "qwen3", dtype=m.dtype)


def sampling_config(s, tokenizer) -> SamplingConfig:
  return SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                        top_k=s.get("top_k", 0), top_p=s.top_p, stop_ids=(tokenizer.eos_id,),
                        pad_id=tokenizer.pad_id, decode_segments=s.get("decode_segments", 1))


def evaluate_model(model_dir: str, config, workdir: str, name: str):
  """Evaluates a saved HF model on config.eval.splits: {split: (metrics, scored)}; writes JSON,
  responses and a reliability diagram per split under WORKDIR/eval/."""
  tokenizer = load_tokenizer(model_dir)
  graphdef, params = nnx.split(load_hf(model_dir))
  srcs = sources(config, workdir)
  t = templates(config.task)
  w = widths(tokenizer, t, all_records(srcs))
  out = {}
  for split in config.eval.splits:
    records = list(srcs[split])
    if config.eval.limit:
      records = records[:config.eval.limit]
    scored = evaluation.generate_and_score(
        graphdef, params, tokenizer, t, records, widths=w,
        sampling=sampling_config(config.eval, tokenizer), batch_size=config.eval.batch_size,
        seed=config.eval.seed, desc=f"eval {name}/{split}")
    result = evaluation.metrics(scored)
    prefix = os.path.join(workdir, "eval", f"{name}_{split}")
    if jax.process_index() == 0:
      evaluation.write(scored, result, prefix)
      plots.reliability_diagram(scored["conf"] * scored["parsed"], scored["correct"],
                                prefix + "_reliability.png", title=f"{name} ({split})")
    out[split] = (result, scored)
  return out
