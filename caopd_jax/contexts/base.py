"""`TeacherContext`: what the teacher sees before the student's completion.

OPD from privileged context (SDFT, Shenfeld et al. 2026; SDPO; CaOPD, Zhang et al. 2026, arXiv
2604.16830): the teacher is conditioned on information the deployed student never sees. A
context is assembled per prompt (`caopd_jax.opd.batch`) as

    head  solution  "\\nConfidence: " value  [CaOPD note]  tail

where the head and tail come from the task (its templates around the context's `intro` and
`instruction` wording), `solution` from the context (`solution`), and value is "1.00" (OPD: the
demonstration states certainty) or P_acc (CaOPD, `caopd_jax.opd.caopd.transform`). A context
with `sees_student_prompt` replaces all of it by the student's own prompt.
"""

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TeacherContext:
  name: str
  intro: str = ""  # text before the solution (the released CaOPD wording)
  instruction: str = ""  # text after the confidence (and note), before the template's end
  sees_student_prompt: bool = False  # True: the teacher sees exactly the student's prompt

  def solution(self, prompts, verdict, num_samples: int):
    """((ids, valid) [B, W], metrics): the context's middle part per prompt (default: the
    record's demonstration, `prompts["demo"]`). `verdict` holds the verified rollouts
    (caopd_jax.opd.verify.Verdict) or None when there are none (teacher-sampled prefixes)."""
    del verdict, num_samples
    return (prompts["demo"], prompts["demo_valid"]), {}


def pad_to(x, width, value):
  return jnp.pad(x, [(0, 0), (0, width - x.shape[1])], constant_values=value)
