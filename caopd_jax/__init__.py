"""caopd_jax: on-policy distillation and calibration-aware OPD in JAX/Flax NNX."""
