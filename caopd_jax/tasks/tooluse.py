"""`tooluse`: ReAct-style API calls (ToolAlpaca, CaOPD/SDFT format).

Verifier (released code): the first `Action: name` line and the balanced `{...}` after the first
`Action Input:`, JSON-normalised with sort_keys; correct iff both equal the FIRST golden call.
The CaOPD cut is at the FIRST "Confidence:": the verifier scores only the first call, and cutting
at the last marker would keep any further (hallucinated) actions in the distillation target.
"""

import json
import re
from typing import Any, Mapping, Sequence

from caopd_jax.tasks.chat import ChatTask

_ACTION_RE = re.compile(r"Action:\s*([^\n]+)", re.IGNORECASE)


def _balanced_object(text: str, start: int) -> str | None:
  """The balanced `{...}` starting at text[start] == '{'; braces inside JSON strings
  (double-quoted, backslash escapes) are ignored. None when it never closes."""
  depth, in_str, esc = 0, False, False
  for i in range(start, len(text)):
    ch = text[i]
    if in_str:
      if esc:
        esc = False
      elif ch == "\\":
        esc = True
      elif ch == '"':
        in_str = False
    elif ch == '"':
      in_str = True
    elif ch == "{":
      depth += 1
    elif ch == "}":
      depth -= 1
      if depth == 0:
        return text[start:i + 1]
  return None


def _json_after(text: str, prefix: str) -> str | None:
  """Argument string after the first `prefix`: None if absent, '{}' if no '{' follows or the
  object never closes (as released), else the balanced object."""
  idx = text.find(prefix)
  if idx < 0:
    return None
  brace = text.find("{", idx)
  if brace < 0:
    return "{}"
  obj = _balanced_object(text, brace)
  return "{}" if obj is None else obj


def normalize_json(s: Any) -> str:
  """json.dumps(json.loads(s), sort_keys=True); '' -> '{}'; non-JSON -> the stripped string;
  non-string values (e.g. a dict) are dumped directly."""
  if not isinstance(s, str):
    return json.dumps(s, sort_keys=True)
  s = s.strip()
  if not s:
    return "{}"
  try:
    return json.dumps(json.loads(s), sort_keys=True)
  except (json.JSONDecodeError, ValueError):
    return s


def parse_tool_call(text: str) -> tuple[str, str] | None:
  """The first tool call of a response as (action name, normalised JSON arguments).

  name: the rest of the line after the first `Action:` (case-insensitive); none -> None.
  args: the balanced `{...}` after the first `Action Input:` (fallback `Action_Input:`); braces
  in JSON strings do not count; missing, no '{' or never closing -> '{}' (released behaviour);
  malformed JSON is kept as the raw stripped string.
  """
  if not isinstance(text, str):
    return None
  m = _ACTION_RE.search(text)
  if m is None:
    return None
  raw = _json_after(text, "Action Input:")
  if raw is None:
    raw = _json_after(text, "Action_Input:")
  return m.group(1).strip(), normalize_json(raw or "{}")


def first_golden_call(golden_answer: Any) -> tuple[str, str] | None:
  """The first golden call normalised: a list of {"Action", "Action_Input"} (or its JSON
  string), a single dict, `Action Input` / `action` key variants or a dict-valued input."""
  g = golden_answer
  if isinstance(g, str):
    try:
      g = json.loads(g)
    except json.JSONDecodeError:
      return None
  if isinstance(g, Mapping):
    g = [g]
  if not isinstance(g, Sequence) or isinstance(g, str):
    try:
      g = list(g)  # e.g. a numpy object array
    except TypeError:
      return None
  if len(g) == 0 or not isinstance(g[0], Mapping):
    return None
  first = g[0]
  action = str(first.get("Action") or first.get("action") or "").strip()
  return action, normalize_json(first.get("Action_Input") or first.get("Action Input") or "{}")


def tooluse_correct(text: str, golden_answer: Any) -> bool:
  """True iff `parse_tool_call(text)` equals the first golden call (name and JSON)."""
  gold = first_golden_call(golden_answer)
  pred = parse_tool_call(text)
  return gold is not None and pred is not None and pred == gold


class Tooluse(ChatTask):
  name = "tooluse"
  dataset = "tooluse"
  cut = "first"

  def gold(self, record):
    return record["golden_answer"]

  def is_correct(self, text, gold):
    return tooluse_correct(text, gold)

  def gold_demo(self, record):
    calls = record["golden_answer"]
    calls = json.loads(calls) if isinstance(calls, str) else calls
    return f"Action: {calls[0]['Action']}\nAction Input: {calls[0]['Action_Input']}"
