"""Data layer: tfds array_record builders without TensorFlow, determinism, splits, loader."""

import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from caopd_jax import data
from caopd_jax.data import arithmetic, loader

from shared_eval import EVAL_DIR as SHARED_EVAL, FOUND, REASON  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_shared = pytest.mark.skipif(not FOUND, reason=REASON)

SMALL = dict(num_train=3000, num_test=300, num_ood=100)  # fast to prepare


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _records(name, split, data_dir, **kw):
  return list(data.get_source(name, split, data_dir, **kw))


def _operands(q):
  for sym in "+-*":
    if sym in q:
      a, b = q.split(sym)
      return sym, a, b
  raise AssertionError(q)


# ----------------------------------------------------------------------------- no TensorFlow


def test_prepare_and_read_without_tensorflow(tmp_path):
  """In a fresh interpreter where TensorFlow cannot be imported (even if it is installed on this
  machine), build an array_record dataset with tfds and read it back through a data source."""
  script = textwrap.dedent(f"""
      import sys
      class Hide:  # every import finder acts as if tensorflow were not installed
        def __init__(self, finder):
          self.finder = finder
        def __getattr__(self, name):
          return getattr(self.finder, name)
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] == "tensorflow" or not hasattr(self.finder, "find_spec"):
            return None
          return self.finder.find_spec(name, path, target)
      sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
      try:
        import tensorflow
        raise AssertionError("tensorflow still importable")
      except ModuleNotFoundError:
        pass
      sys.path.insert(0, {REPO!r})
      from caopd_jax import data
      src = data.get_source("arithmetic", "test", {str(tmp_path)!r}, num_train=50, num_test=20,
                            num_ood=10)
      recs = list(src)
      assert len(recs) == 20 and all(str(eval(r["question"])) == r["answer"] for r in recs)
      assert type(src.data_source).__name__ == "ArrayRecordDataSource", type(src.data_source)
      assert "tensorflow" not in sys.modules
      print("OK", len(recs))
  """)
  res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
  assert res.returncode == 0 and "OK 20" in res.stdout, res.stderr[-3000:]
  files = glob.glob(str(tmp_path / "caopd_arithmetic" / "*" / "1.0.0" / "*.array_record-*"))
  assert len(files) == 3, files


# ----------------------------------------------------------------------------- arithmetic


def test_arithmetic_byte_identical_and_seeded(tmp_path):
  def files(d, **kw):
    b = data.prepare("arithmetic", str(tmp_path / d), **SMALL, **kw)
    return {os.path.basename(p): open(p, "rb").read()
            for p in glob.glob(os.path.join(os.fspath(b.data_dir), "*.array_record-*"))}

  a, b, c = files("a", seed=7), files("b", seed=7), files("c", seed=8)
  assert len(a) == 3 and a == b  # same seed -> byte-identical records
  for k in a:
    assert a[k] != c[k]  # different seed -> different records
  ra = _records("arithmetic", "train", str(tmp_path / "a"), seed=7, **SMALL)
  rc = _records("arithmetic", "train", str(tmp_path / "c"), seed=8, **SMALL)
  assert [r["question"] for r in ra] != [r["question"] for r in rc]


@pytest.mark.parametrize("op", ["add", "sub"])
def test_arithmetic_splits(data_dir, op):
  max_digits = arithmetic.DEFAULTS["max_digits"]
  recs = {s: _records("arithmetic", s, data_dir, op=op, **SMALL) for s in ("train", "test", "ood")}
  assert {s: len(r) for s, r in recs.items()} == {
      "train": SMALL["num_train"], "test": SMALL["num_test"], "ood": SMALL["num_ood"]}
  for split, rs in recs.items():
    assert [r["id"] for r in rs] == list(range(len(rs)))
    for r in rs:
      assert r["op"] == op
      assert str(eval(r["question"])) == r["answer"], r  # answers correct
      sym, x, y = _operands(r["question"])
      assert sym == {"add": "+", "sub": "-"}[op]
      digits = max(len(x), len(y)) if op == "add" else len(x)
      assert digits == r["difficulty"], r
      if op == "sub":
        assert int(y) <= int(x)
  train_q = {r["question"] for r in recs["train"]}
  test_q = [r["question"] for r in recs["test"]]
  assert not train_q & set(test_q)  # disjoint
  assert len(set(test_q)) == len(test_q)
  train_d = {r["difficulty"] for r in recs["train"]}
  assert train_d == set(range(1, max_digits + 1))  # graded
  assert {r["difficulty"] for r in recs["test"]} == train_d
  ood_d = {r["difficulty"] for r in recs["ood"]}
  assert min(ood_d) > max(train_d) and ood_d == {max_digits + 1, max_digits + 2}
  counts = np.bincount([r["difficulty"] for r in recs["train"]])[1:]
  assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("op", arithmetic.OPS)
