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

from caopd_jax import contexts, data, distributed, evaluation, sharding, tasks, workdir as workdir_lib
from caopd_jax.models import Transformer, load_hf, lora, presets, save_hf
from caopd_jax.opd import curriculum, prompts, teachers, verify
from caopd_jax.opd.iteration import Iteration
from caopd_jax.sampling import SamplingConfig
from caopd_jax.tokenizers import CharTokenizer, check_vocabulary, load_tokenizer
from caopd_jax.train.loop import abstract_state, born_sharded, train_loop
from caopd_jax.train.optim import make_optimizer
from caopd_jax.train.step import make_opd_step, model_state


def init_dir(config, workdir):
  path = config.init_from or os.path.join(os.path.dirname(os.path.abspath(workdir)), "base", "model")
  if not os.path.exists(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"No student at {path!r}: set --config.init_from to a HF model "
                            "directory (config.json + safetensors + tokenizer), or train a base "
                            "with configs/base.py.")
  return path


def setup(config, workdir, abstract: bool = False):
  """Everything a run needs, without running it (tests drive single steps through this).

  abstract: nothing is loaded or allocated (caopd_jax.plan): the models come from their
  config.json or a preset (caopd_jax.models.presets), the state is ShapeDtypeStructs with their
  shardings; a missing tokenizer or data set is replaced by a stand-in (a CharTokenizer, the
  length caps as widths), which changes only the few tokens of the CaOPD tables."""
  if config.caopd and config.importance_weights:
    raise ValueError("importance_weights=True is undefined for CaOPD: its completions are "
                     "modified after sampling (the reference applies no importance weights).")
  # ---- mesh --------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(tuple(config.mesh))
  # ---- task and data ---------------------------------------------------------------------------
  task = tasks.get(config.task)
  context = contexts.get(config.teacher_context)
  student_dir = config.init_from if abstract else init_dir(config, workdir)
  try:
    tokenizer = load_tokenizer(config.tokenizer or student_dir)
    train = task.sources(config.data_dir or data.data_dir_for(workdir),
                         (config.train_split,))[config.train_split]
  except (FileNotFoundError, OSError):
    if not abstract:
      raise
    tokenizer, train = CharTokenizer(), []
  records = data.records(train)
  caps = dict(max_prompt_len=config.max_prompt_len, max_demo_len=config.max_demo_len)
  over = prompts.overlong(tokenizer, task, records, context, **caps)
  prompts.report_overlong(over, len(records), f"{task.name}/{config.train_split}", config.overlong)
  if config.overlong == "drop" and over.any():
    records = [r for r, o in zip(records, over) if not o]
  batches = data.BatchIterator(records or [{}], config.prompts_per_step, seed=config.seed,
                               num_epochs=None if config.steps else config.epochs,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
  steps = config.steps or len(batches)
  # ---- student, teacher, state: born sharded on the mesh ---------------------------------------
  dtype = jnp.dtype(config.dtype)
  options = dict(param_dtype=config.param_dtype, remat=config.remat,
                 scan_layers=config.scan_layers)
  adapters = dict(lora_rank=config.lora.rank, lora_alpha=config.lora.alpha,
                  lora_targets=tuple(config.lora.targets) if config.lora.rank else (),
                  lora_dropout=config.lora.dropout)
  if abstract:
    student = nnx.eval_shape(lambda: Transformer(presets.model_config(
        student_dir, dtype.name, **options, **adapters)))
  else:
    student = load_hf(student_dir, dtype=dtype, mesh=mesh, **options, **adapters)
    check_vocabulary(tokenizer, student.cfg.vocab_size, student_dir)
  # LoRA: only the adapters train; the base is frozen (one copy, shared with an EMA teacher)
  graphdef, params, *frozen = (nnx.split(student, lora.LoRAParam, nnx.Param) if config.lora.rank
                               else nnx.split(student))
  frozen = frozen[0] if frozen else None
  teacher = teachers.make_teacher(config.teacher.kind, graphdef, params, path=config.teacher.path,
                                  tokenizer=None if abstract else tokenizer,
                                  ema_alpha=config.teacher.ema_alpha, dtype=dtype,
                                  abstract=abstract, mesh=mesh, **options)
  optimizer, schedule = make_optimizer(config.optim, steps)
  shares_base = frozen is not None and teacher.graphdef is graphdef
  init = dict(seed=config.seed, master_weights=config.master_weights,
              teacher_dtype=jnp.dtype(config.teacher.dtype), frozen=frozen)
  if abstract:
    state = abstract_state(mesh, optimizer, params, teacher.params, **init)
  else:
    state, _ = born_sharded(mesh, optimizer, params, teacher.params, **init)
  # ---- iteration -------------------------------------------------------------------------------
  sampling = SamplingConfig.from_config(config.sampling, tokenizer)
  if records:
    widths = prompts.widths(tokenizer, task, records, context, **caps)
  else:  # (abstract, no data) the length caps
    widths = {"student": config.max_prompt_len, "head": config.max_prompt_len,
              "demo": config.max_demo_len}
    if context.sees_student_prompt:
      del widths["head"], widths["demo"]
  opd_step = make_opd_step(
      graphdef, teacher.graphdef, optimizer, schedule, objective=config.objective.name,
      hparams=config.objective.hparams.to_dict(), report=tuple(config.report_objectives),
      compare_estimators=config.compare_estimators, chunk_size=config.chunk_size,
      ema_alpha=teacher.ema_alpha, importance_weights=config.importance_weights,
      diagnostics=config.diagnostics, on_nonfinite=config.on_nonfinite,
      microbatches=config.microbatches, teacher_shares_base=shares_base)
  judge = verify.make(task, tokenizer, records, num_samples=config.num_samples,
                      width=sampling.max_new_tokens, vocab_size=student.cfg.vocab_size)
  consts = prompts.constants(tokenizer, task, context, records, config.num_samples)
  it = Iteration(graphdef, teacher.graphdef, opd_step, judge, context, consts,
                 config.num_samples, sampling, caopd=config.caopd,
                 prefix_source=config.prefix_source, teacher_shares_base=shares_base,
                 loss_on=config.loss_on)

  def encode(recs):
    return prompts.encode(tokenizer, task, recs, context, widths)

  return types.SimpleNamespace(
      task=task, context=context, tokenizer=tokenizer, graphdef=graphdef, state=state,
      teacher=teacher, iteration=it, steps=steps, widths=widths, records=records, encode=encode,
      get_batch=lambda step: encode(batches.batch(step)), sampling=sampling, mesh=mesh)


def main(config, workdir):
  model_dir = os.path.join(workdir, "model")
  name = "caopd" if config.caopd else "opd"
  workdir_lib.check_config(workdir, config)  # a rerun / resume with a changed config stops here
  if not os.path.exists(os.path.join(model_dir, "config.json")):
    run = setup(config, workdir)
    loop = dict(workdir=workdir, step_fn=run.iteration, get_batch=run.get_batch,
                total_steps=run.steps, log_every=config.log_every,
                checkpoint_every=config.checkpoint_every, keep=config.keep_checkpoints,
                mesh=run.mesh, desc=f"{'CaOPD' if config.caopd else 'OPD'} {run.task.name}")
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
    if jax.process_index() == 0:  # a LoRA student: merged weights, and its adapters (PEFT)
      model = nnx.merge(run.graphdef, model_state(state.params, state.frozen))
      save_hf(model, model_dir + ".tmp", tokenizer=run.tokenizer, dtype=config.export_dtype)
      if config.lora.rank:
        lora.save_peft(model, os.path.join(model_dir + ".tmp", "adapter"), config.init_from)
      os.replace(model_dir + ".tmp", model_dir)
    distributed.barrier("export")  # other hosts wait until process 0 has written the model
  else:
    logging.info("Already trained: %s", model_dir)
  # ---- eval --------------------------------------------------------------------------------------
  if config.eval.enabled:
    evaluation.evaluate_model(model_dir, config, workdir, name=name)
  return model_dir
