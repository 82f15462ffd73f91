"""Text verifiers (MCQ, tool use) on hand-written responses and on rows of the shared eval data."""

import glob
import json
import os

import pytest

from caopd_jax import tasks
from caopd_jax.tasks import science, tooluse
from configs.paper import common as paper

from shared_eval import EVAL_DIR  # pylint: disable=g-bad-import-order

# ------------------------------------------------------------------------------------------
# MCQ
# ------------------------------------------------------------------------------------------

MCQ_CASES = [
  ("<reasoning>...</reasoning>\n<answer>\nB\n</answer>\nConfidence: 0.6", "B", True),
  ("<answer>B</answer>", "B", True),
  ("<answer>  b  </answer>", "B", True),  # stripped + uppercased
  ("<answer>b</answer>", " b ", True),  # gold normalised too
  ("<answer>A</answer> on second thought <answer>C</answer>", "C", True),  # last tag wins
  ("<answer>A</answer> on second thought <answer>C</answer>", "A", False),
  ("<ANSWER>D</Answer>", "D", True),  # tag name case-insensitive (as released)
  ("<answer>B</answer>", "A", False),
  ("The answer is B", "B", False),  # no tag
  ("<answer>B", "B", False),  # unclosed tag
  ("<answer></answer>", "B", False),
  ("<answer>B) ethanol</answer>", "B", False),  # whole content must equal the letter
  ("<answer>AB</answer>", "A", False),
  ("<answer>B</answer>", "", False),  # empty gold never matches
  ("<answer>B</answer>", [{"Answer": "B"}], True),  # training ground_truth forms
  ("<answer>B</answer>", json.dumps([{"Answer": "B"}]), True),
]


@pytest.mark.parametrize("text,gold,expected", MCQ_CASES)
def test_mcq_correct(text, gold, expected):
  assert science.mcq_correct(text, gold) is expected


# ------------------------------------------------------------------------------------------
# tool use
# ------------------------------------------------------------------------------------------

GOLD = [
  {"Action": "searchAnime", "Action_Input": '{"genre": "Mystery", "year": 2020}'},
  {"Action": "getDetails", "Action_Input": '{"id": 7}'},
]


def react(action, action_input, thought="Thought: I should search.", tail="\nConfidence: 0.7"):
  return f"{thought}\nAction: {action}\nAction Input: {action_input}{tail}"


def test_parse_tool_call_basic():
  assert tooluse.parse_tool_call(react("searchAnime", '{"year": 2020, "genre": "Mystery"}')) == (
    "searchAnime",
    '{"genre": "Mystery", "year": 2020}',
  )
  assert tooluse.parse_tool_call("Thought: nothing to do.") is None  # no Action line
  # missing Action Input -> empty arguments
  assert tooluse.parse_tool_call("Action: getRandomImage\n") == ("getRandomImage", "{}")
  # Action Input without braces -> empty arguments
  assert tooluse.parse_tool_call("Action: f\nAction Input: none") == ("f", "{}")
  # "Action_Input:" fallback
  assert tooluse.parse_tool_call('Action: f\nAction_Input: {"a": 1}') == ("f", '{"a": 1}')
  # name is the rest of the line, stripped; "action:" is case-insensitive
  assert tooluse.parse_tool_call('action:   f   \nAction Input: {}') == ("f", "{}")


def test_parse_tool_call_braces():
  nested = react("updateProfile", '{"user": "u1", "profile": {"url": "x", "tags": {"a": 1}}}')
  assert tooluse.parse_tool_call(nested) == (
    "updateProfile",
    json.dumps({"profile": {"tags": {"a": 1}, "url": "x"}, "user": "u1"}, sort_keys=True),
  )
  # braces and escaped quotes inside JSON strings do not end the object
  tricky = react("f", r'{"q": "a } b { c", "s": "say \"}\" ok"} trailing } junk')
  assert tooluse.parse_tool_call(tricky) == ("f", json.dumps({"q": "a } b { c", "s": 'say "}" ok'},
                                                         sort_keys=True))
  # only the first object after the first "Action Input:" counts
  two = react("f", '{"a": 1}') + "\nAction: g\nAction Input: {\"b\": 2}"
  assert tooluse.parse_tool_call(two) == ("f", '{"a": 1}')
  # never-closing object -> '{}' (released behaviour)
  assert tooluse.parse_tool_call('Action: f\nAction Input: {"a": {"b": 1}') == ("f", "{}")
  # malformed JSON is kept as the raw stripped string
  assert tooluse.parse_tool_call("Action: f\nAction Input: {'a': 1}") == ("f", "{'a': 1}")