def test_arithmetic_generate_all_ops(op):
  d = arithmetic.generate(op, max_digits=2, num_train=500, num_test=60, num_ood=40)
  for split, rs in d.items():
    for r in rs:
      assert str(eval(r["question"])) == r["answer"] and r["op"] == op
  assert not {r["question"] for r in d["train"]} & {r["question"] for r in d["test"]}
  assert {r["difficulty"] for r in d["ood"]} == {3, 4}
  assert d == arithmetic.generate(op, max_digits=2, num_train=500, num_test=60, num_ood=40)


def test_arithmetic_default_counts_and_config_names():
  assert arithmetic.make_config("add").name == "add"
  assert arithmetic.make_config("mul1", seed=3).name == "mul1_d3_o2_s3_n20000_1000_500"
  d = arithmetic.generate("add")
  assert {k: len(v) for k, v in d.items()} == {"train": 20000, "test": 1000, "ood": 500}
  with pytest.raises(ValueError, match="valid"):
    arithmetic.make_config("div")
  with pytest.raises(ValueError, match="max_digits"):
    arithmetic.make_config("add", digits=3)


def test_prepared_once_then_cached(tmp_path, monkeypatch):
  kw = dict(num_train=200, num_test=20, num_ood=10)
  src = data.get_source("arithmetic", "train", str(tmp_path), **kw)
  path = glob.glob(str(tmp_path / "caopd_arithmetic" / "*" / "1.0.0" / "*-train.array_record*"))
  mtime = os.stat(path[0]).st_mtime_ns

  def boom(*a, **k):
    raise AssertionError("regenerated although prepared")

  monkeypatch.setattr(arithmetic.CaopdArithmetic, "_split_generators", boom)
  again = data.get_source("arithmetic", "train", str(tmp_path), **kw)
  assert list(again) == list(src) and os.stat(path[0]).st_mtime_ns == mtime
  with pytest.raises(AssertionError, match="regenerated"):  # a new config does generate
    data.get_source("arithmetic", "train", str(tmp_path), **{**kw, "seed": 1})


def test_concurrent_preparation_uses_the_copy_that_won(tmp_path, monkeypatch):
  """A parallel sweep sharing data_dir: another process renames its build in first; ours then
  finds the destination taken (FileExistsError from tfds) and must read that copy, not fail."""
  kw = dict(num_train=200, num_test=20, num_ood=10)
  inner = arithmetic.CaopdArithmetic._download_and_prepare
  raced = []

  def racing(self, *a, **k):
    if not raced:  # the other process finishes the same build while ours is generating
      raced.append(1)
      data.get_builder("arithmetic", str(tmp_path), **kw).download_and_prepare(
          file_format=loader.FILE_FORMAT)
    return inner(self, *a, **k)

  monkeypatch.setattr(arithmetic.CaopdArithmetic, "_download_and_prepare", racing)
  src = data.get_source("arithmetic", "train", str(tmp_path), **kw)
  assert raced and len(list(src)) == 200
  monkeypatch.setattr(arithmetic.CaopdArithmetic, "_download_and_prepare", inner)
  assert list(src) == list(data.get_source("arithmetic", "train", str(tmp_path / "b"), **kw))


def test_registry_errors(data_dir):
  with pytest.raises(ValueError, match="arithmetic.*science.*tooluse"):
    data.get_source("gsm8k", "train", data_dir)
  with pytest.raises(ValueError, match="valid"):
    data.get_source("arithmetic", "train", data_dir, bogus=1)
  with pytest.raises(ValueError, match="manual_dir.*valid"):
    data.get_source("arithmetic", "train", data_dir, manual_dir="x")
  with pytest.raises(ValueError, match="available.*ood.*test.*train"):
    data.get_source("arithmetic", "eval", data_dir, **SMALL)


# ----------------------------------------------------------------------------- loader


class ListSource:
  def __init__(self, n):
    self.n, self.reads = n, []

  def __len__(self):
    return self.n

  def __getitems__(self, idx):
    self.reads.append(list(idx))
    return [{"id": i} for i in idx]


