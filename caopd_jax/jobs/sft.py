"""Job `sft`: the base student's supervised warm-up from scratch (configs/base.py), on any task
with a tokenizer of its own (`task.new_tokenizer`).

The warm-up stands in for pretraining + instruction tuning of a real LLM. It mixes formats
(config.mix: (name, probability) pairs):
  student       the student prompt -> response stating its confidence "habit" for the record's
                difficulty (config.habit, from the lowest difficulty of the train split up)
  <context>     a teacher context (caopd_jax.contexts: demo, correct_solution) whose stated
                confidence c is drawn uniformly from the K-grid, with a note stating c with
                probability note_prob -> response stating c
Easy first (config.easy_first): the first frac x steps draw only records of level <= max_level
(e.g. carry-free additions, `easy_subset`), then the whole split.
Label noise (per difficulty, like the habit, or per `task.level(record, config.noise_by)`, e.g.
the number of carries of an addition): a student-format answer is wrong (one digit
changed, `task.corrupt`) with probability config.answer_noise, a teacher-format answer (the
context's solution itself stays right) with probability config.context_noise; from step
noise_from x steps on (before it the labels are clean: the skill is learned first, then the
sloppy habit, as a pretrained model later tuned on imperfect answers).
So the base answers with partial, difficulty-dependent accuracy and a confidence habit, and, as a
teacher, uses a demonstration and follows a stated confidence (what an LLM teacher brings to
SDFT / CaOPD). Writes WORKDIR/model; a finished run is reused, an interrupted one resumes.
"""

import logging
import os

import jax
import numpy as np
from flax import nnx

from caopd_jax import contexts, data, distributed, sharding, tasks, workdir as workdir_lib
from caopd_jax.jobs.validate import ConfigError
from caopd_jax.models import ModelConfig, Transformer, save_hf
from caopd_jax.opd.caopd import format_confidence
from caopd_jax.opd.prompts import teacher_text
from caopd_jax.tokenizers import pad_right
from caopd_jax.train.loop import born_sharded, train_loop
from caopd_jax.train.optim import make_optimizer
from caopd_jax.train.step import make_sft_step


def _per_level(values, level):
  return values[min(level, len(values) - 1)] if len(values) else 0.0


def record_level(task, record, by: str, levels) -> int:
  """The record's level: its difficulty's index among `levels` (by="difficulty", lowest 0) or
  `task.level(record, by)` (e.g. the carries of an addition)."""
  if by == "difficulty":
    return levels.index(record.get("difficulty", levels[0]))
  return task.level(record, by)


def easy_subset(task, records, levels, easy_first) -> list:
  """The records of level <= easy_first.max_level under easy_first.by: the only ones the first
  easy_first.frac x steps draw from. Why (2-digit addition, answers units digit first): with
  uniform operand digits the units digit (a0 + b0) mod 10 is independent of a0 and of b0 taken
  alone, so no single digit carries a first-order gradient signal and SFT sits on a loss plateau
  whose exit step varies with the seed; on carry-free questions the units digit lies in
  [a0, 9] given a0, a first-order signal (curriculum learning, Bengio et al. 2009)."""
  subset = [r for r in records
            if record_level(task, r, easy_first.by, levels) <= easy_first.max_level]
  if not subset:
    raise ConfigError(f"easy_first: no training record has level <= {easy_first.max_level} "
                      f"under {easy_first.by!r}; raise max_level or set easy_first.frac=0.")
  return subset


def sft_texts(records, task, tokenizer, rng: np.random.Generator, *, mix, habit, levels,
              num_samples: int, note_prob: float, answer_noise=(), context_noise=(),
              noise_by="difficulty", formats=None):
  """[(prompt, response)] for a batch of records (see the module docstring). answer_noise /
  context_noise: per level (difficulty from the lowest up, or `task.level(r, noise_by)`; the
  last value repeats), the probability that a student-format / teacher-format response has a
  wrong answer (`task.corrupt`). formats: each record's index into `mix` (None: drawn from the
  mix's probabilities)."""

  def shown(r, noise):
    return task.corrupt(r, rng) if noise and rng.random() < noise else r

  names, probs = zip(*mix)
  if formats is None:
    formats = rng.choice(len(names), size=len(records), p=np.asarray(probs) / np.sum(probs))
  out = []
  for r, f in zip(records, formats):
    level = record_level(task, r, "difficulty", levels)
    noise_level = record_level(task, r, noise_by, levels)
    if names[f] == "student":
      out.append((task.student_text(tokenizer, r),
                  task.response_text(shown(r, _per_level(answer_noise, noise_level)),
                                     f"{_per_level(habit, level):.2f}")))
    else:
      conf = format_confidence(int(rng.integers(num_samples + 1)), num_samples)
      note = bool(rng.random() < note_prob)
      out.append((teacher_text(tokenizer, task, r, contexts.get(names[f]), task.solution_text(r),
                               conf, note),
                  task.response_text(shown(r, _per_level(context_noise, noise_level)), conf)))
  return out