TOOL_CASES = [
  (react("searchAnime", '{"genre": "Mystery", "year": 2020}'), True),
  (react("searchAnime", '{"year": 2020, "genre": "Mystery"}'), True),  # key order
  (react("searchAnime", '{\n  "year": 2020,\n  "genre":"Mystery"\n}'), True),  # whitespace
  (react("  searchAnime  ", '{"genre": "Mystery", "year": 2020}'), True),
  (react("searchAnimes", '{"genre": "Mystery", "year": 2020}'), False),  # wrong action
  (react("SearchAnime", '{"genre": "Mystery", "year": 2020}'), False),  # name case matters
  (react("searchAnime", '{"genre": "Mystery", "year": "2020"}'), False),  # wrong type
  (react("searchAnime", '{"genre": "Mystery"}'), False),  # missing argument
  (react("searchAnime", '{"genre": "Mystery", "year": 2020, "x": 1}'), False),  # extra arg
  (react("searchAnime", "{'genre': 'Mystery', 'year': 2020}"), False),  # malformed JSON
  (react("searchAnime", '{"genre": "Mystery", "year": 2020'), False),  # unclosed
  (react("getDetails", '{"id": 7}'), False),  # matches the SECOND golden call only
  ("Thought: I know the answer.\nFinal Answer: 42", False),  # no Action
  ("", False),
]


@pytest.mark.parametrize("text,expected", TOOL_CASES)
def test_tooluse_correct(text, expected):
  assert tooluse.tooluse_correct(text, GOLD) is expected


def test_tooluse_golden_formats():
  text = react("searchAnime", '{"year": 2020, "genre": "Mystery"}')
  assert tooluse.tooluse_correct(text, json.dumps(GOLD))  # training ground_truth (JSON string)
  assert tooluse.tooluse_correct(text, GOLD[0])  # a single dict
  assert tooluse.tooluse_correct(text, [{"Action": "searchAnime",
                                     "Action_Input": {"year": 2020, "genre": "Mystery"}}])
  assert tooluse.tooluse_correct(text, [{"action": "searchAnime",
                                     "Action Input": '{"genre":"Mystery","year":2020}'}])
  # no-argument golden call: "{}" or "" both mean empty arguments
  for gin in ("{}", ""):
    gold = [{"Action": "getRandomImage", "Action_Input": gin}]
    assert tooluse.tooluse_correct("Action: getRandomImage\nAction Input: {}", gold)
    assert tooluse.tooluse_correct("Action: getRandomImage", gold)
  # no golden call at all, or unreadable golden -> never correct
  assert not tooluse.tooluse_correct(text, [])
  assert not tooluse.tooluse_correct(text, "not json")


def test_tasks_judge_with_their_verifiers():
  sci, tool = tasks.get(paper.task("science")), tasks.get(paper.task("tooluse"))
  assert sci.is_correct("<answer>B</answer>", sci.gold({"answer": "B"}))
  assert not sci.is_correct("<answer>C</answer>", "B")
  call = [{"Action": "f", "Action_Input": '{"a": 1}'}]
  assert tool.is_correct('Action: f\nAction Input: {"a": 1}', tool.gold({"golden_answer": call}))
  assert not tool.is_correct('Action: f\nAction Input: {"a": 2}', call)
  with pytest.raises(ValueError, match="valid: .*math.*science.*tooluse"):
    tasks.get(paper.task("chess"))


# ------------------------------------------------------------------------------------------
# real rows of the shared eval data (read in place, never copied)
# ------------------------------------------------------------------------------------------


