"""Where the public CaOPD eval splits are (read in place, never copied into the repository).

$CAOPD_EVAL_DIR if set, else the first of ../shared/data/caopd_eval (next to the checkout) and
/work/shared/data/caopd_eval that holds both splits. Tests that need them are skipped, with the
path in the reason, when neither does.
"""
import os

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPLITS = ("science_data", "tooluse_data")


def _find():
  if os.environ.get("CAOPD_EVAL_DIR"):
    return os.environ["CAOPD_EVAL_DIR"]
  candidates = (os.path.join(os.path.dirname(_REPO), "shared", "data", "caopd_eval"),
                "/work/shared/data/caopd_eval")
  for c in candidates:
    if all(os.path.isdir(os.path.join(c, s)) for s in _SPLITS):
      return c
  return candidates[0]


EVAL_DIR = _find()
FOUND = all(os.path.isdir(os.path.join(EVAL_DIR, s)) for s in _SPLITS)
REASON = f"the public CaOPD eval splits are not at {EVAL_DIR} (set CAOPD_EVAL_DIR)"
