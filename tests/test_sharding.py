"""Sharded OPD step and sampler on 8 emulated CPU devices against the unsharded ones.

The 8-device part runs in subprocesses (the device count must be set before JAX starts):
two workers split the meshes while this process computes the single-device reference.
Meshes (data, fsdp, tensor): (8,1,1) data parallel, (2,4,1) data x FSDP, (2,2,2) all three,
(1,1,8) tensor parallel. The model is sized so that every rule applies somewhere and one does
not divide (kv_heads=4 on tensor=8 -> replicated, with a log line).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import background  # pylint: disable=g-bad-import-order
import fast_xla  # pylint: disable=g-bad-import-order

V, PS, PT, C, B = 64, 5, 9, 6, 8
MESHES = ((8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8))
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def problem():
  """Tiny model, OPD step (Adam + EMA teacher), a hand-made batch and sampler inputs."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from caopd_jax.models import ModelConfig, Transformer  # pylint: disable=g-import-not-at-top
  from caopd_jax.sampling import SamplingConfig  # pylint: disable=g-import-not-at-top
  from caopd_jax.train.step import init_state, make_opd_step  # pylint: disable=g-import-not-at-top

  cfg = ModelConfig.tiny("qwen3", vocab_size=V, num_heads=8, num_kv_heads=4, num_layers=1)
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
  _, tparams = nnx.split(Transformer(cfg, rngs=nnx.Rngs(1)))
  rs = np.random.RandomState(0)
  comp = rs.randint(3, V, (B, C))
  mask = np.ones((B, C), bool)
  mask[1, 4:] = False
  mask[5, 2:] = False
  sv = np.ones((B, PS + C), bool)
  sv[0, :2] = False
  tv = np.ones((B, PT + C), bool)
  tv[3, :4] = False
  batch = dict(
      student_tokens=np.concatenate([rs.randint(3, V, (B, PS)), comp], 1).astype(np.int32),
      student_valid=sv,
      teacher_tokens=np.concatenate([rs.randint(3, V, (B, PT)), comp], 1).astype(np.int32),
      teacher_valid=tv, completion_mask=mask)
  opt = optax.adam(1e-2, eps=1e-4)  # eps >> float32 noise of tiny gradients
  step = make_opd_step(graphdef, graphdef, opt, objective="full_forward",
                       hparams=dict(reduction="sequence_mean"), chunk_size=8, ema_alpha=0.5)
  state = init_state(params, opt, teacher=tparams, seed=3)
  prompt = rs.randint(3, V, (B, 7)).astype(np.int32)
  valid = np.ones((B, 7), bool)
  valid[2, :3] = False
  valid[6, :1] = False
  scfg = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=0.9, stop_ids=(5,), pad_id=0,
                        decode_segments=2)  # the growing cache under every mesh, too
  return graphdef, state, step, batch, (prompt, valid, jax.random.key(7), scfg)


