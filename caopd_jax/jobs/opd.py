"""Job `opd`: OPD or CaOPD from a base student on the embedded task (configs/opd.py, caopd.py).

Each step is one compiled function: K rollouts per prompt, exact-match verification, P_acc,
(CaOPD) target replacement, teacher scoring, loss and update (caopd_jax.iteration).
Writes WORKDIR/model when done; an interrupted run resumes from WORKDIR/checkpoints.
"""

import logging
import os

import jax
from flax import nnx

from caopd_jax import data, distributed
from caopd_jax import prefixes
from caopd_jax.iteration import make_iteration
from caopd_jax.jobs import embedded
from caopd_jax.models import load_hf, save_hf
from caopd_jax.optim import make_optimizer
from caopd_jax.prompts import encode_prompts
from caopd_jax.tokenizers import load_tokenizer
from caopd_jax.train_step import init_state, make_opd_step
from caopd_jax.trainer import train_loop


def init_dir(config, workdir):
  path = config.init_from or os.path.join(os.path.dirname(os.path.abspath(workdir)), "base", "model")
  if not os.path.exists(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"No base student at {path!r}: train one with configs/base.py or set "
                            "--config.init_from to a HF model directory.")
  return path


def main(config, workdir):
  model_dir = os.path.join(workdir, "model")
  if os.path.exists(os.path.join(model_dir, "config.json")):
    logging.info("Already trained: %s", model_dir)
    return model_dir
  if config.caopd and config.importance_weights:
    raise ValueError("importance_weights=True is undefined for CaOPD: its completions are "
                     "modified after sampling (the reference applies no importance weights).")
  base = init_dir(config, workdir)
  tokenizer = load_tokenizer(base)
  graphdef, params = nnx.split(load_hf(base))
  srcs = embedded.sources(config, workdir)
  t = embedded.templates(config.task)
  widths = embedded.widths(tokenizer, t, embedded.all_records(srcs))
  optimizer, schedule = make_optimizer(config.optim, config.steps)
  # The EMA teacher starts at the base student (init_state copies it).
  state = init_state(params, optimizer, teacher=params, seed=config.seed)
  opd_step = make_opd_step(
      graphdef, graphdef, optimizer, schedule, objective=config.objective.name,
      hparams=config.objective.hparams.to_dict(), report=tuple(config.report_objectives),
      compare_estimators=config.compare_estimators, chunk_size=config.chunk_size,
      ema_alpha=config.ema_alpha, importance_weights=config.importance_weights,
      diagnostics=config.get("diagnostics", False))  # diag/ metrics (caopd_jax.diagnostics)
  it = make_iteration(graphdef, opd_step, tokenizer, t,
                      num_samples=config.num_samples,
                      sampling=embedded.sampling_config(config.sampling, tokenizer),
                      caopd=config.caopd, mode=config.teacher_context)
  # prefix_source / curriculum (caopd_jax.prefixes); the defaults leave `it` as it is.
  it = prefixes.configure(config, it, opd_step, graphdef,
                          embedded.sampling_config(config.sampling, tokenizer))
  batches = data.BatchIterator(srcs["train"], config.prompts_per_step, seed=config.seed,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())

  def get_batch(step):
    return encode_prompts(tokenizer, t, batches.batch(step),
                          config.teacher_context, widths)

  if prefixes.curriculum_enabled(config):  # entropy-gated segments; train_loop below then
    state = prefixes.run_curriculum(      # finds the final checkpoint and returns at once
        config, workdir, state, it, get_batch, graphdef, srcs["test"],
        lambda recs: encode_prompts(tokenizer, t, recs, config.teacher_context, widths),
        embedded.sampling_config(config.sampling, tokenizer), train_loop,
        log_every=config.log_every, checkpoint_every=config.checkpoint_every,
        desc="OPD (curriculum)", mesh=config.get("mesh"), keep=config.get("keep_checkpoints", 2))
  state = train_loop(workdir=workdir, state=state, step_fn=it.iteration, get_batch=get_batch,
                     total_steps=config.steps, log_every=config.log_every,
                     checkpoint_every=config.checkpoint_every,
                     desc="CaOPD" if config.caopd else "OPD", mesh=config.get("mesh"),
                     keep=config.get("keep_checkpoints", 2))
  if jax.process_index() == 0:
    save_hf(nnx.merge(graphdef, state.params), model_dir + ".tmp", tokenizer=tokenizer)
    os.replace(model_dir + ".tmp", model_dir)
  distributed.barrier("export")  # other hosts wait until process 0 has written the model
  return model_dir
