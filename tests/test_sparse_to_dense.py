"""configs/sparse_to_dense.py: the stages are wired as the recipe says and share one budget (the
experiment itself is run by hand; experiments/README.md)."""

from caopd_jax import jobs
from configs import sparse_to_dense as cfg_lib
from experiments import sparse_to_dense as s2d


def test_stages_follow_the_recipe_within_one_budget():
  cfg = cfg_lib.get_config()
  stages = s2d.stage_configs(cfg, "/student", "/teacher", "/d", "/out")
  (_, _, a), (_, b1_dir, b1), (_, b2_dir, b2), (_, _, b3) = stages
  for _, _, c in stages:
    jobs.validate(c)
  assert (a.init_from, a.objective.name, a.steps) == ("/student", "grpo", cfg.budget)
  assert (b1.init_from, b1.objective.name) == ("/teacher", "grpo")
  assert b1.steps + b2.steps + b3.steps == cfg.budget
  teacher = b1_dir + "/model"
  assert (b2.init_from, b2.prefix_source, b2.teacher.kind, b2.teacher.path) == (
      "/student", "teacher", "fixed", teacher)
  assert (b3.init_from, b3.prefix_source, b3.teacher.path) == (b2_dir + "/model", "student", teacher)
  assert b2.objective.name == b3.objective.name == cfg.distill.objective