def _read_rows(name):
  pa = pytest.importorskip("pyarrow", reason="pyarrow is needed to read the arrow eval data")
  files = sorted(glob.glob(os.path.join(EVAL_DIR, name, "eval_data", "*.arrow")))
  if not files:
    pytest.skip(f"shared eval data not found under {EVAL_DIR}/{name}/eval_data")
  import pyarrow.ipc as ipc

  with pa.memory_map(files[0]) as src:
    return ipc.open_stream(src).read_all().to_pylist()


def test_tooluse_real_rows():
  rows = _read_rows("tooluse_data")
  assert len(rows) == 97
  # rows with one and several golden calls, a nested object, an escaped-quote string, '{}'
  picks = [0, 1, 10, 26] + [i for i, r in enumerate(rows) if len(r["golden_answer"]) > 1][:3]
  for i in picks:
    gold = rows[i]["golden_answer"]
    first = gold[0]
    args = json.loads(first["Action_Input"])
    # a model response with re-ordered keys and different spacing
    shuffled = json.dumps(dict(reversed(list(args.items()))), indent=2)
    resp = (f"Thought: I need to call {first['Action']}.\nAction: {first['Action']}\n"
        f"Action Input: {shuffled}\nConfidence: 0.8")
    assert tooluse.tooluse_correct(resp, gold), i
    assert tooluse.tooluse_correct(resp, json.dumps(gold)), i
    # wrong name / changed arguments
    assert not tooluse.tooluse_correct(resp.replace(f"Action: {first['Action']}", "Action: nope"),
                                     gold)
    changed = dict(args, __extra__=1)
    assert not tooluse.tooluse_correct(
      f"Action: {first['Action']}\nAction Input: {json.dumps(changed)}", gold)
    if len(gold) > 1:  # answering with the second golden call is wrong
      second = gold[1]
      if (second["Action"], json.loads(second["Action_Input"])) != (first["Action"], args):
        assert not tooluse.tooluse_correct(
          f"Action: {second['Action']}\nAction Input: {second['Action_Input']}", gold)
  # the prompt's own format section ("Action: the action to take ...") is not a correct call
  assert not tooluse.tooluse_correct(rows[0]["prompt"], rows[0]["golden_answer"])


def test_mcq_real_rows():
  rows = _read_rows("science_data")
  assert len(rows) == 507
  for r in rows[:20]:
    gold = r["answer"]
    assert gold in {"A", "B", "C", "D"}
    assert science.mcq_correct(f"<reasoning>\nhmm\n</reasoning>\n<answer>\n{gold}\n</answer>", gold)
    wrong = "A" if gold != "A" else "B"
    assert not science.mcq_correct(f"<answer>{wrong}</answer>", gold)
    # the system prompt ends with the example "<answer>\nA\n</answer>" (its last tag)
    assert science.mcq_correct(r["prompt"][0]["content"], gold) is (gold == "A")


# Responses where the strict (training) and released (evaluation) science parsers disagree.
DISAGREE = [
    ("<answer>A</answer> ... on second thought <answer>B</answer>", "A", "B"),  # first vs last tag
    ("<reasoning>...</reasoning>\n<answer>C", "C", None),  # unclosed tag (truncated output)
    ("The options considered...\nD", "D", None),  # a bare letter on its own line
    ("So the answer is B.", "B", None),  # "answer is X"
    ("<answer>E</answer>", None, "E"),  # the released parser knows only A-D
]


@pytest.mark.parametrize("text,released,strict", DISAGREE)
def test_released_and_strict_science_parsers_disagree_where_documented(text, released, strict):
  assert science.released_letter(text) == released
  assert bool(science.mcq_correct(text, strict or "Z")) == (strict is not None)
  t = tasks.get(paper.task("science"))  # the paper configs evaluate with the released parser
  assert t.cfg.eval_parser == "released"
  for letter in "ABCDE":
    assert t.eval_correct(text, letter) == (letter == released)
    assert t.is_correct(text, letter) == (letter == strict)  # training rewards stay strict
