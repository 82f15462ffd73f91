"""Every config check, before anything is read, loaded or trained (run.py calls `validate`).

A pipeline's stages are checked up front too, so a bad objective name fails in seconds rather
than after the base stage has trained. Errors are `ConfigError`s naming the stage and the key.
"""

import jax
import ml_collections
import numpy as np

from caopd_jax import contexts, objectives, sharding, tasks
from caopd_jax.evaluation import READOUTS
from caopd_jax.models import ModelConfig
from caopd_jax.models.config import LORA_TARGETS, REMAT
from caopd_jax.opd.iteration import LOSS_ON, PREFIX_SOURCES
from caopd_jax.opd.teachers import KINDS
from caopd_jax.sampling import SamplingConfig
from caopd_jax.train.optim import make_optimizer
from caopd_jax.train.step import NONFINITE_POLICIES

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
  """A config that cannot run; the message names the key."""


def _check(ok, message):
  if not ok:
    raise ConfigError(message)


def _sampling(c, where):
  try:
    SamplingConfig(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_k=c.top_k,
                   top_p=c.top_p, decode_segments=c.decode_segments)
  except ValueError as e:
    raise ConfigError(f"{where}: {e}") from None


def _common(c, where):
  tasks.get(c.task)
  _check(c.steps >= 1 if c.job == "sft" else c.steps >= 0,
         f"{where}.steps={c.steps}: must be >= 1" + ("" if c.job == "sft" else
                                                     " (or 0: `epochs` passes over the data)"))
  _check(c.log_every >= 1 and c.checkpoint_every >= 0 and c.keep_checkpoints >= 1,
         f"{where}: log_every >= 1, checkpoint_every >= 0 and keep_checkpoints >= 1 are needed.")
  sharding.mesh_shape(tuple(c.mesh), jax.device_count())
  make_optimizer(c.optim, max(c.steps, 2))
  _check(c.on_nonfinite in NONFINITE_POLICIES,
         f"{where}.on_nonfinite={c.on_nonfinite!r}: valid: {NONFINITE_POLICIES}.")
  _check(c.remat in REMAT, f"{where}.remat={c.remat!r}: valid: {REMAT}.")
  _check(c.param_dtype in DTYPES, f"{where}.param_dtype must be one of {DTYPES}.")
  rows = c.prompts_per_step * c.num_samples if c.job == "opd" else c.batch_size
  _check(c.microbatches >= 1 and rows % c.microbatches == 0,
         f"{where}.microbatches={c.microbatches}: must divide the {rows} sequences of a step.")


def _eval(e, where):
  if not e.enabled:
    return
  _check(len(e.splits) >= 1 and e.batch_size >= 1 and e.limit >= 0,
         f"{where}.eval: needs splits, batch_size >= 1 and limit >= 0.")
  _check(e.num_samples >= 1 and all(1 <= k <= e.num_samples for k in e.k),
         f"{where}.eval: num_samples >= 1 and every k in {tuple(e.k)} in [1, num_samples].")
  _check(e.confidence in READOUTS and e.confidence_tokens >= 1 and e.confidence_draws >= 1,
         f"{where}.eval.confidence={e.confidence!r}: one of {READOUTS} (with "
         f"confidence_tokens >= 1 and confidence_draws >= 1, got {e.confidence_tokens}, "
         f"{e.confidence_draws}).")
  _sampling(e.sampling, f"{where}.eval.sampling")


