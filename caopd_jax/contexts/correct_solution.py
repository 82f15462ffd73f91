"""`correct_solution` (SDPO): the answer part of the prompt's first verified rollout.

The paper means a verified student rollout; the released code uses the golden demonstration
instead. Here a prompt with no correct rollout (or no rollouts, for teacher-sampled prefixes)
falls back to its demonstration; `rollout/solution_from_rollout` reports how often it did not.
"""

import jax.numpy as jnp

from caopd_jax.contexts.base import TeacherContext, pad_to


class CorrectSolution(TeacherContext):

  def solution(self, prompts, verdict, num_samples: int):
    demo, demo_valid = prompts["demo"], prompts["demo_valid"]
    if verdict is None:
      return (demo, demo_valid), {}
    b = demo.shape[0]
    first = jnp.argmax(verdict.correct, axis=-1)  # the first verified rollout of each prompt
    rows = jnp.arange(b) * num_samples + first
    sol = verdict.answer[rows]
    width = sol.shape[1]
    sol_valid = jnp.arange(width)[None, :] < verdict.answer_len[rows][:, None]
    has = jnp.any(verdict.correct, axis=-1)[:, None]
    w = max(width, demo.shape[1])
    ids = jnp.where(has, pad_to(sol, w, 0), pad_to(demo, w, 0))
    valid = jnp.where(has, pad_to(sol_valid, w, False), pad_to(demo_valid, w, False))
    return (ids, valid), {"rollout/solution_from_rollout": jnp.mean(has.astype(jnp.float32))}


CORRECT_SOLUTION = CorrectSolution("correct_solution", intro="\n\nCorrect solution:\n",
                                   instruction="\n\nCorrectly solve the original question.\n")
