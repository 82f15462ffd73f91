"""Memory-bounded steps at one device: gradient accumulation equals the one-big-batch update,
every remat policy gives the same gradients, scanned layers the same logits (HF round trip,
cached decoding), master weights and a bfloat16 teacher."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from caopd_jax.models import ModelConfig, Transformer, load_hf, save_hf
from caopd_jax.sampling import SamplingConfig, sample
from caopd_jax.train.step import init_state, make_opd_step, make_sft_step

import hf_fixtures  # pylint: disable=g-bad-import-order

V, PS, PT, C, B = 37, 5, 7, 6, 8


def opd_batch(seed=0):
  rs = np.random.RandomState(seed)
  comp = rs.randint(3, V, (B, C))
  mask = rs.rand(B, C) < 0.8  # unequal token counts per microbatch
  mask[:, 0] = True
  sv, tv = np.ones((B, PS + C), bool), np.ones((B, PT + C), bool)
  sv[1, :2] = tv[3, :4] = False
  return {"student_tokens": np.concatenate([rs.randint(3, V, (B, PS)), comp], 1).astype(np.int32),
          "student_valid": sv,
          "teacher_tokens": np.concatenate([rs.randint(3, V, (B, PT)), comp], 1).astype(np.int32),
          "teacher_valid": tv, "completion_mask": mask}


def close(a, b, rtol, atol=None):
  """Elementwise rtol, plus an absolute slack of rtol x the tensor's largest entry (summation
  order changes float32 rounding; Adam magnifies that on entries near 0) unless atol is given."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    y = np.asarray(y, np.float64)
    np.testing.assert_allclose(np.asarray(x, np.float64), y, rtol=rtol,
                               atol=rtol * np.abs(y).max() if atol is None else atol)


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean"])
def test_accumulation_equals_one_big_batch(reduction):
  """microbatches=4 gives the same parameters after 3 steps as microbatches=1 (SGD with
  momentum: the update is linear in the gradient; Adam's division by sqrt(v) would magnify the
  float32 summation-order noise of entries whose gradient is ~0 far beyond the gradient's own
  1e-7-level difference)."""
  graphdef, params = nnx.split(Transformer(ModelConfig.tiny(vocab_size=V), rngs=nnx.Rngs(0)))
  tparams = jax.tree.map(lambda x: 0.7 * x, params)
  opt = optax.sgd(0.5, momentum=0.9)
  out = {}
  for m in (1, 4):
    step = jax.jit(make_opd_step(graphdef, graphdef, opt, objective="full_reverse",
                                 hparams={"reduction": reduction, "skip_first": 1},
                                 report=("token_sampled",), chunk_size=4, ema_alpha=0.1,
                                 microbatches=m))
    state = init_state(jax.tree.map(jnp.copy, params), opt, teacher=tparams)
    for i in range(3):
      state, metrics = step(state, jax.tree.map(jnp.asarray, opd_batch(i)))
    out[m] = (state, jax.device_get(metrics))
  close(out[4][0].params, out[1][0].params, rtol=1e-6)
  close(out[4][0].teacher, out[1][0].teacher, rtol=1e-6)
  for k in ("train/loss", "train/kl_reverse", "train/num_tokens", "objectives/token_sampled"):
    np.testing.assert_allclose(out[4][1][k], out[1][1][k], rtol=2e-6, atol=1e-7, err_msg=k)


def test_sft_accumulation_and_master_weights():
  graphdef, params = nnx.split(Transformer(ModelConfig.tiny(vocab_size=V), rngs=nnx.Rngs(1)))
  b = opd_batch(5)
  batch = {"tokens": b["student_tokens"], "valid": b["student_valid"],
           "loss_mask": np.concatenate([np.zeros((B, PS), bool), b["completion_mask"]], 1)}
  opt = optax.sgd(0.5, momentum=0.9)
  states = {}
  for m in (1, 2):
    step = jax.jit(make_sft_step(graphdef, opt, microbatches=m))
    state = init_state(jax.tree.map(jnp.copy, params), opt)
    for _ in range(2):
      state, _ = step(state, jax.tree.map(jnp.asarray, batch))
    states[m] = state
  close(states[2].params, states[1].params, rtol=1e-6)
  # bfloat16 parameters with float32 master weights: the update lands on the master copy
  opt = optax.adam(1e-2)
  bf = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  state = init_state(bf, opt, master_weights=True)
  state, _ = jax.jit(make_sft_step(graphdef, opt))(state, jax.tree.map(jnp.asarray, batch))
  for p, mw, p0 in zip(*map(jax.tree.leaves, (state.params, state.master, params))):
    assert p.dtype == jnp.bfloat16 and mw.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(p), np.asarray(mw.astype(jnp.bfloat16)))
  assert any(not np.allclose(np.asarray(m_), np.asarray(p0)) for m_, p0 in
             zip(jax.tree.leaves(state.master), jax.tree.leaves(params)))
  t = init_state(params, opt, teacher=params, teacher_dtype=jnp.bfloat16).teacher
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(t))


def test_remat_policies_give_the_same_gradients():
  cfg = ModelConfig.tiny(vocab_size=V)
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(2)))
  batch = jax.tree.map(jnp.asarray, opd_batch(3))
  grads = {}
  for policy in ("none", "full", "save_dots"):
    gd = nnx.graphdef(Transformer(cfg.replace(remat=policy), rngs=nnx.Rngs(2)))
    step = jax.jit(make_opd_step(gd, graphdef, optax.sgd(1.0), objective="full_forward",
                                 chunk_size=4))
    new, _ = step(init_state(jax.tree.map(jnp.copy, params), optax.sgd(1.0), teacher=params),
                  batch)
    grads[policy] = jax.tree.map(lambda a, b: a - b, params, new.params)
  for policy in ("full", "save_dots"):
    close(grads[policy], grads["none"], rtol=1e-5, atol=1e-8)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
  model = hf_fixtures.make_hf_model("qwen3", seed=4)
  return model, hf_fixtures.save_hf_model(model, str(tmp_path_factory.mktemp("hf") / "m"))


def test_scanned_layers_match_unrolled_and_round_trip(hf_model, tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top
  model, path = hf_model
  ids = np.random.RandomState(0).randint(0, 97, (2, 9))
  want = hf_fixtures.hf_logits(model, ids)
  unrolled = load_hf(path)
  scanned = load_hf(path, scan_layers=True, remat="full")
  assert scanned.layers.attn.q[...].shape[0] == unrolled.cfg.num_layers
  axes = scanned.layers.attn.q.get_metadata()["logical_axes"]
  assert axes == ("layers", "embed", "heads", "head_dim")
  got = jax.jit(lambda m: m(jnp.asarray(ids)))(scanned)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
  np.testing.assert_allclose(np.asarray(got), np.asarray(unrolled(jnp.asarray(ids))), atol=1e-5)
  save_hf(scanned, str(tmp_path / "out"))
  again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  np.testing.assert_allclose(hf_fixtures.hf_logits(again, ids), want, atol=1e-5)
  # cached decoding with a stacked [L, ...] cache: greedy tokens equal the unrolled model's
  cfg = SamplingConfig(max_new_tokens=5, temperature=0.0, decode_segments=2)
  prompt, valid = jnp.asarray(ids), jnp.ones(ids.shape, bool)
  a = sample(*nnx.split(unrolled), prompt, valid, jax.random.key(0), cfg)
  b = sample(*nnx.split(scanned), prompt, valid, jax.random.key(0), cfg)
  np.testing.assert_array_equal(a.tokens, b.tokens)
