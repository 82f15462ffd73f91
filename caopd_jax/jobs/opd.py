"""Job `opd`: OPD or CaOPD of a student on any task (configs/opd.py, caopd.py, paper/*.py).

Every step is one compiled function (caopd_jax.opd.iteration): K rollouts per prompt, the task's
verifier, P_acc, the OPD batch with the configured teacher context, [the CaOPD transform], the
teacher's scoring (an EMA self-teacher or a fixed checkpoint), the loss and the update. Writes
WORKDIR/model (HF safetensors + tokenizer) and, with config.eval.enabled, WORKDIR/eval/*.
An interrupted run resumes from WORKDIR/checkpoints; a finished one only evaluates.
"""

import logging
import os
import types

import jax
import jax.numpy as jnp
from flax import nnx

from caopd_jax import contexts, data, distributed, evaluation, tasks, workdir as workdir_lib
from caopd_jax.models import load_hf, save_hf
from caopd_jax.opd import curriculum, prompts, teachers, verify
from caopd_jax.opd.iteration import Iteration
from caopd_jax.sampling import SamplingConfig
from caopd_jax.tokenizers import check_vocabulary, load_tokenizer
from caopd_jax.train.loop import train_loop
from caopd_jax.train.optim import make_optimizer
from caopd_jax.train.step import init_state, make_opd_step


def init_dir(config, workdir):
  path = config.init_from or os.path.join(os.path.dirname(os.path.abspath(workdir)), "base", "model")
  if not os.path.exists(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"No student at {path!r}: set --config.init_from to a HF model "
                            "directory (config.json + safetensors + tokenizer), or train a base "
                            "with configs/base.py.")
  return path


def setup(config, workdir):
  """Everything a run needs, without running it (tests drive single steps through this)."""
  if config.caopd and config.importance_weights:
    raise ValueError("importance_weights=True is undefined for CaOPD: its completions are "
                     "modified after sampling (the reference applies no importance weights).")
  # ---- task and data ---------------------------------------------------------------------------
  task = tasks.get(config.task)
  context = contexts.get(config.teacher_context)
  student_dir = init_dir(config, workdir)
  tokenizer = load_tokenizer(config.tokenizer or student_dir)
  train = task.sources(config.data_dir or data.data_dir_for(workdir),
                       (config.train_split,))[config.train_split]
  records = list(train)
  caps = dict(max_prompt_len=config.max_prompt_len, max_demo_len=config.max_demo_len)
  over = prompts.overlong(tokenizer, task, records, context, **caps)
  prompts.report_overlong(over, len(records), f"{task.name}/{config.train_split}", config.overlong)
  if config.overlong == "drop" and over.any():
    train = records = [r for r, o in zip(records, over) if not o]
  batches = data.BatchIterator(train, config.prompts_per_step, seed=config.seed,
                               num_epochs=None if config.steps else config.epochs,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
  steps = config.steps or len(batches)
  # ---- student, teacher, state -----------------------------------------------------------------
  dtype = jnp.dtype(config.dtype)
  student = load_hf(student_dir, dtype=dtype)
  check_vocabulary(tokenizer, student.cfg.vocab_size, student_dir)
  graphdef, params = nnx.split(student)
  teacher = teachers.make_teacher(config.teacher.kind, graphdef, params, path=config.teacher.path,
                                  tokenizer=tokenizer, ema_alpha=config.teacher.ema_alpha,
                                  dtype=dtype)
  optimizer, schedule = make_optimizer(config.optim, steps)
  state = init_state(params, optimizer, teacher=teacher.params, seed=config.seed)
  # ---- iteration -------------------------------------------------------------------------------
  sampling = SamplingConfig.from_config(config.sampling, tokenizer)
  widths = prompts.widths(tokenizer, task, records, context, **caps)
  opd_step = make_opd_step(
      graphdef, teacher.graphdef, optimizer, schedule, objective=config.objective.name,
      hparams=config.objective.hparams.to_dict(), report=tuple(config.report_objectives),
      compare_estimators=config.compare_estimators, chunk_size=config.chunk_size,
      ema_alpha=teacher.ema_alpha, importance_weights=config.importance_weights,
      diagnostics=config.diagnostics, on_nonfinite=config.on_nonfinite)
  judge = verify.make(task, tokenizer, records, num_samples=config.num_samples,
                      width=sampling.max_new_tokens, vocab_size=student.cfg.vocab_size)
  consts = prompts.constants(tokenizer, task, context, records, config.num_samples)
  it = Iteration(graphdef, teacher.graphdef, opd_step, judge, context, consts,
                 config.num_samples, sampling, caopd=config.caopd,
                 prefix_source=config.prefix_source)

  def encode(recs):
    return prompts.encode(tokenizer, task, recs, context, widths)

  return types.SimpleNamespace(
      task=task, context=context, tokenizer=tokenizer, graphdef=graphdef, state=state,
      teacher=teacher, iteration=it, steps=steps, widths=widths, records=records, encode=encode,
      get_batch=lambda step: encode(batches.batch(step)), sampling=sampling)


def main(config, workdir):
  model_dir = os.path.join(workdir, "model")
  name = "caopd" if config.caopd else "opd"
  workdir_lib.check_config(workdir, config)  # a rerun / resume with a changed config stops here
  if not os.path.exists(os.path.join(model_dir, "config.json")):
    run = setup(config, workdir)
    loop = dict(workdir=workdir, step_fn=run.iteration, get_batch=run.get_batch,
                total_steps=run.steps, log_every=config.log_every,
                checkpoint_every=config.checkpoint_every, keep=config.keep_checkpoints,
                mesh=config.mesh, desc=f"{'CaOPD' if config.caopd else 'OPD'} {run.task.name}")
    state = run.state
    # ---- loop --------------------------------------------------------------------------------
    if config.curriculum.enabled:  # entropy-gated segments; train_loop below then returns at once
      split = config.curriculum.split
      held = run.task.sources(config.data_dir or data.data_dir_for(workdir), (split,))[split]
      state = curriculum.run(config.curriculum, run.sampling.max_new_tokens, seed=config.seed,
                             state=state, graphdef=run.graphdef, sampling=run.sampling,
                             heldout=run.encode(list(held)[:config.curriculum.eval_prompts]),
                             train_loop=train_loop, **loop)
    state = train_loop(state=state, **loop)
    # ---- export ------------------------------------------------------------------------------
    if jax.process_index() == 0:
      save_hf(nnx.merge(run.graphdef, state.params), model_dir + ".tmp", tokenizer=run.tokenizer,
              dtype=config.export_dtype)
      os.replace(model_dir + ".tmp", model_dir)
    distributed.barrier("export")  # other hosts wait until process 0 has written the model
  else:
    logging.info("Already trained: %s", model_dir)
  # ---- eval --------------------------------------------------------------------------------------
  if config.eval.enabled:
    evaluation.evaluate_model(model_dir, config, workdir, name=name)
  return model_dir
