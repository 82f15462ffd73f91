"""Training-free and training-time diagnostics of on-policy distillation.

  token_stats  per-token entropies, top-K mass/overlap, negative-reward fraction and log-ratio by
               position, chunk-wise from logits (logged by `make_opd_step(..., diagnostics=True)`)
  alignment    gradient alignment between the ideal (success-increasing) logit direction,
               estimated with targeted rollouts under a budget, and each objective's direction
  toy          targeted rollouts and exact success probabilities on the enumerable toy
Submodules are imported on use (keeps `train_step`'s import light).
"""
