"""`demo` (SDFT): the record's demonstration, "Confidence: 1.00" (OPD) or P_acc (CaOPD)."""

from caopd_jax.contexts.base import TeacherContext

DEMO = TeacherContext(
    "demo", intro="\n\nThis is an example for a response to the question:\n",
    instruction="\n\nNow answer with a response of your own, including the thinking process.\n")
