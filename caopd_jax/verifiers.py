"""Verifiers: text verifiers (MCQ, tool use) and jittable token verifiers.

Text verifiers run on the host on decoded completions and return Python bools. Their semantics
follow the released CaOPD code (see /work/shared/reference/caopd.md, "Verifiers"):

* MCQ (science): the LAST ``<answer>X</answer>`` (tag case-insensitive, content without '<',
  may span lines), stripped and uppercased, equals the stripped, uppercased gold letter.
* Tool use: the first ``Action: name`` line and the balanced ``{...}`` after the first
  ``Action Input:``, JSON-normalised with ``sort_keys``; correct iff both equal the FIRST
  golden call.

Every text verifier has the signature ``verifier(text: str, gold) -> bool``; look them up by
name with ``get_text_verifier``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, Sequence

# ============================================================================================
# Text verifiers
# ============================================================================================

_ANSWER_TAG_RE = re.compile(r"<answer>\s*([^<]*?)\s*</answer>", re.DOTALL | re.IGNORECASE)
_ACTION_RE = re.compile(r"Action:\s*([^\n]+)", re.IGNORECASE)


def _gold_letter(gold: Any) -> str:
    """Accept 'A', [{'Answer': 'A'}], {'Answer': 'A'} or the JSON string of the list form."""
    if isinstance(gold, str) and gold.lstrip().startswith(("[", "{")):
        try:
            gold = json.loads(gold)
        except json.JSONDecodeError:
            return gold.strip().upper()
    if isinstance(gold, Mapping):
        gold = gold.get("Answer", "")
    elif isinstance(gold, Sequence) and not isinstance(gold, str):
        gold = gold[0].get("Answer", "") if len(gold) and isinstance(gold[0], Mapping) else ""
    return str(gold if gold is not None else "").strip().upper()


def mcq_correct(text: str, gold_letter: Any) -> bool:
    """True iff the last ``<answer>...</answer>`` content, stripped + uppercased, equals the gold
    letter (stripped + uppercased). No tag, or an empty gold -> False."""
    expected = _gold_letter(gold_letter)
    if not expected or not isinstance(text, str):
        return False
    matches = _ANSWER_TAG_RE.findall(text)
    return bool(matches) and matches[-1].strip().upper() == expected


def _balanced_object(text: str, start: int) -> str | None:
    """The balanced ``{...}`` starting at ``text[start] == '{'``; braces inside JSON strings
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
                return text[start : i + 1]
    return None


def _json_after(text: str, prefix: str) -> str | None:
    """Raw argument string after the first ``prefix``: None if the prefix is absent, '{}' if no
    '{' follows it or the object never closes (as released), else the balanced object."""
    idx = text.find(prefix)
    if idx < 0:
        return None
    brace = text.find("{", idx)
    if brace < 0:
        return "{}"
    obj = _balanced_object(text, brace)
    return "{}" if obj is None else obj


def _normalize_json(s: Any) -> str:
    """``json.dumps(json.loads(s), sort_keys=True)``; '' -> '{}'; non-JSON -> the stripped string;
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
    """First tool call of a ReAct-style response as ``(action_name, normalized_json)``.

    * name: rest of the line after the first ``Action:`` (case-insensitive), stripped. No
      ``Action:`` -> None.
    * args: the balanced ``{...}`` after the first ``Action Input:`` (case-sensitive; fallback
      ``Action_Input:``) anywhere in the text; braces inside JSON strings do not count. Missing
      prefix, no '{' after it, or a never-closing object -> '{}' (released behaviour).
      Normalised with ``json.dumps(..., sort_keys=True)``; malformed JSON is kept as the raw
      stripped string (so it can only match an identical golden string).
    """
    if not isinstance(text, str):
        return None
    m = _ACTION_RE.search(text)
    if m is None:
        return None
    name = m.group(1).strip()
    raw = _json_after(text, "Action Input:")
    if raw is None:
        raw = _json_after(text, "Action_Input:")
    return name, _normalize_json(raw or "{}")


def _first_golden_call(golden_answer: Any) -> tuple[str, str] | None:
    """Normalise the first golden call. Accepts the eval-data format (list of
    ``{"Action": str, "Action_Input": json_str}``), its JSON string (training ``ground_truth``),
    a single dict, and ``Action Input`` / ``action`` key variants or a dict-valued input."""
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
    inp = first.get("Action_Input") or first.get("Action Input") or "{}"
    return action, _normalize_json(inp)


def tooluse_correct(text: str, golden_answer: Any) -> bool:
    """True iff ``parse_tool_call(text)`` equals the first golden call (name and normalised
    JSON). No parsable call, or no golden call at all -> False."""
    gold = _first_golden_call(golden_answer)
    if gold is None:
        return False
    pred = parse_tool_call(text)
    return pred is not None and pred == gold


TEXT_VERIFIERS: dict[str, Callable[[str, Any], bool]] = {
    "mcq": mcq_correct,
    "tooluse": tooluse_correct,
}


def get_text_verifier(name: str) -> Callable[[str, Any], bool]:
    """Look up a text verifier ``(text, gold) -> bool`` by name."""
    try:
        return TEXT_VERIFIERS[name]
    except KeyError:
        raise ValueError(
            f"unknown text verifier {name!r}; valid names: {sorted(TEXT_VERIFIERS)}"
        ) from None


# ============================================================================================
# Token verifiers (jittable) -- maintained separately; defined below this line.
# ============================================================================================


def exact_match_tokens(completion_tokens, mask, target):
    """Jittable verifier for the embedded tasks: the completion starts with the target tokens.

    ``target`` int32 [N, L] holds the answer's tokens (including its terminator, e.g. "\\n"),
    right-padded with -1; correct[n] iff completion[n, j] == target[n, j] and mask[n, j] for
    every j with target[n, j] >= 0. Returns bool [N].
    """
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    length = min(completion_tokens.shape[1], target.shape[1])
    if target.shape[1] > length:  # answers longer than the completion window can never match
        overflow = jnp.any(target[:, length:] >= 0, axis=-1)
    else:
        overflow = jnp.zeros(target.shape[:1], bool)
    t, c, m = target[:, :length], completion_tokens[:, :length], mask[:, :length]
    ok = jnp.where(t >= 0, (c == t) & m, True)
    return jnp.all(ok, axis=-1) & ~overflow & jnp.any(t >= 0, axis=-1)