def noise_at(config, step: int) -> dict:
  """The label noise of SFT step `step`: none before noise_from x steps, the config's after."""
  if step < config.noise_from * config.steps:
    return dict(answer_noise=(), context_noise=())
  return dict(answer_noise=config.answer_noise, context_noise=config.context_noise)


def encode_sft(tokenizer, texts, width: int):
  """{tokens, valid, loss_mask} [B, width]: prompt ++ response ++ EOS, loss on response + EOS."""
  seqs, starts = [], []
  for prompt, response in texts:
    p = tokenizer.encode(prompt)
    seqs.append(p + tokenizer.encode(response) + [tokenizer.eos_id])
    starts.append(len(p))
  longest = max(len(s) for s in seqs)
  if longest > width:
    raise ValueError(f"SFT sequence of {longest} tokens exceeds the configured width {width}.")
  tokens, valid = pad_right(seqs, width, tokenizer.pad_id)
  loss_mask = valid & (np.arange(width)[None, :] >= np.asarray(starts)[:, None])
  return {"tokens": tokens, "valid": valid, "loss_mask": loss_mask}


def format_widths(tokenizer, task, records, mix, round_to=8) -> dict:
  """{format: longest SFT sequence any record can produce in it (with the note), rounded up}."""
  def longest(r, name):
    if name == "student":
      prompt = task.student_text(tokenizer, r)
    else:
      prompt = teacher_text(tokenizer, task, r, contexts.get(name), task.solution_text(r), "1.00",
                            True)
    return len(tokenizer.encode(prompt + task.response_text(r, "1.00"))) + 1
  return {name: -(-max(longest(r, name) for r in records) // round_to) * round_to
          for name, _ in mix}


def format_counts(probs, n: int, unit: int = 1) -> np.ndarray:
  """Rows per format in a batch of n: n x probs rounded to multiples of `unit` that sum to n
  (largest remainders first). unit = the batch-sharding devices x microbatches of this process
  (`bucket_unit`), so every bucket splits into microbatches and shards over the batch axes."""
  if n % unit:
    raise ConfigError(f"length_buckets: a batch of {n} rows does not split into units of {unit} "
                     "(batch-sharding devices x microbatches per process); make batch_size a "
                     "multiple of it or set length_buckets=False.")
  want = (n // unit) * np.asarray(probs, np.float64) / np.sum(probs)
  counts = np.floor(want).astype(int)
  for k in np.argsort(-(want - counts), kind="stable")[:n // unit - counts.sum()]:
    counts[k] += 1
  if np.any((counts == 0) & (np.asarray(probs) > 0)):
    raise ConfigError(f"length_buckets: {n} rows in units of {unit} leave format(s) "
                     f"{np.flatnonzero(counts == 0).tolist()} of the mix with no rows; raise "
                     "batch_size or set length_buckets=False.")
  return counts * unit


def bucket_unit(mesh, microbatches: int, process_count: int = 1) -> int:
  """Rows per process that one bucket must be a multiple of: the mesh's batch-sharding size
  (sharding.RULES' `batch` axes) x microbatches, divided among the processes."""
  axes = dict(sharding.RULES)[sharding.BATCH]
  dp = int(np.prod([mesh.shape[a] for a in axes if a in mesh.shape]))
  return max(1, dp * microbatches // process_count)


def batch_rows(config, task, records, levels, process_index=0, process_count=1):
  """step -> this process's records of SFT step `step`: from `easy_subset` for the first
  easy_first.frac x steps, then from all records (deterministic and resumable: data.BatchIterator
  over the decoded records; a tfds read per step cost ~15-35 ms of the base's step)."""
  stream = lambda rows: data.BatchIterator(rows, config.batch_size, seed=config.seed,
                                           process_index=process_index,
                                           process_count=process_count)
  full = stream(records)
  easy_steps = int(config.easy_first.frac * config.steps)
  easy = stream(easy_subset(task, records, levels, config.easy_first)) if easy_steps else None
  return lambda step: (easy if step < easy_steps else full).batch(step)


def sft_batch(config, task, tokenizer, rows, step: int, levels, widths: dict, unit: int = 1):
  """Step `step`'s batch from its records `rows`: {tokens, valid, loss_mask} at the widest
  format's width, or with config.length_buckets {"buckets": one such dict per format of
  config.mix, format_counts(..., unit) rows each, at that format's width (format_widths)}."""
  names, probs = zip(*config.mix)
  rng = np.random.default_rng([config.seed, step])
  formats = (np.repeat(np.arange(len(names)), format_counts(probs, len(rows), unit))
             if config.length_buckets else None)
  texts = sft_texts(rows, task, tokenizer, rng, mix=config.mix, habit=config.habit,
                    levels=levels, num_samples=config.num_samples, note_prob=config.note_prob,
                    noise_by=config.noise_by, formats=formats, **noise_at(config, step))
  if formats is None:
    return encode_sft(tokenizer, texts, max(widths.values()))
  return {"buckets": tuple(
      encode_sft(tokenizer, [t for t, f in zip(texts, formats) if f == k], widths[name])
      for k, name in enumerate(names) if np.any(formats == k))}


def main(config, workdir):
  model_dir = os.path.join(workdir, "model")
  workdir_lib.check_config(workdir, config)  # a rerun / resume with a changed config stops here
  if os.path.exists(os.path.join(model_dir, "config.json")):
    logging.info("Base student already trained: %s", model_dir)
    return model_dir
  task = tasks.get(config.task)
  tokenizer = task.new_tokenizer()
  train = task.sources(config.data_dir or data.data_dir_for(workdir),
                       (config.train_split,))[config.train_split]
  records = data.records(train)
  levels = sorted({r.get("difficulty", 0) for r in records})
  widths = format_widths(tokenizer, task, records, config.mix)
  cfg = ModelConfig(vocab_size=tokenizer.vocab_size, param_dtype=config.param_dtype,
                    remat=config.remat, scan_layers=config.scan_layers, **config.model)
  # the parameters and the state are born sharded on the mesh
  mesh = sharding.make_mesh(tuple(config.mesh))
  unit = bucket_unit(mesh, config.microbatches, jax.process_count())
  if config.length_buckets:  # a batch that cannot hold the mix stops before any work
    format_counts([p for _, p in config.mix], config.batch_size // jax.process_count(), unit)
  init = lambda: nnx.split(Transformer(cfg, rngs=nnx.Rngs(config.seed)))[1]
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  params = jax.jit(init, out_shardings=sharding.tree_shardings(abstract, mesh))()
  optimizer, schedule = make_optimizer(config.optim, config.steps)
  state, _ = born_sharded(mesh, optimizer, params, seed=config.seed,
                          master_weights=config.master_weights)
  rows_at = batch_rows(config, task, records, levels, jax.process_index(), jax.process_count())

  def get_batch(step):
    return sft_batch(config, task, tokenizer, rows_at(step), step, levels, widths, unit)

  step_fn = make_sft_step(graphdef, optimizer, schedule, on_nonfinite=config.on_nonfinite,
                          microbatches=config.microbatches)
  state = train_loop(workdir=workdir, state=state, step_fn=step_fn,
                     get_batch=get_batch, total_steps=config.steps, log_every=config.log_every,
                     checkpoint_every=config.checkpoint_every, desc=f"base (SFT) {task.name}",
                     mesh=mesh, keep=config.keep_checkpoints)
  if jax.process_index() == 0:
    save_hf(nnx.merge(graphdef, state.params), model_dir + ".tmp", tokenizer=tokenizer)
    os.replace(model_dir + ".tmp", model_dir)
  distributed.barrier("export")  # other hosts wait until process 0 has written the model
  return model_dir
