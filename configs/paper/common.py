"""The paper's OPD / CaOPD runs on real data (Qwen3 students, science MCQ and tool use).

Settings follow the paper and its released code (SalesforceAIResearch/CaOPD, scripts/run_*.sh):
K = 8 rollouts at T = 1, top_p = 1; 4 prompts x 8 rollouts = 32 sequences per optimizer step;
AdamW lr 2e-5, cosine with 10% warmup, grad clip 1, no weight decay; EMA teacher a = 0.01;
one epoch; 1024 prompt / 1024 completion tokens; bf16 compute; the first 3 completion tokens
skipped; per-sequence token mean; full-vocabulary KL(teacher || student) (`full_forward`, the
code's default; `kl=reverse` switches to KL(student || teacher)). Deviations from the released
code and why: docs/paper_configs.md.

Arguments (comma-separated key=value after the config path):
  size=0.6b|1.7b|4b|8b      student Qwen3-{size} (default 0.6b)
  model_root=DIR            folder holding Qwen3-0.6B/ ... Qwen3-8B/ (default $CAOPD_MODEL_ROOT
                            or /models); or set --config.init_from directly
  caopd=1|0                 CaOPD (default) or plain OPD/SDFT
  kl=forward|reverse        KL(teacher || student) (default) or KL(student || teacher)
  context=demo|correct_solution
  teacher=ema|fixed         EMA self-teacher (default) or a fixed checkpoint (teacher_size=...)
  teacher_size=8b           with teacher=fixed: the teacher Qwen3-{teacher_size} under model_root
  thinking=1|0              Qwen3 chat template's enable_thinking (default: the template default)
"""

import os

import ml_collections

SIZES = {"0.6b": "Qwen3-0.6B", "1.7b": "Qwen3-1.7B", "4b": "Qwen3-4B", "8b": "Qwen3-8B"}
MODEL_ROOT_ENV = "CAOPD_MODEL_ROOT"
DATA_ENV = "CAOPD_DATA_DIR"  # holds science_data/ and tooluse_data/ (train_data/, eval_data/)
# Device mesh (data, fsdp, tensor) of caopd_jax.sharding: FSDP over every device by default.
MESH = {"0.6b": (1, -1, 1), "1.7b": (1, -1, 1), "4b": (1, -1, 1), "8b": (1, -1, 1)}
DEFAULTS = dict(size="0.6b", model_root="", caopd="1", kl="forward", context="demo",
                teacher="ema", teacher_size="", thinking="")


def parse_arg(arg, **defaults):
  """'a=1,b=x' -> dict over `defaults` (unknown keys raise, listing the valid ones)."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"Config argument {item!r} is not key=value.")
    if key not in out:
      raise ValueError(f"Unknown config argument {key!r}; valid: {sorted(out)}.")
    out[key] = value
  return out


def _flag(value) -> bool:
  return str(value).lower() in ("1", "true", "yes", "on")


def model_dir(root, size):
  if size not in SIZES:
    raise ValueError(f"Unknown size {size!r}; valid: {sorted(SIZES)}.")
  return os.path.join(root or os.environ.get(MODEL_ROOT_ENV, "/models"), SIZES[size])


def chat_kwargs(thinking):
  return ml_collections.ConfigDict({} if thinking == "" else {"enable_thinking": _flag(thinking)})


def data(split="train"):
  return ml_collections.ConfigDict(dict(
      manual_dir=os.environ.get(DATA_ENV, ""),  # '' -> $CAOPD_DATA_DIR or an already-prepared copy
      data_dir="",  # tfds output; '' -> WORKDIR/tfds
      split=split,
      limit=0))  # > 0: only the first N records (smoke runs)


def evaluation(task, thinking="", **overrides):
  """Deployment-time evaluation: one sample per eval question (fields of jobs/evaluate.py)."""
  d = data("eval")
  del d["limit"]  # evaluation has its own `limit`
  e = ml_collections.ConfigDict(dict(
      enabled=True, task=task, data=d, limit=0, batch_size=64, max_prompt_len=1024,
      max_new_tokens=1024, temperature=1.0, top_p=1.0, top_k=0, seed=0, dtype="bfloat16",
      decode_segments=8,  # sampling.SamplingConfig: the decode loop in 8 growing-cache segments
      chat_template_kwargs=chat_kwargs(thinking), mesh=(1, -1, 1)))
  e.update(overrides)
  return e


def real_opd(task, arg=None):
  a = parse_arg(arg, **DEFAULTS)
  if a["kl"] not in ("forward", "reverse"):
    raise ValueError(f"kl must be forward or reverse, got {a['kl']!r}.")
  c = ml_collections.ConfigDict()
  c.job = "real_opd"
  c.seed = 42
  c.task = task
  c.data = data("train")
  c.init_from = model_dir(a["model_root"], a["size"])  # local HF directory of the student
  c.tokenizer = ""  # '' -> init_from
  c.dtype = "bfloat16"  # compute dtype; parameters and optimizer state are float32
  c.teacher = ml_collections.ConfigDict(dict(
      kind=a["teacher"], ema_alpha=0.01,
      path=model_dir(a["model_root"], a["teacher_size"]) if a["teacher"] == "fixed" else ""))
  c.caopd = _flag(a["caopd"])
  c.teacher_context = a["context"]
  c.chat_template_kwargs = chat_kwargs(a["thinking"])
  c.demo_fallback = "gold"  # rows without a demonstration get one written from the gold label
  c.num_samples = 8  # K
  c.prompts_per_step = 4  # 4 prompts x 8 rollouts = 32 sequences per optimizer step
  c.epochs = 1
  c.steps = 0  # 0 -> one pass: epochs * len(train) // prompts_per_step
  c.max_prompt_len = 1024  # student prompt and teacher head, left-truncated
  c.max_demo_len = 1024  # demonstration in the teacher context, right-truncated
  c.max_completion_len = 1024  # sampled tokens; the CaOPD suffix is added on top
  # decode_segments: the decode loop in 8 segments with a growing KV cache (sampling.py)
  c.sampling = ml_collections.ConfigDict(dict(temperature=1.0, top_p=1.0, top_k=0,
                                              decode_segments=8))
  c.objective = ml_collections.ConfigDict(dict(
      name="full_forward" if a["kl"] == "forward" else "full_reverse",
      hparams=ml_collections.ConfigDict(dict(reduction="sequence_mean", skip_first=3))))
  c.report_objectives = ()
  c.chunk_size = 128  # sequence chunk of the full-vocabulary loss (vocab 151936)
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=2e-5, schedule="cosine", warmup_frac=0.1, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.0, grad_clip=1.0))
  c.mesh = MESH[a["size"]]
  c.log_every = 1
  c.checkpoint_every = 100
  c.keep_checkpoints = 2
  c.export_dtype = "bfloat16"  # dtype of the exported safetensors (transformers / vLLM)
  c.eval = evaluation(task, a["thinking"])
  return c
