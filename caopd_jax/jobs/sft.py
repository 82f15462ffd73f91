"""Job `sft`: the base student's supervised warm-up from scratch (configs/base.py).

Writes WORKDIR/model (HF checkpoint + tokenizer, loadable by transformers); a later run finds it
and does nothing (the pipeline's cache), an interrupted one resumes from WORKDIR/checkpoints.
"""

import logging
import os

import jax
import numpy as np
from flax import nnx

from caopd_jax import data, distributed, sft_data
from caopd_jax.caopd import format_confidence
from caopd_jax.jobs import embedded
from caopd_jax.models import Transformer, save_hf
from caopd_jax.optim import make_optimizer
from caopd_jax.prompts import teacher_text
from caopd_jax.tokenizers import CharTokenizer
from caopd_jax.train_step import init_state, make_sft_step
from caopd_jax.trainer import train_loop


def sequence_width(tokenizer, t, records, round_to=8):
  """Longest SFT sequence any record can produce (longest teacher format, with the note)."""
  longest = max(len(tokenizer.encode(teacher_text(t, m, r["question"], t.written(r["answer"]),
                                                  format_confidence(1, 8), True) + r["answer"]))
                for r in records for m in ("demo", "correct_solution"))
  extra = len(tokenizer.encode(t.response.format(answer="", confidence="0.00"))) + 1
  return -(-(longest + extra) // round_to) * round_to


def main(config, workdir):
  model_dir = os.path.join(workdir, "model")
  if os.path.exists(os.path.join(model_dir, "config.json")):
    logging.info("Base student already trained: %s", model_dir)
    return model_dir
  t = embedded.templates(config.task)
  tokenizer = CharTokenizer(pieces=t.pieces())
  srcs = embedded.sources(config, workdir)
  train = srcs["train"]
  width = sequence_width(tokenizer, t, embedded.all_records(srcs))
  model = Transformer(embedded.model_config(config.model, tokenizer.vocab_size),
                      rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model)
  optimizer, schedule = make_optimizer(config.optim, config.steps)
  state = init_state(params, optimizer, seed=config.seed)
  batches = data.BatchIterator(train, config.batch_size, seed=config.seed,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())

  def get_batch(step):
    rng = np.random.default_rng([config.seed, step])
    texts = sft_data.sft_texts(batches.batch(step), t, rng, mix=config.mix,
                               habit_table=config.habit, num_samples=config.num_samples,
                               note_prob=config.note_prob,
                               first_level=config.task.get("min_digits", 1))
    return sft_data.encode_sft(tokenizer, texts, width)

  step_fn = make_sft_step(graphdef, optimizer, schedule)
  state = train_loop(workdir=workdir, state=state, step_fn=step_fn, get_batch=get_batch,
                     total_steps=config.steps, log_every=config.log_every,
                     checkpoint_every=config.checkpoint_every, desc="base (SFT)",
                     mesh=config.get("mesh"), keep=config.get("keep_checkpoints", 2))
  if jax.process_index() == 0:
    save_hf(nnx.merge(graphdef, state.params), model_dir + ".tmp", tokenizer=tokenizer)
    os.replace(model_dir + ".tmp", model_dir)
  distributed.barrier("export")  # other hosts wait until process 0 has written the model
  return model_dir
