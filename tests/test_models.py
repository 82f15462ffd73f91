"""Model parity with HF transformers (float32 logits, save/load round trip, cached decoding)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import hf_fixtures as F
from caopd_jax.models import ModelConfig, Transformer, init_cache, load_hf, save_hf

VARIANTS = [(a, t) for a in ("llama", "qwen2", "qwen3") for t in (False, True)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  out = {}
  for arch, tied in VARIANTS:
    model = F.make_hf_model(arch, tied)
    out[arch, tied] = (model, F.save_hf_model(model, str(root / f"{arch}_{tied}")))
  return out


def _ids(b=2, t=11, seed=0):
  return np.random.RandomState(seed).randint(0, F.TINY["vocab_size"], (b, t)).astype(np.int32)


@pytest.mark.parametrize("arch,tied", VARIANTS)
def test_logits_match_hf(checkpoints, arch, tied):
  hf, path = checkpoints[arch, tied]
  model = load_hf(path)
  assert model.cfg.tie_word_embeddings == tied and model.cfg.num_kv_heads == 2
  out = model(jnp.asarray(_ids()))
  assert out.dtype == jnp.float32 and out.shape == (2, 11, F.TINY["vocab_size"])
  np.testing.assert_allclose(np.asarray(out), F.hf_logits(hf, _ids()), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen3", True)])
def test_save_hf_round_trip_loads_in_transformers(checkpoints, tmp_path, arch, tied):
  hf, path = checkpoints[arch, tied]
  model = load_hf(path)
  save_hf(model, str(tmp_path / "out"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).float().eval()
  assert type(reloaded).__name__ == type(hf).__name__
  np.testing.assert_allclose(F.hf_logits(reloaded, _ids()), F.hf_logits(hf, _ids()), atol=1e-5)
  np.testing.assert_allclose(np.asarray(load_hf(str(tmp_path / "out"))(jnp.asarray(_ids()))),
                             F.hf_logits(hf, _ids()), atol=1e-4)


def test_sharded_save_and_load(checkpoints, tmp_path):
  hf, path = checkpoints["qwen2", False]
  save_hf(load_hf(path), str(tmp_path), max_shard_bytes=20_000)
  index = json.load(open(tmp_path / "model.safetensors.index.json"))
  assert len(set(index["weight_map"].values())) > 1
  np.testing.assert_allclose(np.asarray(load_hf(str(tmp_path))(jnp.asarray(_ids()))),
                             F.hf_logits(hf, _ids()), atol=1e-4)


def test_llama3_rope_scaling_matches_hf(tmp_path):
  rope = dict(rope_type="llama3", rope_theta=5e5, factor=8.0, low_freq_factor=1.0,
              high_freq_factor=4.0, original_max_position_embeddings=64)
  hf = F.make_hf_model("llama", rope_parameters=rope)
  model = load_hf(F.save_hf_model(hf, str(tmp_path)))
  ids = _ids(t=120)
  assert model.cfg.rope_scaling is not None
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), F.hf_logits(hf, ids), atol=1e-4)


def test_left_padding_and_cache_match_unpadded(checkpoints):
  model = load_hf(checkpoints["qwen3", False][1])
  # Jitted (op-by-op eager calls of the model cost seconds of tiny compiles per shape).
  forward = nnx.jit(lambda m, x, v: m(x, valid=v))
  step = nnx.jit(lambda m, x, v, c: (lambda h, c: (m.logits(h), c))(*m.hidden(x, valid=v, cache=c)))
  ids = _ids(b=1, t=9)
  ref = np.asarray(forward(model, jnp.asarray(ids), jnp.ones(ids.shape, bool)))
  padded = np.concatenate([np.zeros((1, 4), np.int32), ids], 1)
  valid = np.arange(13)[None] >= 4
  out = np.asarray(forward(model, jnp.asarray(padded), jnp.asarray(valid)))
  np.testing.assert_allclose(out[:, 4:], ref, atol=1e-5)
  # Prefill 6 tokens into the cache, then decode the rest one at a time.
  cache = init_cache(model.cfg, 1, 13)
  logits, cache = step(model, jnp.asarray(padded[:, :10]), jnp.asarray(valid[:, :10]), cache)
  steps = [np.asarray(logits)[:, -1]]
  for t in range(10, 13):
    logits, cache = step(model, jnp.asarray(padded[:, t:t + 1]), jnp.ones((1, 1), bool), cache)
    steps.append(np.asarray(logits)[:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), ref[:, 5:], atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_greedy_cached_decoding_matches_hf_generate(checkpoints, arch):
  from caopd_jax.sampling import SamplingConfig, sample, valid_from_lengths
  hf, path = checkpoints[arch, False]
  model = load_hf(path)
  graphdef, params = nnx.split(model)
  lens = np.array([8, 5, 2])
  valid = np.asarray(valid_from_lengths(lens, 8))
  prompt = np.where(valid, _ids(b=3, t=8, seed=1), 0)
  out = sample(graphdef, params, jnp.asarray(prompt), jnp.asarray(valid), jax.random.key(0),
               SamplingConfig(max_new_tokens=12, temperature=0.0))
  for b, n in enumerate(lens):
    ref = hf.generate(torch.tensor(prompt[b:b + 1, 8 - n:], dtype=torch.long), max_new_tokens=12,
                      do_sample=False, pad_token_id=0, eos_token_id=None)
    assert np.asarray(out.tokens[b]).tolist() == ref[0, n:].tolist()


def test_bfloat16_compute_close_to_float32(checkpoints):
  path = checkpoints["qwen3", False][1]
  f32 = np.asarray(load_hf(path)(jnp.asarray(_ids())))
  model = load_hf(path, dtype=jnp.bfloat16)
  bf16 = model(jnp.asarray(_ids()))
  assert bf16.dtype == jnp.float32 and model.embed[...].dtype == jnp.float32
  assert np.abs(np.asarray(bf16) - f32).max() < 0.1 * np.abs(f32).max()


def test_every_param_has_logical_axes():
  state = nnx.state(Transformer(ModelConfig.tiny("qwen2")), nnx.Param)
  for path, var in nnx.to_flat_state(state):
    axes = var.get_metadata().get("logical_axes")
    assert axes is not None and len(axes) == var[...].ndim, path


def test_load_errors_name_the_problem(checkpoints, tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_hf(str(tmp_path / "nope"))
  gpt2 = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)
  gpt2.save_pretrained(str(tmp_path / "gpt2"))
  with pytest.raises(ValueError, match="Unsupported architecture model_type='gpt2'"):
    load_hf(str(tmp_path / "gpt2"))
  path = checkpoints["qwen3", False][1]
  cfg = json.load(open(os.path.join(path, "config.json")))
  os.makedirs(tmp_path / "noweights")
  json.dump(cfg, open(tmp_path / "noweights" / "config.json", "w"))
  with pytest.raises(FileNotFoundError, match="No model.safetensors"):
    load_hf(str(tmp_path / "noweights"))
  os.makedirs(tmp_path / "shape")
  json.dump(dict(cfg, intermediate_size=40), open(tmp_path / "shape" / "config.json", "w"))
  os.link(os.path.join(path, "model.safetensors"), tmp_path / "shape" / "model.safetensors")
  with pytest.raises(ValueError, match="Shape mismatch for 'model.layers.0.mlp.(gate|up|down)_proj"):
    load_hf(str(tmp_path / "shape"))
  os.makedirs(tmp_path / "corrupt")
  json.dump(cfg, open(tmp_path / "corrupt" / "config.json", "w"))
  data = open(os.path.join(path, "model.safetensors"), "rb").read()
  open(tmp_path / "corrupt" / "model.safetensors", "wb").write(data[: len(data) // 2])
  with pytest.raises(ValueError, match="Could not read weights"):
    load_hf(str(tmp_path / "corrupt"))