def _ids(batch):
  return [r["id"] for r in batch]


def test_loader_deterministic_and_epochs_are_permutations():
  n, g = 60, 12
  it1, it2 = data.BatchIterator(ListSource(n), g, seed=3), data.BatchIterator(ListSource(n), g, seed=3)
  b1 = [_ids(next(it1)) for _ in range(12)]
  assert b1 == [_ids(next(it2)) for _ in range(12)]
  other = data.BatchIterator(ListSource(n), g, seed=4)
  assert b1 != [_ids(next(other)) for _ in range(12)]
  for e in range(2):  # each epoch visits every record once
    assert sorted(sum(b1[5 * e:5 * e + 5], [])) == list(range(n))
  assert sum(b1[:5], []) != sum(b1[5:10], [])  # epochs reshuffled
  plain = data.BatchIterator(ListSource(n), g, shuffle=False)
  assert _ids(next(plain)) == list(range(g))


def test_loader_resume_equivalence():
  src = ListSource(50)
  full = data.BatchIterator(src, 8, seed=1)
  ref = [_ids(next(full)) for _ in range(20)]  # crosses several epoch boundaries (50 % 8 != 0)
  for k in (0, 1, 6, 13):
    it = data.BatchIterator(src, 8, seed=1, start_step=k)
    assert [_ids(next(it)) for _ in range(20 - k)] == ref[k:]
  it = data.BatchIterator(src, 8, seed=1)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  assert state["step"] == 7
  fresh = data.BatchIterator(src, 8, seed=1)
  fresh.set_state(state)
  assert _ids(next(fresh)) == ref[7] == _ids(it.batch(7))
  with pytest.raises(ValueError, match="seed"):
    data.BatchIterator(src, 8, seed=2).set_state(state)


def test_loader_process_slices_partition_global_batch():
  n, g, p = 37, 12, 3
  glob_it = data.BatchIterator(ListSource(n), g, seed=5)
  for step in range(9):
    slices = []
    for pi in range(p):
      src = ListSource(n)
      it = data.BatchIterator(src, g, seed=5, process_index=pi, process_count=p, start_step=step)
      batch = _ids(next(it))
      assert len(batch) == g // p and src.reads == [batch]  # reads only its slice
      slices.append(batch)
    assert sum(slices, []) == glob_it.global_indices(step).tolist() == _ids(glob_it.batch(step))
  with pytest.raises(ValueError, match="divisible"):
    data.BatchIterator(ListSource(n), 10, process_count=3)


def test_loader_finite_epochs():
  it = data.BatchIterator(ListSource(10), 4, num_epochs=1, shuffle=False)
  assert [_ids(b) for b in it] == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(it) == 2
  it = data.BatchIterator(ListSource(10), 4, num_epochs=1, shuffle=False, drop_remainder=False)
  assert [_ids(b) for b in it] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  tail = [_ids(data.BatchIterator(ListSource(10), 4, num_epochs=1, shuffle=False,
                                  drop_remainder=False, process_index=i, process_count=2,
                                  start_step=2).batch(2)) for i in range(2)]
  assert tail == [[8, 9], []]


def test_loader_over_real_source(data_dir):
  src = data.get_source("arithmetic", "train", data_dir, **SMALL)
  it = data.BatchIterator(src, 16, seed=0, start_step=3)
  batch = next(it)
  assert len(batch) == 16 and set(batch[0]) == {"id", "question", "answer", "difficulty", "op"}
  assert _ids(batch) == data.BatchIterator(src, 16, seed=0).global_indices(3).tolist()
  assert all(isinstance(r["question"], str) and isinstance(r["id"], int) for r in batch)
  assert data.as_columns(batch)["id"] == _ids(batch)



def test_records_are_read_once_per_prepared_split(data_dir, tmp_path, monkeypatch):
  src = data.get_source("arithmetic", "test", data_dir, **SMALL)
  want = [src[i] for i in range(len(src))]  # random access, record by record
  first = data.records(src)
  assert first == want
  first[0]["question"] = "edited"  # a caller's list and dicts are its own
  reads = []
  again = data.get_source("arithmetic", "test", data_dir, **SMALL)
  monkeypatch.setattr(again, "__getitems__", lambda idx: reads.append(idx) or [])
  assert data.records(again) == want and not reads  # the same split: no second decode
  other = data.get_source("arithmetic", "test", str(tmp_path), **SMALL)  # same data, new place
  monkeypatch.setattr(other, "__getitems__", lambda idx: reads.append(idx) or [])
  assert data.records(other) == [] and reads  # another location is read again
  assert data.records([{"a": 1}]) == [{"a": 1}]  # plain sequences pass through


