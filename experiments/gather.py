"""Gathers the final metrics of a sweep's jobs into one table (markdown, or CSV).

  python experiments/gather.py /tmp/sweep                 # markdown to stdout
  python experiments/gather.py /tmp/sweep --csv --out=/tmp/sweep/table.csv

Each sub-directory of DIR is a job. A pipeline job's WORKDIR/results.json ({stage: metrics})
gives one row per stage; a training job without one (e.g. a single OPD stage) gives one row,
its final training metrics (the last record of WORKDIR/metrics.jsonl). The job's sweep
arguments (from DIR/sweep.json, written by experiments/sweep.py) lead each row. Jobs that have
not finished are listed with status 'incomplete'.
"""

import argparse
import csv
import io
import json
import os
import sys

# Pipeline stage metrics, in the order of caopd_jax.jobs.pipeline.COLUMNS.
PIPELINE_COLUMNS = ("accuracy", "ece", "brier", "spr", "ocg", "auroc", "mean_confidence",
                    "adherence")


def _last_jsonl(path):
  last = None
  with open(path) as f:
    for line in f:
      if line.strip():
        last = json.loads(line)
  return last


def _job_values(directory):
  path = os.path.join(directory, "sweep.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {j["name"]: j.get("values", {}) for j in json.load(f)["jobs"]}


def collect(directory: str) -> list[dict]:
  """One dict per (job, stage): {'job', <sweep args>, 'stage', 'status', <metrics>}."""
  values = _job_values(directory)
  names = sorted(set(values) | {d for d in os.listdir(directory)
                                if os.path.isdir(os.path.join(directory, d))})
  rows = []
  for name in names:
    jobdir = os.path.join(directory, name)
    head = {"job": name, **values.get(name, {})}
    results = os.path.join(jobdir, "results.json")
    metrics = os.path.join(jobdir, "metrics.jsonl")
    if os.path.exists(results):
      with open(results) as f:
        res = json.load(f)
      for stage, m in res.items():
        if isinstance(m, dict) and stage != "splits":
          rows.append({**head, "stage": stage, "status": "done",
                       **{k: v for k, v in m.items() if isinstance(v, (int, float))}})
    elif os.path.exists(metrics) and _last_jsonl(metrics):
      last = _last_jsonl(metrics)
      done = os.path.exists(os.path.join(jobdir, "run_complete.json"))
      rows.append({**head, "stage": "train", "status": "done" if done else "incomplete",
                   **{k: v for k, v in last.items()}})
    elif name in values:
      rows.append({**head, "stage": "", "status": "incomplete"})
  return rows


_FIXED = ("job", "stage", "status")


def _is_metric(key):
  return ("/" in key or key in PIPELINE_COLUMNS or key in ("step", "n") or
          key.startswith(("accuracy_", "confidence_")))


def _columns(rows, metrics=None):
  """job, the sweep arguments, stage, status, then the metrics (pipeline ones first)."""
  args = []
  for r in rows:
    args += [k for k in r if k not in _FIXED and not _is_metric(k) and k not in args]
  if metrics:
    rest = list(metrics)
  else:
    present = {k for r in rows for k in r}
    rest = [k for k in PIPELINE_COLUMNS if k in present] + (["step"] if "step" in present else [])
    for r in rows:
      rest += [k for k in r if "/" in k and k not in rest]
  return ["job"] + args + ["stage", "status"] + rest


def _fmt(v):
  if isinstance(v, float):
    return f"{v:.4g}"
  return "" if v is None else str(v)


def table(rows, metrics=None, fmt="md") -> str:
  """The rows as a markdown (fmt='md') or CSV (fmt='csv') table."""
  if not rows:
    return "(no results)"
  cols = _columns(rows, metrics)
  if fmt == "csv":
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: r.get(k, "") for k in cols})
    return buf.getvalue()
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    lines.append("| " + " | ".join(_fmt(r.get(k)) for k in cols) + " |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("directory")
  parser.add_argument("--csv", action="store_true", help="CSV instead of markdown")
  parser.add_argument("--metrics", default="", help="comma-separated metric columns")
  parser.add_argument("--stages", default="", help="comma-separated stages to keep")
  parser.add_argument("--out", default="", help="also write the table to this file")
  args = parser.parse_args(argv)
  rows = collect(args.directory)
  if args.stages:
    keep = set(args.stages.split(","))
    rows = [r for r in rows if r["stage"] in keep]
  text = table(rows, [m for m in args.metrics.split(",") if m] or None,
               "csv" if args.csv else "md")
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + ("" if text.endswith("\n") else "\n"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
