"""Optimizer and learning-rate schedule from a config (optax).

config fields (all required; defaults in configs/common.py): name ("adamw" | "sgd"), lr,
schedule ("constant" | "cosine" | "linear"), warmup_frac, end_lr, b1, b2, eps, weight_decay,
grad_clip (0 disables).
Defaults follow the CaOPD code: AdamW, lr 2e-5, cosine with 10% warmup, grad clip 1.0.
"""

import optax

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(cfg, total_steps: int):
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"Unknown schedule {cfg.schedule!r}; valid: {SCHEDULES}.")
  warmup = int(round(cfg.warmup_frac * total_steps))
  if cfg.schedule == "constant":
    if not warmup:
      return optax.constant_schedule(cfg.lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)], [warmup])
  if cfg.schedule == "cosine":
    warmup = max(warmup, 1)  # optax needs decay_steps > warmup_steps, even for 1-step runs
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(total_steps, warmup + 1),
                                              end_value=cfg.end_lr)
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, max(warmup, 1)),
                               optax.linear_schedule(cfg.lr, cfg.end_lr,
                                                     max(total_steps - warmup, 1))], [max(warmup, 1)])


def make_optimizer(cfg, total_steps: int):
  """(optax.GradientTransformation, schedule)."""
  schedule = make_schedule(cfg, total_steps)
  if cfg.name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  elif cfg.name == "sgd":
    opt = optax.sgd(schedule)
  else:
    raise ValueError(f"Unknown optimizer {cfg.name!r}; valid: {OPTIMIZERS}.")
  if cfg.grad_clip:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
  return opt, schedule
