"""Pieces shared by the embedded-task configs: the task, the tiny model, evaluation."""

import ml_collections


def task(**overrides):
  """The embedded arithmetic task (caopd_jax.data.arithmetic)."""
  t = ml_collections.ConfigDict(dict(
      name="arithmetic", op="add", min_digits=2, max_digits=3, ood_digits=1, seed=0,
      num_train=20000, num_test=1000, num_ood=500,
      answer_order="lsb",  # answers least-significant digit first (prompts.Templates)
      pad_operands=True))  # "37+05": operands zero-padded to the same width
  t.update(overrides)
  return t


def model(**overrides):
  """A ~0.8M-parameter Qwen3-style decoder over the character vocabulary."""
  m = ml_collections.ConfigDict(dict(
      arch="qwen3", hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
      intermediate_size=384, rope_theta=10000.0, tie_word_embeddings=True, dtype="float32"))
  m.update(overrides)
  return m


def evaluation(**overrides):
  """Deployment-time evaluation: one sample per question at the rollout temperature."""
  e = ml_collections.ConfigDict(dict(
      splits=("test",), batch_size=250, temperature=1.0, top_p=1.0, max_new_tokens=24,
      limit=0, seed=1234))
  e.update(overrides)
  return e
