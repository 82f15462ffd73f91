"""The default pipeline shrunk to run end to end in well under a minute (tests use it)."""

from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.task.update(dict(max_digits=2, ood_digits=1, num_train=400, num_test=40, num_ood=20))
  c.eval.update(dict(batch_size=40, max_new_tokens=16))
  c.base.model.update(dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                           head_dim=16, intermediate_size=64))
  c.base.update(dict(steps=20, batch_size=16, log_every=10, checkpoint_every=10))
  for stage in (c.opd, c.caopd):
    stage.update(dict(steps=4, num_samples=4, prompts_per_step=2, log_every=2, checkpoint_every=2))
    stage.sampling.max_new_tokens = 16
  return c