def test_batches_over_the_decoded_records_equal_batches_read_from_the_split(data_dir):
  """The SFT / OPD jobs index data.records' list instead of reading the split every step."""
  src = data.get_source("arithmetic", "test", data_dir, **SMALL)
  from_disk = data.BatchIterator(src, 6, seed=3, process_index=1, process_count=2)
  in_memory = data.BatchIterator(data.records(src), 6, seed=3, process_index=1, process_count=2)
  for step in (0, 1, 7, 40):
    assert in_memory.batch(step) == from_disk.batch(step)

# ----------------------------------------------------------------------------- science / tool use


@needs_shared
def test_real_science_eval(data_dir):
  src = data.get_source("science", "eval", data_dir, manual_dir=SHARED_EVAL)
  assert len(src) == 507
  recs = list(src)
  assert set(recs[0]) == {"id", "messages", "answer", "demo"}
  raw = pa.ipc.open_stream(open(glob.glob(
      os.path.join(SHARED_EVAL, "science_data", "eval_data", "data-*.arrow"))[0], "rb")).read_all()
  assert [r["answer"] for r in recs] == raw.column("answer").to_pylist()
  assert [r["messages"] for r in recs] == raw.column("prompt").to_pylist()
  for r in recs:
    assert [m["role"] for m in r["messages"]] == ["system", "user"] and r["demo"] == ""
    assert r["answer"] in ("A", "B", "C", "D")
  with pytest.raises(ValueError, match="available.*eval"):
    data.get_source("science", "train", data_dir, manual_dir=SHARED_EVAL)


@needs_shared
def test_real_tooluse_eval(data_dir):
  task_dir = os.path.join(SHARED_EVAL, "tooluse_data")  # the task folder itself is accepted too
  src = data.get_source("tooluse", "eval", data_dir, manual_dir=task_dir)
  assert len(src) == 97
  recs = list(src)
  assert set(recs[0]) == {"id", "messages", "prompt", "instruction", "name", "description",
                          "nl_documentation", "golden_answer", "golden_response", "demo"}
  for r in recs:
    assert r["messages"] == [{"role": "user", "content": r["prompt"]}]
    assert r["instruction"] and r["instruction"] in r["prompt"] and r["name"]
    assert r["golden_answer"] and all(set(c) == {"Action", "Action_Input"}
                                      for c in r["golden_answer"])
    for c in r["golden_answer"]:
      json.loads(c["Action_Input"])
    assert r["golden_response"] == [] and r["demo"] == ""
  assert recs[0]["golden_answer"] == [{"Action": "getRandomAxolotlImage", "Action_Input": "{}"}]


def _write_hf(folder, rows, stream=True):
  os.makedirs(folder, exist_ok=True)
  table = pa.Table.from_pylist(rows)
  name = "data-00000-of-00001.arrow"
  with pa.OSFile(os.path.join(folder, name), "wb") as f:
    w = pa.ipc.new_stream(f, table.schema) if stream else pa.ipc.new_file(f, table.schema)
    w.write_table(table)
    w.close()
  with open(os.path.join(folder, "state.json"), "w") as f:
    json.dump({"_data_files": [{"filename": name}]}, f)
  with open(os.path.join(folder, "dataset_info.json"), "w") as f:
    json.dump({}, f)
  return os.path.join(folder, name)


def _sci_row(q, a):
  return {"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": q}],
          "answer": a}