def opd(c, where="config"):
  _common(c, where)
  contexts.get(c.teacher_context)
  objectives.get_objective(c.objective.name).resolve(c.objective.hparams.to_dict())
  for name in c.report_objectives:
    objectives.get_objective(name)
  _check(c.teacher.kind in KINDS, f"{where}.teacher.kind={c.teacher.kind!r}: valid: {KINDS}.")
  _check(c.loss_on in LOSS_ON, f"{where}.loss_on={c.loss_on!r}: valid: {LOSS_ON}.")
  _check(c.prefix_source in PREFIX_SOURCES,
         f"{where}.prefix_source={c.prefix_source!r}: valid: {PREFIX_SOURCES}.")
  _check(not (c.caopd and c.prefix_source != "student"),
         f"{where}: prefix_source='teacher' is OPD-only (CaOPD's P_acc needs student rollouts).")
  _check(not (c.caopd and c.importance_weights),
         f"{where}: importance_weights=True is undefined for CaOPD (its completions are modified "
         "after sampling; the reference applies none).")
  _check(c.objective.name != "grpo" or (not c.caopd and not c.importance_weights
                                        and c.num_samples >= 2 and c.prefix_source == "student"),
         f"{where}: objective 'grpo' needs caopd=False, importance_weights=False (its clipped "
         "ratio already uses the sampler's log-probs), num_samples >= 2 (a group) and "
         "prefix_source='student'.")
  _check(c.steps > 0 or c.epochs >= 1, f"{where}: steps=0 needs epochs >= 1.")
  _check(c.num_samples >= 1 and c.prompts_per_step >= 1 and c.chunk_size >= 1,
         f"{where}: num_samples, prompts_per_step and chunk_size must be >= 1.")
  _check(c.dtype in DTYPES and c.export_dtype in DTYPES,
         f"{where}: dtype / export_dtype must be one of {DTYPES}.")
  _check(c.microbatches == 1 or not (c.compare_estimators or c.diagnostics),
         f"{where}: compare_estimators and diagnostics need microbatches=1.")
  _check(c.teacher.dtype in DTYPES, f"{where}.teacher.dtype must be one of {DTYPES}.")
  _check(c.lora.rank >= 0 and set(c.lora.targets) <= set(LORA_TARGETS) and 0 <= c.lora.dropout < 1,
         f"{where}.lora: rank >= 0, targets among {LORA_TARGETS}, 0 <= dropout < 1.")
  _check(c.overlong in ("truncate", "drop"),
         f"{where}.overlong={c.overlong!r}: valid: ('truncate', 'drop').")
  _sampling(c.sampling, f"{where}.sampling")
  _eval(c.eval, where)


def sft(c, where="config"):
  _common(c, where)
  _check(c.batch_size >= 1 and len(c.habit) >= 1, f"{where}: batch_size >= 1 and a habit needed.")
  for name, p in c.mix:
    _check(name == "student" or name in contexts.CONTEXTS,
           f"{where}.mix: {name!r} is neither 'student' nor a context {sorted(contexts.CONTEXTS)}.")
    _check(p >= 0, f"{where}.mix: negative probability for {name!r}.")
  _check(np.sum([p for _, p in c.mix]) > 0, f"{where}.mix: probabilities sum to 0.")
  for key in ("answer_noise", "context_noise"):
    _check(all(0 <= p < 1 for p in c[key]), f"{where}.{key}={c[key]}: each must be in [0, 1).")
    _check(not any(c[key]) or tasks.get(c.task).can_corrupt,
           f"{where}.{key}: task {c.task.name!r} has no way to corrupt an answer "
           "(Task.corrupt); set it to ().")
  levels = tasks.get(c.task).LEVELS
  _check(c.noise_by in levels, f"{where}.noise_by={c.noise_by!r}: valid for task "
         f"{c.task.name!r}: {levels}.")
  _check(0 <= c.noise_from < 1, f"{where}.noise_from={c.noise_from}: must be in [0, 1).")
  _check(0 <= c.easy_first.frac <= 1,
         f"{where}.easy_first.frac={c.easy_first.frac}: must be in [0, 1] (0: off).")
  _check(not c.easy_first.frac or c.easy_first.by in levels,
         f"{where}.easy_first.by={c.easy_first.by!r}: valid for task {c.task.name!r}: "
         f"{levels} (or easy_first.frac=0 to turn it off).")
  try:
    ModelConfig(vocab_size=8, **c.model)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{where}.model: {e}") from None


def evaluate(c, where="config"):
  tasks.get(c.task)
  _check(c.dtype in DTYPES, f"{where}.dtype must be one of {DTYPES}.")
  _eval(c.eval, where)


def pipeline(c, where="config"):
  for name, check in (("base", sft), ("opd", opd), ("caopd", opd)):
    stage = ml_collections.ConfigDict(c[name].to_dict())
    stage.task = c.task
    check(stage, f"{where}.{name}")
  k, grid = c.caopd.num_samples, c.base.num_samples
  _check(not c.caopd.caopd or grid % k == 0,
         f"{where}.caopd.num_samples={k}: CaOPD's teacher is asked to copy P_acc on the K={k} grid, "
         f"but the base learns to copy stated confidences on the K={grid} grid "
         f"({where}.base.num_samples), so some P_acc values are ones it never saw; use a K that "
         f"divides {grid} or set base.num_samples to a multiple of {k}.")
  evaluate(c, where)


def validate(config):
  """Raises ConfigError (or the registries' ValueError listing valid names) for a bad config."""
  check = {"opd": opd, "sft": sft, "evaluate": evaluate, "caopd_pipeline": pipeline}
  if config.job not in check:
    raise ConfigError(f"Unknown job {config.job!r}; valid jobs: {sorted(check)}.")
  try:
    check[config.job](config)
  except ConfigError:
    raise
  except (ValueError, KeyError, AttributeError) as e:
    raise ConfigError(str(e).strip("'\"")) from None
