"""Job `real_opd`: OPD / CaOPD of a local HF student on real data (science MCQ, tool use).

Each step (one compiled function, `caopd_jax.iteration` with a text verifier): K rollouts per
prompt from the student; on the host (through `jax.pure_callback`) every rollout is decoded,
verified (`verifiers.mcq_correct` / `tooluse_correct`), P_acc formed and, for CaOPD, the
completion cut at its last "Confidence:" and "\\nConfidence: {P_acc}" EOS spliced in; then the
teacher (EMA self-teacher or a fixed checkpoint, `caopd_jax.teachers`) scores the chat-template
teacher context (`caopd_jax.chat_prompts`) and the student is updated (`make_opd_step`).
`caopd_jax.trainer.train_loop` runs the steps (resume, checkpoints, metrics.jsonl).

Writes WORKDIR/model (HF safetensors + tokenizer: loads in transformers and vLLM) and, with
config.eval.enabled, WORKDIR/eval/{task}_{split}.json (+ responses, reliability diagram).

  python run.py --config=configs/paper/qwen3_science.py:size=0.6b --workdir=/ckpt/sci_0.6b
"""

import logging
import os

import jax
import jax.numpy as jnp
from flax import nnx

from caopd_jax import chat_prompts, data, distributed
from caopd_jax.iteration import make_iteration
from caopd_jax.jobs import evaluate
from caopd_jax.models import load_hf, save_hf
from caopd_jax.optim import make_optimizer
from caopd_jax.sampling import SamplingConfig
from caopd_jax.teachers import make_teacher
from caopd_jax.tokenizers import load_tokenizer
from caopd_jax.train_step import init_state, make_opd_step
from caopd_jax.trainer import train_loop


class _Head:
  """The first `n` records of a random-access source (same interface as `data.Source`)."""

  def __init__(self, source, n: int):
    self.source, self.n = source, min(int(n), len(source))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return self.source[range(self.n)[i]]

  def __getitems__(self, indices):
    return self.source.__getitems__([range(self.n)[i] for i in indices])

  def __iter__(self):
    return iter(self.source.__getitems__(list(range(self.n))))


def templates(config) -> chat_prompts.ChatTemplates:
  kwargs = tuple(sorted(config.get("chat_template_kwargs", {}).items()))
  return chat_prompts.ChatTemplates(chat_kwargs=kwargs, demo_fallback=config.demo_fallback)


def setup(config, workdir):
  """Everything a run needs, without running it (tests drive single steps through this)."""
  if not os.path.exists(os.path.join(config.init_from, "config.json")):
    raise FileNotFoundError(f"No HF student at {config.init_from!r}: set --config.init_from to a "
                            "local model directory (config.json + safetensors + tokenizer).")
  tokenizer = load_tokenizer(config.tokenizer or config.init_from)
  dtype = jnp.dtype(config.dtype)
  student = load_hf(config.init_from, dtype=dtype)
  vocab_size = student.cfg.vocab_size
  graphdef, params = nnx.split(student)
  teacher = make_teacher(config.teacher.kind, graphdef, params, path=config.teacher.path,
                         tokenizer=tokenizer, ema_alpha=config.teacher.ema_alpha, dtype=dtype)
  t = templates(config)
  task, mode = config.task, config.teacher_context
  manual = {"manual_dir": config.data.manual_dir} if config.data.manual_dir else {}
  source = data.get_source(task, config.data.split,
                           config.data.data_dir or data.data_dir_for(workdir), **manual)
  if config.data.get("limit"):  # the first N records only (smoke runs)
    source = _Head(source, config.data.limit)
  records = list(source)
  widths = chat_prompts.chat_widths(tokenizer, t, records, task, mode,
                                    max_prompt_len=config.max_prompt_len,
                                    max_demo_len=config.max_demo_len)
  batches = data.BatchIterator(source, config.prompts_per_step, seed=config.seed,
                               num_epochs=config.epochs, process_index=jax.process_index(),
                               process_count=jax.process_count())
  steps = config.steps or len(batches)
  optimizer, schedule = make_optimizer(config.optim, steps)
  state = init_state(params, optimizer, teacher=teacher.params, seed=config.seed)
  opd_step = make_opd_step(
      graphdef, teacher.graphdef, optimizer, schedule, objective=config.objective.name,
      hparams=config.objective.hparams.to_dict(), report=tuple(config.report_objectives),
      chunk_size=config.chunk_size, ema_alpha=teacher.ema_alpha)
  sampling = SamplingConfig(
      max_new_tokens=config.max_completion_len, temperature=config.sampling.temperature,
      top_p=config.sampling.top_p, top_k=config.sampling.top_k,
      decode_segments=config.sampling.get("decode_segments", 1),
      stop_ids=chat_prompts.stop_ids(tokenizer), pad_id=tokenizer.pad_id)
  it = make_iteration(graphdef, opd_step, tokenizer, t, num_samples=config.num_samples,
                      sampling=sampling, caopd=config.caopd, mode=mode,
                      constants=chat_prompts.encode_chat_constants(tokenizer, t, records, task,
                                                                   mode, note=config.caopd),
                      text_verifier=chat_prompts.make_text_verifier(task, records),
                      marker_text=t.marker, vocab_size=vocab_size)

  def get_batch(step):
    return chat_prompts.encode_chat_prompts(tokenizer, t, batches.batch(step), task, mode, widths)

  return dict(tokenizer=tokenizer, graphdef=graphdef, state=state, iteration=it, teacher=teacher,
              get_batch=get_batch, steps=steps, widths=widths, templates=t, records=records)


def main(config, workdir):
  model_dir = os.path.join(workdir, "model")
  if not os.path.exists(os.path.join(model_dir, "config.json")):
    run = setup(config, workdir)
    desc = f"{'CaOPD' if config.caopd else 'OPD'} {config.task}"
    # train_loop places the state on config.mesh, shards each batch and returns host params.
    state = train_loop(workdir=workdir, state=run["state"], step_fn=run["iteration"].iteration,
                       get_batch=run["get_batch"], total_steps=run["steps"],
                       log_every=config.log_every, checkpoint_every=config.checkpoint_every,
                       keep=config.keep_checkpoints, desc=desc, mesh=config.mesh)
    if jax.process_index() == 0:
      save_hf(nnx.merge(run["graphdef"], state.params), model_dir + ".tmp",
              tokenizer=run["tokenizer"], dtype=config.export_dtype)
      os.replace(model_dir + ".tmp", model_dir)
    distributed.barrier("export")  # other hosts wait until process 0 has written the model
  else:
    logging.info("Already trained: %s", model_dir)
  if config.eval.enabled:
    e = config.eval
    records = evaluate.load_records(e.task, e.data.split, e.data, workdir, e.limit)
    return evaluate.evaluate_model(model_dir, e, os.path.join(workdir, "eval"), records=records,
                                   name="caopd" if config.caopd else "opd")
  return model_dir
