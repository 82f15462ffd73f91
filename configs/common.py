"""Pieces shared by the configs: tasks, the tiny model, sampling, evaluation, the OPD and SFT
jobs. Every default of the program lives here (or in the config files that override it)."""

import ml_collections

C = ml_collections.ConfigDict


def arithmetic_task(**overrides):
  """The embedded arithmetic task (caopd_jax/tasks/arithmetic.py)."""
  t = C(dict(name="arithmetic", op="add", min_digits=2, max_digits=3, ood_digits=1, seed=0,
             num_train=20000, num_test=1000, num_ood=500,
             answer_order="lsb",  # answers least-significant digit first
             pad_operands=True))  # "37+05": operands zero-padded to the same width
  t.update(overrides)
  return t


def model(**overrides):
  """A ~0.8M-parameter Qwen3-style decoder over the character vocabulary (models.ModelConfig)."""
  m = C(dict(arch="qwen3", hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
             head_dim=32, intermediate_size=384, rope_theta=10000.0, tie_word_embeddings=True,
             dtype="float32"))
  m.update(overrides)
  return m


def small_model(**overrides):
  """A ~0.33M-parameter student (hidden 96, 3 layers): the weaker student of the
  estimator-capability and sparse-to-dense experiments (it learns 2-digit, not 3-digit addition
  in 1500 SFT steps)."""
  return model(hidden_size=96, num_layers=3, num_heads=3, num_kv_heads=1, intermediate_size=288,
               **overrides)


def sampling(**overrides):
  """caopd_jax.sampling.SamplingConfig.from_config; decode_segments: the decode loop in that many
  while_loops with a growing KV cache (faster for long generations, same tokens)."""
  s = C(dict(max_new_tokens=24, temperature=1.0, top_p=1.0, top_k=0, decode_segments=1))
  s.update(overrides)
  return s


def evaluation(**overrides):
  """Deployment-time evaluation (caopd_jax.evaluation): one sample per question."""
  e = C(dict(enabled=True, splits=("test",), limit=0, batch_size=250, seed=1234,
             num_samples=1,  # n sampled responses per question (calibration over all of them)
             k=(1,),  # Pass@k for these k <= n (Chen et al. 2021), and Avg@n
             max_prompt_len=0,  # student prompts longer than this are left-truncated (0: none)
             group_by="difficulty",  # per-value accuracy / confidence of this record field
             # How the stated confidence is read (caopd_jax/evaluation.py): "sampled" (as
             # drawn), "greedy" (re-decoded at T=0 after the response's confidence marker, the
             # answer kept) or "mean" (the mean of confidence_draws re-decoded draws; one
             # sampler call of batch_size x confidence_draws rows: lower batch_size for big models).
             confidence="sampled", confidence_tokens=8, confidence_draws=16,
             sampling=sampling()))
  e.update(overrides)
  return e


def memory(**overrides):
  """What bounds a step's memory (docs/scaling.md; `python -m caopd_jax.plan` sizes them)."""
  m = dict(
      microbatches=1,  # gradient accumulation inside the one jitted step (same update)
      remat="none",  # per-layer rematerialisation: none | full | save_dots
      scan_layers=False,  # one lax.scan over stacked layers (compile time independent of depth)
      param_dtype="float32",  # parameter storage: float32 | bfloat16 (pure bf16 like the release)
      master_weights=False)  # with bfloat16 parameters: a float32 copy the optimizer updates
  m.update(overrides)
  return m


