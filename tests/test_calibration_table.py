"""The calibration-table experiment's target check: each of issue 14's six targets flips alone
when its own quantity crosses the threshold, the others held."""

import copy

import pytest

from experiments import calibration_table as ct


def _run(base=0.60, opd=0.70, opd_ocg=0.20, opd_ece=0.20, caopd=0.69, caopd_ocg=0.01,
         caopd_ece=0.09):
  return {"test": {"base": {"accuracy": base, "ocg": 0.2, "ece": 0.2},
                   "opd": {"accuracy": opd, "ocg": opd_ocg, "ece": opd_ece},
                   "caopd": {"accuracy": caopd, "ocg": caopd_ocg, "ece": caopd_ece}}}


@pytest.mark.parametrize("row, change", [
    (0, dict(base=0.50, opd=0.60, caopd=0.59)),   # base not above 50%
    (1, dict(opd=0.64, caopd=0.64)),              # OPD gains 0.04 < 0.05
    (2, dict(opd_ocg=0.10)),                      # OPD overclaims by exactly 0.10: not > 0.10
    (3, dict(caopd=0.679)),                       # CaOPD loses more than 0.02
    (4, dict(caopd_ocg=-0.05)),                   # |OCG| = 0.05 is not < 0.05
    (5, dict(caopd_ece=0.101)),                   # ECE above half of OPD's 0.20
])
def test_each_target_flips_alone(row, change):
  good, bad = _run(), _run(**change)
  for i, (_, test) in enumerate(ct.TARGETS):
    assert test(good["test"])
    assert test(bad["test"]) == (i != row), (i, change)
  table = ct.target_table({0: good, 1: bad}, "test")
  lines = table.splitlines()
  assert lines[2 + row].endswith("| yes | **no** |")
  assert table.endswith(f"{2 * len(ct.TARGETS) - 1} of {2 * len(ct.TARGETS)} hold.")
  assert copy.deepcopy(good) == _run()  # the check reads, never edits
