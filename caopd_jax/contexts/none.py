"""`none`: the teacher sees the student's prompt (plain distillation from a stronger teacher)."""

from caopd_jax.contexts.base import TeacherContext

NONE = TeacherContext("none", sees_student_prompt=True)