def opd(**overrides):
  """The OPD / CaOPD job (caopd_jax/jobs/opd.py) on the embedded task."""
  c = C()
  c.job = "opd"
  c.seed = 0
  c.data_dir = ""  # tfds output; '' -> WORKDIR/tfds
  c.task = arithmetic_task()
  c.train_split = "train"
  c.init_from = ""  # HF directory of the student; '' -> WORKDIR/../base/model
  c.tokenizer = ""  # '' -> init_from
  c.dtype = "float32"  # compute dtype; parameters and optimizer state are float32
  c.teacher = C(dict(
      kind="ema",  # "ema": starts at the student, theta_T <- (1-a) theta_T + a theta_S per step;
      path="",     # "fixed": the HF checkpoint at `path` (same tokenizer), never updated
      # a (ref_model_mixup_alpha). The paper uses 0.01 (configs/paper/); on this 0.8M-parameter
      # toy 0.01 lets the student's drift reach the teacher within ~100 steps and it stops
      # copying the demonstration's confidence digits; 0.001 keeps it near the base.
      ema_alpha=0.001,
      dtype="float32"))  # the teacher's parameter dtype ("bfloat16": half the memory)
  c.caopd = False
  c.teacher_context = "demo"  # caopd_jax.contexts: demo | correct_solution | none
  c.num_samples = 8  # K rollouts per prompt
  c.prompts_per_step = 4  # 4 prompts x 8 rollouts = 32 sequences per step, as in the paper
  c.steps = 300  # 0: `epochs` passes over the train split
  c.epochs = 1
  c.max_prompt_len = 0  # student prompt and teacher head, left-truncated (0: no cap)
  c.max_demo_len = 0  # demonstration in the teacher context, right-truncated (0: no cap)
  c.overlong = "truncate"  # records over the caps: "truncate" (counted, logged) or "drop"
  c.sampling = sampling()
  c.objective = C(dict(name="full_forward", hparams=C(dict(reduction="sequence_mean",
                                                             skip_first=0))))
  # Completion tokens in the loss: "completion" (all, as the paper) or "answer" (those before
  # the confidence marker: an ablation of what learning the stated confidence costs the answer)
  c.loss_on = "completion"
  c.report_objectives = ("full_reverse", "token_sampled")
  c.compare_estimators = False  # each reported estimator's gradient vs the exact one
  # Truncated importance weights min(pi/mu, objective.hparams.is_clip) from the sampler's
  # log-probs (matters with temperature/top-k/top-p sampling); OPD only.
  c.importance_weights = False
  c.diagnostics = False  # per-token diag/... metrics (caopd_jax.diagnostics.token_stats)
  c.chunk_size = 64  # sequence chunk of the full-vocabulary losses
  # "student" (on-policy) or "teacher" (the teacher samples with its context; OPD only) and the
  # entropy-gated length curriculum (caopd_jax.opd.curriculum; max_len 0 = max_new_tokens;
  # held-out prompts from `split`).
  c.prefix_source = "student"
  c.curriculum = C(dict(enabled=False, start=4, increment=4, max_len=0, every=20, h_min=0.5,
                        eval_prompts=32, split="test"))
  c.optim = C(dict(name="adamw", lr=3e-4, schedule="cosine", warmup_frac=0.1, b1=0.9, b2=0.999,
                   eps=1e-8, weight_decay=0.0, grad_clip=1.0, end_lr=0.0))
  c.mesh = (1, -1, 1)  # (data, fsdp, tensor); -1 = all remaining devices (caopd_jax.sharding)
  c.update(memory())
  # Low-rank adapters (caopd_jax.models.lora): rank 0 trains every parameter; rank r > 0 trains
  # only adapters on `targets`, the base frozen (one copy, shared with the EMA teacher).
  c.lora = C(dict(rank=0, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down"),
                  dropout=0.0))
  # Non-finite loss / gradient / parameters: "stop" (the run stops before checkpointing that
  # state) or "skip" (the update is skipped and counted, caopd_jax.train.step.guarded_update).
  c.on_nonfinite = "stop"
  c.log_every = 10
  c.checkpoint_every = 100
  c.keep_checkpoints = 2
  c.export_dtype = "float32"  # dtype of the exported safetensors
  c.eval = evaluation()
  c.update(overrides)
  return c


def sft(**overrides):
  """The base student's supervised warm-up (caopd_jax/jobs/sft.py) on the embedded task."""
  c = C()
  c.job = "sft"
  c.seed = 0
  c.data_dir = ""
  c.task = arithmetic_task()
  c.train_split = "train"
  c.model = model()
  c.steps = 1500
  c.batch_size = 64
  c.optim = C(dict(name="adamw", lr=3e-3, schedule="cosine", warmup_frac=0.05, b1=0.9, b2=0.98,
                   eps=1e-8, weight_decay=0.01, grad_clip=1.0, end_lr=0.0))
  # Format mix ((format, probability) pairs: "student" or a teacher context), the base's stated
  # confidence per difficulty from the lowest one up (its "habit"), the note probability in
  # teacher-format examples, K for the confidence grid.
  c.mix = (("student", 0.6), ("demo", 0.2), ("correct_solution", 0.2))
  c.habit = (0.88, 0.62)
  c.note_prob = 0.5
  # Label noise per difficulty (lowest first, the last repeats): the probability that a
  # student-format / teacher-format answer is wrong by one digit (the context's own solution
  # stays right). () = clean.
  c.answer_noise = ()
  c.context_noise = ()
  c.noise_by = "difficulty"  # or a task level (Task.LEVELS), e.g. "carries" for arithmetic
  c.noise_from = 0.0  # fraction of the steps trained on clean labels before the noise starts
  # The first frac x steps draw only records of level <= max_level under `by` ("difficulty" or
  # a task level such as "carries"; jobs/sft.py easy_subset), then the whole split. 0: off.
  c.easy_first = C(dict(frac=0.0, by="difficulty", max_level=0))
  c.num_samples = 8
  # True: each batch holds round(p x batch_size) rows of each format of `mix` (not a draw), each
  # format padded to its own width (the student format is about half the teacher formats' length);
  # the rows per format are multiples of the mesh's batch-sharding devices x microbatches
  c.length_buckets = False
  c.update(memory())
  c.on_nonfinite = "stop"
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.mesh = (1, -1, 1)
  c.update(overrides)
  return c
