"""Optimizer and learning-rate schedule from a config (optax).

config fields: name ("adamw" | "sgd"), lr, schedule ("constant" | "cosine" | "linear"),
warmup_frac, b1, b2, eps, weight_decay, grad_clip (0 disables), total_steps.
Defaults follow the CaOPD code: AdamW, lr 2e-5, cosine with 10% warmup, grad clip 1.0.
"""

import optax

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(cfg, total_steps: int):
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"Unknown schedule {cfg.schedule!r}; valid: {SCHEDULES}.")
  warmup = int(round(cfg.get("warmup_frac", 0.0) * total_steps))
  if cfg.schedule == "constant":
    if not warmup:
      return optax.constant_schedule(cfg.lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)], [warmup])
  if cfg.schedule == "cosine":
    warmup = max(warmup, 1)  # optax needs decay_steps > warmup_steps, even for 1-step runs
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(total_steps, warmup + 1),
                                              end_value=cfg.get("end_lr", 0.0))
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, max(warmup, 1)),
                               optax.linear_schedule(cfg.lr, cfg.get("end_lr", 0.0),
                                                     max(total_steps - warmup, 1))], [max(warmup, 1)])


def make_optimizer(cfg, total_steps: int):
  """(optax.GradientTransformation, schedule)."""
  schedule = make_schedule(cfg, total_steps)
  if cfg.name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                      eps=cfg.get("eps", 1e-8), weight_decay=cfg.get("weight_decay", 0.0))
  elif cfg.name == "sgd":
    opt = optax.sgd(schedule)
  else:
    raise ValueError(f"Unknown optimizer {cfg.name!r}; valid: {OPTIMIZERS}.")
  if cfg.get("grad_clip", 0.0):
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
  return opt, schedule