def _flat(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def load_check(hf_dir):
  """In an 8-device process: load a HF checkpoint onto an fsdp mesh and build the train state
  while recording every array created on ONE device through device_put / asarray / array; no
  such array may have the full shape of a parameter the mesh shards. The same recorder on the
  old path (load on one device, then place) is the positive control. Returns a JSON-able dict."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from caopd_jax import sharding  # pylint: disable=g-import-not-at-top
  from caopd_jax.models import load_hf  # pylint: disable=g-import-not-at-top
  from caopd_jax.train.loop import born_sharded  # pylint: disable=g-import-not-at-top
  from caopd_jax.train.step import init_state  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh((1, 8, 1))
  abstract = nnx.split(nnx.eval_shape(lambda: load_hf(hf_dir)))[1]
  specs = dict(nnx.to_flat_state(sharding.tree_shardings(abstract, mesh)))
  full = {tuple(v.shape) for p, v in nnx.to_flat_state(abstract)
          if not specs[p].is_fully_replicated}
  seen = []

  def recording(fn):
    def wrapped(*a, **k):
      out = fn(*a, **k)
      for x in jax.tree.leaves(out):
        if (isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
            and len(x.sharding.device_set) == 1 and x.shape in full):
          seen.append(list(x.shape))
      return out
    return wrapped

  originals = (jax.device_put, jnp.asarray, jnp.array)
  jax.device_put, jnp.asarray, jnp.array = map(recording, originals)
  try:
    params = nnx.split(load_hf(hf_dir, mesh=mesh))[1]
    state, _ = born_sharded(mesh, optax.adam(1e-3), params, params, seed=0)
    new_path = list(seen)
    live = [list(x.shape) for x in jax.live_arrays()
            if len(x.sharding.device_set) == 1 and x.shape in full]
    seen.clear()
    old = nnx.split(load_hf(hf_dir))[1]  # the old way: whole on device 0, then placed
    old_state = init_state(old, optax.adam(1e-3), teacher=old, seed=0)
    sharding.place(old_state, sharding.state_shardings(old_state, mesh))
    control = list(seen)
  finally:
    jax.device_put, jnp.asarray, jnp.array = originals
  same = all(bool(np.array_equal(np.asarray(a), np.asarray(b))) for a, b in
             zip(jax.tree.leaves(state.params), jax.tree.leaves(old)))
  teacher_same = all(bool(np.array_equal(np.asarray(a), np.asarray(b))) for a, b in
                     zip(jax.tree.leaves(state.teacher), jax.tree.leaves(old)))
  split = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state))
  return dict(full_shapes=len(full), new_path=new_path, live=live, control=len(control),
              equal=same, teacher_equal=teacher_same, sharded_arrays=split)


def worker(meshes, out, hf_dir=None):
  """Runs in a subprocess with 8 devices: the sharded step and sampler per mesh -> out.npz/json."""
  import logging  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from caopd_jax import sharding  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 8, jax.devices()
  records = []

  class Grab(logging.Handler):

    def emit(self, record):
      records.append(record.getMessage())

  logging.getLogger("caopd_jax.sharding").addHandler(Grab())
  logging.getLogger("caopd_jax.sharding").setLevel(logging.INFO)
  info = {"load": load_check(hf_dir)} if hf_dir else {}
  graphdef, state, step, batch, (prompt, valid, key, scfg) = problem()
  arrays = {}
  for spec in meshes:
    name = "x".join(map(str, spec))
    mesh = sharding.make_mesh(spec)
    state_sh = sharding.state_shardings(state, mesh)
    batch_sh = sharding.batch_shardings(batch, mesh)
    placed = sharding.place(jax.tree.map(jnp.copy, state), state_sh)
    fn = sharding.jit_train_step(step, mesh, state_sh, batch_sh)
    gbatch = sharding.shard_batch(batch, mesh)
    new, metrics = fn(placed, gbatch)
    for k, v in _flat(new).items():
      arrays[f"{name}/state{k}"] = v
    out_specs = {jax.tree_util.keystr(p): [str(x.sharding.spec),
                                           list(x.addressable_shards[0].data.shape)]
                 for p, x in jax.tree_util.tree_leaves_with_path(new)}
    sample = sharding.shard_sample(graphdef, new.params, prompt, valid, key, scfg, mesh)
    for f in sample._fields:
      arrays[f"{name}/sample/{f}"] = np.asarray(getattr(sample, f))
    info[name] = dict(
        rules={p: spec_ for p, _, spec_ in sharding.describe(state, state_sh)},
        out=out_specs,
        batch={k: [str(v.sharding.spec), list(v.addressable_shards[0].data.shape)]
               for k, v in gbatch.items()},
        sample_tokens=[str(sample.tokens.sharding.spec),
                       list(sample.tokens.addressable_shards[0].data.shape)],
        replicated_large=sharding.check_replicated(state, state_sh, mesh, min_bytes=1024),
        loss=float(metrics["train/loss"]) if "train/loss" in metrics else None,
        donated=bool(placed.params["embed"].get_value().is_deleted()),
        compiles=fn._cache_size())
  info["log"] = records
  np.savez(out + ".npz", **arrays)
  with open(out + ".json", "w") as f:
    json.dump(info, f)


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = fast_xla.added_to(env.get("XLA_FLAGS", ""),
                                      "--xla_force_host_platform_device_count=8")
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _workers(tmp):
  """The 8-device workers (subprocesses): {name: arrays}, info."""
  tmp = pathlib.Path(tmp)
  import hf_fixtures  # pylint: disable=g-import-not-at-top
  hf_dir = hf_fixtures.save_hf_model(hf_fixtures.make_hf_model("qwen3", seed=3), str(tmp / "hf"))
  groups = [MESHES[:2], MESHES[2:]]
  procs = []
  for i, group in enumerate(groups):
    arg = ";".join(",".join(map(str, m)) for m in group)
    cmd = [sys.executable, __file__, arg, str(tmp / f"w{i}")] + ([hf_dir] if i == 0 else [])
    procs.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  out, info = {}, {}
  for i, p in enumerate(procs):
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log[-5000:]
    out.update(dict(np.load(tmp / f"w{i}.npz")))
    with open(tmp / f"w{i}.json") as f:
      w = json.load(f)
    info["log"] = info.get("log", []) + w.pop("log")
    info.update(w)
  return out, info


def start_background():
  background.start("sharding", _workers)


@pytest.fixture(scope="module")
def results():
  # The single-device reference here; the sharded runs from the background workers.
  import jax  # pylint: disable=g-import-not-at-top
  from caopd_jax import sampling  # pylint: disable=g-import-not-at-top
  graphdef, state, step, batch, (prompt, valid, key, scfg) = problem()
  ref_state, _ = jax.jit(step)(state, batch)
  ref_sample = sampling.sample(graphdef, ref_state.params, prompt, valid, key, scfg)
  ref = {"state": _flat(ref_state), "sample": {f: np.asarray(getattr(ref_sample, f))
                                               for f in ref_sample._fields}}
  out, info = background.result("sharding", _workers)
  return ref, out, info


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_sharded_step_matches_unsharded(results, mesh):
  ref, out, info = results
  name = "x".join(map(str, mesh))
  diffs = {}
  for k, v in ref["state"].items():
    got = out[f"{name}/state{k}"]
    assert got.shape == v.shape and got.dtype == v.dtype, k
    diffs[k] = float(np.max(np.abs(got.astype(np.float64) - v))) if v.size else 0.0
    np.testing.assert_allclose(got, v, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {k}")
  assert max(diffs.values()) < 1e-5
  assert int(out[f"{name}/state.step"]) == 1
  # the step was compiled once, and the input state was donated (updated in place)
  assert info[name]["compiles"] == 1 and info[name]["donated"]


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_sharded_sampler_matches_unsharded(results, mesh):
  ref, out, info = results
  name = "x".join(map(str, mesh))
  np.testing.assert_array_equal(out[f"{name}/sample/tokens"], ref["sample"]["tokens"])
  np.testing.assert_array_equal(out[f"{name}/sample/mask"], ref["sample"]["mask"])
  np.testing.assert_allclose(out[f"{name}/sample/logprobs"], ref["sample"]["logprobs"],
                             atol=1e-5)
  assert ref["sample"]["mask"].sum() > B  # sampled something beyond the first token
  data_shards = mesh[0] * mesh[1]
  assert info[name]["sample_tokens"][1][0] == B // data_shards


# Expected partition specs, worked out by hand from sharding.RULES.
EXPECTED = {
    "8x1x1": {"embed": "P()", "q": "P()", "k": "P()", "down": "P()", "norm": "P()"},
    "2x4x1": {"embed": "P(None, 'fsdp')", "q": "P('fsdp',)", "k": "P('fsdp',)",
              "down": "P(None, 'fsdp')", "norm": "P()"},
    "2x2x2": {"embed": "P('tensor', 'fsdp')", "q": "P('fsdp', 'tensor')",
              "k": "P('fsdp', 'tensor')", "down": "P('tensor', 'fsdp')", "norm": "P()"},
    "1x1x8": {"embed": "P('tensor',)", "q": "P(None, 'tensor')", "k": "P()",
              "down": "P('tensor',)", "norm": "P()"},
}
PATHS = {"embed": "['embed']", "q": "['layers'][0]['attn']['q']",
         "k": "['layers'][0]['attn']['k']", "down": "['layers'][0]['mlp']['down']",
         "norm": "['final_norm']['scale']"}


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_layout(results, mesh):
  _, _, info = results
  name = "x".join(map(str, mesh))
  rules, outs = info[name]["rules"], info[name]["out"]
  for short, path in PATHS.items():
    for tree in (".params", ".teacher", ".opt_state[0].mu", ".opt_state[0].nu"):
      spec, _ = outs[tree + path + ".value"]
      assert spec == EXPECTED[name][short], (tree + path, spec)
      assert rules[tree + path] == EXPECTED[name][short]
  # Params are really split (per-device shard smaller than the array) except on pure DP.
  n_split = sum(1 for k, (spec, shard) in outs.items() if k.startswith(".params") and spec != "P()")
  if mesh[1] * mesh[2] > 1:
    assert n_split >= 6, outs
    _, shard = outs[".params['embed'].value"]
    assert np.prod(shard) == V * 32 // (mesh[1] * mesh[2])
  else:
    assert n_split == 0  # data parallel: parameters replicated by design
  # Scalars and the RNG stay replicated; the batch is split over data x fsdp.
  assert outs[".step"][0] == "P()" and outs[".rng"][0] == "P()"
  assert info[name]["batch"]["student_tokens"][1][0] == B // (mesh[0] * mesh[1])


def test_fallback_is_logged_and_large_replicated_reported(results):
  _, _, info = results
  assert any("kv_heads, size 4" in m and "replicated" in m for m in info["log"]), info["log"]
  # (1,1,8): k / v (kv_heads=4) stay replicated and are reported; on pure DP nothing is.
  assert any("['attn']['k']" in s for s in info["1x1x8"]["replicated_large"])
  assert info["8x1x1"]["replicated_large"] == []


def test_logical_to_spec_rules():
  from caopd_jax import sharding  # pylint: disable=g-import-not-at-top

  class FakeMesh:
    shape = {"data": 2, "fsdp": 4, "tensor": 2}

  P = sharding.P
  m = FakeMesh()
  assert sharding.logical_to_spec(("vocab", "embed"), (64, 32), m) == P("tensor", "fsdp")
  assert sharding.logical_to_spec(("embed", "heads", "head_dim"), (32, 3, 8), m) == P("fsdp")
  assert sharding.logical_to_spec(("batch", None), (16, 5), m) == P(("data", "fsdp"))
  assert sharding.logical_to_spec(("batch", None), (4, 5), m) == P("data")  # 4 % 8 != 0
  assert sharding.logical_to_spec(("batch",), (3,), m) == P()
  with pytest.raises(ValueError, match="No sharding rule"):
    sharding.logical_to_spec(("experts",), (8,), m)
  assert sharding.mesh_shape((1, -1, 1), 8) == (1, 8, 1)
  assert sharding.mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError):
    sharding.mesh_shape((3, -1, 1), 8)
  with pytest.raises(ValueError):
    sharding.mesh_shape((2, 2, 1), 8)


def test_state_is_born_sharded(results):
  """No full-size array of a sharded parameter on one device while loading a HF checkpoint onto
  an fsdp mesh and building the train state (the old path trips the same recorder), and the
  loaded state equals an unsharded load bitwise."""
  load = results[2]["load"]
  print(load)
  assert load["full_shapes"] >= 6 and load["sharded_arrays"] >= 4 * 8
  assert load["new_path"] == [] and load["live"] == []
  assert load["control"] >= load["full_shapes"]  # the recorder catches the old path
  assert load["equal"] and load["teacher_equal"]


if __name__ == "__main__":
  worker([tuple(int(x) for x in m.split(",")) for m in sys.argv[1].split(";")], sys.argv[2],
         sys.argv[3] if len(sys.argv) > 3 else None)