def test_sdft_train_splits_and_reprepare_on_change(tmp_path, monkeypatch):
  monkeypatch.delenv(data.DATA_ENV, raising=False)
  root, dd = tmp_path / "science_data", str(tmp_path / "tfds")
  _write_hf(str(root / "eval_data"), [_sci_row("q1", "b"), _sci_row("q2", "C")])
  src = data.get_source("science", "eval", dd, manual_dir=str(root))
  assert [r["answer"] for r in src] == ["B", "C"]
  # SDFT train format: `messages` + demo `output_text`, no `answer` (taken from the demo).
  _write_hf(str(root / "train_data"), [
      {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "t1"}],
       "output_text": "<reasoning>r</reasoning>\n<answer>\nD\n</answer>\nConfidence: 1.00"}])
  train = list(data.get_source("science", "train", dd, manual_dir=str(root)))  # re-prepared
  assert train[0]["answer"] == "D" and "Confidence: 1.00" in train[0]["demo"]
  assert train[0]["messages"][1] == {"role": "user", "content": "t1"}
  assert len(data.get_source("science", "eval", dd)) == 2  # prepared copy, no manual_dir needed
  troot = tmp_path / "tooluse_data"
  _write_hf(str(troot / "train_data"), [{
      "prompt": "P", "golden_answer": [{"Action": "f", "Action_Input": '{"x": 1}'}],
      "golden_response": ["Thought: t", "Action: f", 'Action Input: {"x": 1}']}])
  t = data.get_source("tooluse", "train", dd, manual_dir=str(tmp_path))  # parent dir accepted
  (r,) = list(t)
  assert r["golden_response"][1] == "Action: f" and r["demo"].startswith("Thought: t\nAction: f")
  assert r["instruction"] == "" and r["golden_answer"] == [{"Action": "f", "Action_Input": '{"x": 1}'}]


def test_clear_errors(tmp_path, monkeypatch):
  monkeypatch.delenv(data.DATA_ENV, raising=False)
  dd = str(tmp_path / "tfds")
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="nope.*does not exist.*manual_dir"):
    data.get_source("science", "eval", dd, manual_dir=missing)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="eval_data/ or train_data/"):
    data.get_source("science", "eval", dd, manual_dir=str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="not prepared.*manual_dir"):
    data.get_source("tooluse", "eval", str(tmp_path / "other"))

  bad = tmp_path / "bad"
  f = _write_hf(str(bad / "eval_data"), [{"prompt": "p", "name": "n"}])  # no golden_answer
  with pytest.raises(data.DataFormatError, match=f"{f}.*missing required column.*golden_answer"):
    data.get_source("tooluse", "eval", dd, manual_dir=str(bad))
  f = _write_hf(str(bad / "eval_data"), [{"prompt": [{"role": "user", "content": "q"}]}])
  with pytest.raises(data.DataFormatError, match=f"{f}.*missing required column.*'answer'"):
    data.get_source("science", "eval", dd, manual_dir=str(bad))

  with open(f, "wb") as fh:
    fh.write(b"this is not an arrow file" * 10)
  with pytest.raises(data.DataFormatError, match=f"{f}: not an Arrow IPC stream"):
    data.get_source("science", "eval", dd, manual_dir=str(bad))
  open(f, "wb").close()
  with pytest.raises(data.DataFormatError, match=f"{f}: file is empty"):
    data.get_source("science", "eval", dd, manual_dir=str(bad))
  _write_hf(str(bad / "eval_data"), [_sci_row("q", "A")])
  os.remove(f)
  with pytest.raises(FileNotFoundError, match=f"{f}: listed in .*state.json"):
    data.get_source("science", "eval", dd, manual_dir=str(bad))
  # An IPC *file* (not stream) is accepted; a wrong message type names file and row.
  _write_hf(str(bad / "eval_data"), [_sci_row("q", "A")], stream=False)
  assert [r["answer"] for r in data.get_source("science", "eval", dd, manual_dir=str(bad))] == ["A"]
  f = _write_hf(str(bad / "eval_data"), [{"prompt": [{"role": "user"}], "answer": "A"}])
  with pytest.raises(data.DataFormatError, match=f"{f} row 0: column 'prompt'"):
    data.get_source("science", "eval", dd, manual_dir=str(bad))
  empty = pa.Table.from_pylist([_sci_row("q", "A")]).slice(0, 0)
  with pa.OSFile(f, "wb") as fh, pa.ipc.new_stream(fh, empty.schema) as w:
    w.write_table(empty)
  with pytest.raises(data.DataFormatError, match="no rows"):
    data.get_source("science", "eval", dd, manual_dir=str(bad))


def test_min_digits_restricts_levels():
  d = arithmetic.generate("add", min_digits=2, max_digits=3, num_train=300, num_test=60, num_ood=20,
                          ood_digits=1)
  assert {r["difficulty"] for r in d["train"]} == {2, 3} == {r["difficulty"] for r in d["test"]}
  assert {r["difficulty"] for r in d["ood"]} == {4}
  assert arithmetic.make_config("add", min_digits=2).name.endswith("_m2")
  with pytest.raises(ValueError, match="min_digits"):
    arithmetic.make_config("add", min_digits=4, max_digits=3)
