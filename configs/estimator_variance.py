"""Bias and variance of OPD gradient estimators (experiments/estimator_variance.py).

  python -m experiments.estimator_variance --config configs/estimator_variance.py --out DIR
  python -m experiments.estimator_variance --config configs/estimator_variance.py:quick --out DIR
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Exactly enumerable toy (caopd_jax/toy/enumerable.py): exact bias and per-sequence variance.
  c.enum = ml_collections.ConfigDict()
  c.enum.vocab = 3
  c.enum.horizons = (2, 3, 4, 5, 6)
  c.enum.couplings = (0.0, 0.5, 1.0, 2.0)
  c.enum.seeds = 4                       # random (student, teacher) tables per cell
  c.enum.main_horizon = 4                # horizon of the bias/variance-vs-coupling table
  c.enum.main_coupling = 1.0             # coupling of the variance-vs-horizon table
  c.enum.student_scale = 0.5
  c.enum.student_noise = 0.0
  c.enum.teacher_scale = 2.0
  c.enum.gammas = (0.0, 0.25, 0.5, 0.75, 1.0)
  c.enum.topk = 2                        # topk_reverse k and vopd's baseline_top_k (V = 3)
  # (student_scale, teacher_scale) regimes for the vOPD-vs-token_sampled variance check
  c.enum.regimes = ((0.5, 2.0), (1.0, 1.0), (2.0, 0.5))

  # 1-D control toy (caopd_jax/toy/control1d.py).
  c.control = ml_collections.ConfigDict()
  c.control.gammas = (0.0, 0.25, 0.5, 0.75, 1.0)
  c.control.batch = 64
  c.control.micro = 8
  c.control.variance_draws = 16          # independent B=64 batches per variance estimate
  c.control.train_steps = 2000
  c.control.lr = 1e-3                    # Adam
  c.control.train_seeds = 1

  if arg == "quick":                     # smoke test (~1 min)
    c.enum.horizons = (2, 4)
    c.enum.couplings = (0.0, 1.0)
    c.enum.seeds = 1
    c.enum.regimes = ((0.5, 2.0),)
    c.control.gammas = (0.0, 1.0)
    c.control.variance_draws = 2
    c.control.train_steps = 50
  elif arg:
    raise ValueError(f"unknown config arg {arg!r}; valid: None, 'quick'")
  c.lock()
  return c
