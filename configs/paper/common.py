"""The paper's OPD / CaOPD runs on real data (Qwen3 students, science MCQ and tool use).

Settings follow the paper and its released code (SalesforceAIResearch/CaOPD, scripts/run_*.sh):
K = 8 rollouts at T = 1, top_p = 1; 4 prompts x 8 rollouts = 32 sequences per optimizer step;
AdamW lr 2e-5, cosine with 10% warmup, grad clip 1, no weight decay; EMA teacher a = 0.01;
one epoch; 1024 prompt / 1024 completion tokens; bf16 compute; the first 3 completion tokens
skipped; per-sequence token mean; full-vocabulary KL(teacher || student) (`full_forward`, the
code's default; `kl=reverse` switches to KL(student || teacher)). Deviations from the released
code and why: docs/paper_configs.md. The job is the one OPD job (caopd_jax/jobs/opd.py).

Arguments (comma-separated key=value after the config path):
  size=0.6b|1.7b|4b|8b      student Qwen3-{size} (default 0.6b)
  model_root=DIR            folder holding Qwen3-0.6B/ ... Qwen3-8B/ (default $CAOPD_MODEL_ROOT
                            or /models); or set --config.init_from directly
  caopd=true|false          CaOPD (default) or plain OPD/SDFT
  kl=forward|reverse        KL(teacher || student) (default) or KL(student || teacher)
  context=demo|correct_solution|none
  teacher=ema|fixed         EMA self-teacher (default) or a fixed checkpoint (teacher_size=...)
  teacher_size=8b           with teacher=fixed: the teacher Qwen3-{teacher_size} under model_root
  thinking=true|false       Qwen3 chat template's enable_thinking (default: the template's)
  hardware=h100x8|v5p-8|v4-32|v5e-16|v4-8
                            memory settings measured to fit that slice (PLANS; default: scanned
                            layers, full remat, one microbatch, float32 state, which fits every
                            size on h100x8, v5p-8 and v4-32); a size that does not fit is an error
"""

import os

import ml_collections

from caopd_jax import config_utils
from configs import common

SIZES = {"0.6b": "Qwen3-0.6B", "1.7b": "Qwen3-1.7B", "4b": "Qwen3-4B", "8b": "Qwen3-8B"}
MODEL_ROOT_ENV = "CAOPD_MODEL_ROOT"
DATA_ENV = "CAOPD_DATA_DIR"  # holds science_data/ and tooluse_data/ (train_data/, eval_data/)
# Device mesh (data, fsdp, tensor) of caopd_jax.sharding: FSDP over every device by default.
MESH = {"0.6b": (1, -1, 1), "1.7b": (1, -1, 1), "4b": (1, -1, 1), "8b": (1, -1, 1)}
CONTEXTS = ("demo", "correct_solution", "none")
# Memory per (size, hardware) from the compile-only planner (python -m experiments.plan_table;
# table and commands in docs/scaling.md): the default below fits wherever no entry says
# otherwise; None: nothing on the planner's ladder fits in 90% of that slice's HBM.
MEMORY = dict(scan_layers=True, remat="full", microbatches=1, param_dtype="float32",
              master_weights=False)
HARDWARE = ("h100x8", "v5p-8", "v4-32", "v5e-16", "v4-8")
PLANS = {("4b", "v5e-16"): dict(microbatches=2), ("4b", "v4-8"): None,
         ("8b", "v5e-16"): None, ("8b", "v4-8"): None}
# Where full fine-tuning does not fit, LoRA (rank 16, bfloat16 base and teacher, one sequence per
# device per microbatch) does: measured peaks 12.0 GiB of 16 (8B, v5e-16), 21.6 of 32 (8B, v4-8).
LORA_PLANS = {("8b", "v5e-16"): dict(microbatches=2), ("8b", "v4-8"): dict(microbatches=8)}


def parse(arg):
  a = config_utils.parse_arg(arg, size="0.6b", model_root="", caopd=True, kl="forward",
                             context="demo", teacher="ema", teacher_size="", thinking=None,
                             hardware="")
  config_utils.check_choice("size", a.size, tuple(SIZES))
  config_utils.check_choice("kl", a.kl, ("forward", "reverse"))
  config_utils.check_choice("context", a.context, CONTEXTS)
  config_utils.check_choice("teacher", a.teacher, ("ema", "fixed"))
  if a.teacher == "fixed":
    config_utils.check_choice("teacher_size", a.teacher_size, tuple(SIZES))
  a.thinking = None if a.thinking is None else config_utils.as_bool("thinking", a.thinking)
  if a.hardware:
    config_utils.check_choice("hardware", a.hardware, HARDWARE)
  return a


def memory(size, hardware):
  """The memory settings of `size` on `hardware` (PLANS); raises if the planner found none."""
  plan = PLANS.get((size, hardware), {})
  if plan is None:
    fits = [h for h in HARDWARE if PLANS.get((size, h), {}) is not None]
    lora = LORA_PLANS.get((size, hardware))
    hint = ("" if lora is None else
            f" LoRA fits there (drop hardware=): --config.lora.rank=16 --config.param_dtype=bfloat16 "
            f"--config.teacher.dtype=bfloat16 --config.microbatches={lora['microbatches']}.")
    raise ValueError(f"Qwen3-{size.upper()} full fine-tuning does not fit on {hardware} with any "
                     f"setting the planner tried (docs/scaling.md, 'Memory plans'); it fits on "
                     f"{fits}.{hint} Check a setting of your own with `python -m caopd_jax.plan`.")
  return {**MEMORY, **plan}


def model_dir(root, size):
  return os.path.join(root or os.environ.get(MODEL_ROOT_ENV, "/models"), SIZES[size])


def task(name, thinking=None, **overrides):
  """A real-data task (caopd_jax/tasks/science.py, tooluse.py) from a local manual_dir."""
  t = ml_collections.ConfigDict(dict(
      name=name,
      manual_dir=os.environ.get(DATA_ENV, ""),  # '' -> $CAOPD_DATA_DIR or a prepared copy
      limit=0,  # > 0: only the first N records of each split (smoke runs)
      demo_fallback="gold",  # rows without a demonstration get one written from the gold label
      chat_template_kwargs=ml_collections.ConfigDict(
          {} if thinking is None else {"enable_thinking": thinking})))
  if name == "science":  # evaluation reads answers with the released evaluation's parser
    t.eval_parser = "released"
  t.update(overrides)
  return t


def evaluation(**overrides):
  """Deployment-time evaluation on the eval split: one sample per question."""
  e = common.evaluation(splits=("eval",), batch_size=64, seed=0, max_prompt_len=1024,
                        group_by="", sampling=common.sampling(max_new_tokens=2048,
                                                              decode_segments=8))
  e.update(overrides)
  return e


def real_opd(task_name, arg=None):
  a = parse(arg)
  c = common.opd()
  c.seed = 42
  c.task = task(task_name, a.thinking)
  c.init_from = model_dir(a.model_root, a.size)
  c.dtype = "bfloat16"  # compute dtype; parameters and optimizer state are float32
  c.teacher.update(dict(kind=a.teacher, ema_alpha=0.01,
                        path=model_dir(a.model_root, a.teacher_size) if a.teacher == "fixed" else ""))
  c.caopd = a.caopd
  c.teacher_context = a.context
  c.steps = 0  # one pass: epochs * len(train) // prompts_per_step
  c.max_prompt_len = 1024  # student prompt and teacher head, left-truncated
  c.max_demo_len = 1024  # demonstration in the teacher context, right-truncated
  # 1024 sampled tokens (the CaOPD suffix is added on top), the decode loop in 8 segments
  c.sampling = common.sampling(max_new_tokens=1024, decode_segments=8)
  c.objective = ml_collections.ConfigDict(dict(
      name="full_forward" if a.kl == "forward" else "full_reverse",
      hparams=ml_collections.ConfigDict(dict(reduction="sequence_mean", skip_first=3))))
  c.report_objectives = ()
  c.chunk_size = 128  # sequence chunk of the full-vocabulary loss (vocab 151936)
  c.optim.update(dict(lr=2e-5))
  c.mesh = MESH[a.size]
  c.update(memory(a.size, a.hardware))
  c.log_every = 1
  c.export_dtype = "bfloat16"  # dtype of the exported safetensors (transformers / vLLM)
  c.eval = evaluation()
  return c
