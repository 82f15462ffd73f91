"""Decode throughput of `caopd_jax.sampling.sample` vs HF `generate` (PyTorch) and Tunix's sampler.

One random tiny Qwen3 (vocab 512, hidden 256, 4 layers, 8 heads / 4 kv heads, head_dim 32,
MLP 768, ~3.4M parameters) is built with transformers + torch, saved locally, and loaded by every
sampler, so all run the SAME float32 weights. Batch 32, prompt 32 (no padding), exactly 64 new
tokens (no early stop anywhere: HF gets eos_token_id=None and min_new_tokens=64, Tunix an EOS id
that cannot occur, ours no stop ids), top-p 0.9 at temperature 1 (HF's default top_k=50 off).

Each sampler is timed for a whole call (prefill + decode) with 64 and with 1 new token; all
timed calls are interleaved round-robin across samplers (so background load hits them alike),
after one untimed warm-up call each; medians over `--repeats`. Reported:
  e2e tokens/s     = batch * 64 / t(64)
  decode tokens/s  = batch * 63 / (t(64) - t(1))  (prefill and first token subtracted)
  compile s        = ours: jit lower + compile; HF / Tunix: first call minus median call
The `matmuls only (floor)` row (`MatmulFloor`) times the decode step's weight matmuls alone on
the same weights, and the last lines print HF's decode step over that floor: the best ratio any
XLA decode step of this model could reach on this machine.
A second call of ours with the same shapes (new key, new prompt values) must not recompile:
`sample._cache_size()` before/after and the number of compilations `jax.log_compiles` reports.

The `ours top-p, 4 seg` row is the same sampler with `decode_segments=4` (the decode loop in 4
segments, each with a KV cache only as long as its steps need; identical outputs).

  python -m benchmarks.sampler [--repeats 7] [--segments 4] [--no-tunix] [--no-hf]

Tunix is a benchmark-only dependency (benchmarks/README.md, "Sampler throughput"); without
it the Tunix row prints "skipped: <reason>".
"""
import argparse
import functools
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from caopd_jax.models import load_hf
from caopd_jax.sampling import SamplingConfig, sample

CONFIG = dict(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
              num_attention_heads=8, num_key_value_heads=4, head_dim=32, rms_norm_eps=1e-6,
              rope_theta=1e6, max_position_embeddings=512, tie_word_embeddings=False,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)
PARITY_TOKENS = 16


def make_checkpoint(path, seed=0):
  import torch
  import transformers
  cfg = transformers.Qwen3Config(**CONFIG)
  torch.manual_seed(seed)
  model = transformers.Qwen3ForCausalLM(cfg).float().eval()
  with torch.no_grad():  # random norm scales so every parameter matters
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path)
  return sum(p.numel() for p in model.parameters())


class Ours:
  name = "ours top-p"

  def __init__(self, path, prompt, top_p, greedy=False, segments=1):
    self.graphdef, self.params = nnx.split(load_hf(path))
    self.prompt = jnp.asarray(prompt)
    self.valid = jnp.ones(prompt.shape, bool)
    self.kw = dict(temperature=0.0) if greedy else dict(top_p=top_p)
    self.kw["decode_segments"] = segments
    self.name = ("ours greedy" if greedy else "ours top-p") + (
        f", {segments} seg" if segments > 1 else "")
    self.calls = 0

  def cfg(self, n):
    return SamplingConfig(max_new_tokens=n, **self.kw)

  def compile(self, n):
    t0 = time.perf_counter()
    sample.lower(self.graphdef, self.params, self.prompt, self.valid, jax.random.key(0),
                 self.cfg(n)).compile()
    return time.perf_counter() - t0

  def __call__(self, n, prompt=None):
    self.calls += 1
    prompt = self.prompt if prompt is None else prompt
    out = sample(self.graphdef, self.params, prompt, self.valid, jax.random.key(self.calls),
                 self.cfg(n))
    jax.block_until_ready(out)
    assert out.tokens.shape == (prompt.shape[0], n) and int(out.lengths.min()) == n
    return np.asarray(out.tokens)


class HF:
  name = "HF generate (torch)"

  def __init__(self, path, prompt, top_p, greedy=False):
    import torch
    import transformers
    self.torch = torch
    self.model = transformers.AutoModelForCausalLM.from_pretrained(path).float().eval()
    self.ids = torch.tensor(prompt, dtype=torch.long)
    self.kw = (dict(do_sample=False) if greedy else
               dict(do_sample=True, top_p=top_p, top_k=0, temperature=1.0))

  def __call__(self, n):
    with self.torch.inference_mode():
      out = self.model.generate(self.ids, attention_mask=self.torch.ones_like(self.ids),
                                max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                                pad_token_id=0, **self.kw)
    assert out.shape == (self.ids.shape[0], self.ids.shape[1] + n), out.shape
    return out[:, self.ids.shape[1]:].numpy()


class MatmulFloor:
  """The decode step's weight matmuls alone: a lower bound on any XLA decode step.

  Per step, for a [batch, D] activation: each layer's q, k, v, o, gate, up and down projections
  (the loaded weights, in the model's order, each layer fed by the previous one), then the
  vocabulary projection; no attention over the cache, norms, RoPE or sampling. The k / v results
  and the logits are kept alive by a sum and a max (small reductions, so the figure is a slight
  over-estimate of the floor). `(n)` runs n - 1 such steps in one jitted `fori_loop`, so the
  table's decode columns give the floor per step.
  """
  name = "matmuls only (floor)"

  def __init__(self, path, prompt, top_p, greedy=False):
    del top_p, greedy
    state = nnx.split(load_hf(path))[1].to_pure_dict()
    d = CONFIG["hidden_size"]
    flat = lambda w, lead: w.reshape(d, -1) if lead else w.reshape(-1, d)
    self.layers = [(flat(l["attn"]["q"], 1), flat(l["attn"]["k"], 1), flat(l["attn"]["v"], 1),
                    flat(l["attn"]["o"], 0), l["mlp"]["gate"], l["mlp"]["up"], l["mlp"]["down"])
                   for _, l in sorted(state["layers"].items())]
    self.head = state["lm_head"]
    self.x = jnp.asarray(np.random.RandomState(1).randn(prompt.shape[0], d), jnp.float32)
    self.run = jax.jit(self._run, static_argnums=0)

  @staticmethod
  def _run(steps, layers, head, x):
    def body(_, x):
      for q, k, v, o, gate, up, down in layers:
        kv = jnp.sum(x @ k, -1, keepdims=True) + jnp.sum(x @ v, -1, keepdims=True)
        x = x + (x @ q) @ o + 1e-6 * kv
        x = x + (jax.nn.silu(x @ gate) * (x @ up)) @ down
        x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)  # keeps x bounded
      return x + 1e-6 * jnp.max(x @ head, -1, keepdims=True)
    return jax.lax.fori_loop(0, steps, body, x)

  def __call__(self, n):
    return np.asarray(self.run(n - 1, self.layers, self.head, self.x))


def import_tunix():
  """Tunix's sampler and Qwen3 without `tunix/__init__.py` (which imports the trainers)."""
  if "tunix" not in sys.modules:
    spec = importlib.util.find_spec("tunix")
    if spec is None:
      raise ImportError("google-tunix is not installed (pip install --no-deps google-tunix "
                        "jaxtyping wadler_lindig sentencepiece)")
    pkg = types.ModuleType("tunix")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["tunix"] = pkg
  from tunix.generate import sampler as tunix_sampler
  from tunix.models.qwen3 import model as tunix_model
  from tunix.models.qwen3 import params as tunix_params
  return tunix_sampler, tunix_model, tunix_params


class _IdTokenizer:
  """Prompts are space-separated token ids; Tunix's sampler needs only these five methods."""

  def encode(self, text, **_):
    return [int(t) for t in text.split()]

  def decode(self, ids, **_):
    return " ".join(map(str, ids))

  def bos_id(self):
    return 0  # falsy: no BOS is prepended

  def eos_id(self):
    return -1

  def pad_id(self):
    return 0  # prompt ids are >= 1


class Tunix:
  name = "Tunix Sampler"

  def __init__(self, path, prompt, top_p, greedy=False):
    tunix_sampler, tunix_model, tunix_params = import_tunix()
    c = CONFIG
    mcfg = tunix_model.ModelConfig(
        num_layers=c["num_hidden_layers"], vocab_size=c["vocab_size"],
        embed_dim=c["hidden_size"], hidden_dim=c["intermediate_size"],
        num_heads=c["num_attention_heads"], head_dim=c["head_dim"],
        num_kv_heads=c["num_key_value_heads"], rope_theta=c["rope_theta"],
        norm_eps=c["rms_norm_eps"], use_tied_embedding=False)
    model = tunix_params.create_model_from_safe_tensors(path, mcfg)
    b, self.p = prompt.shape
    self.max_new = 64
    self.sampler = tunix_sampler.Sampler(model, _IdTokenizer(), tunix_sampler.CacheConfig(
        cache_size=self.p + 128, num_layers=c["num_hidden_layers"],
        num_kv_heads=c["num_key_value_heads"], head_dim=c["head_dim"]))
    self.texts = [" ".join(map(str, row)) for row in prompt]
    self.kw = (dict(temperature=0.0) if greedy else
               dict(temperature=1.0, top_p=top_p, top_k=None))
    self.seed = 0

  def __call__(self, n):
    self.seed += 1
    out = self.sampler(self.texts, max_generation_steps=n, max_prompt_length=self.p,
                       eos_tokens=[-1], seed=self.seed, **self.kw)
    assert all(len(t) == n for t in out.tokens), [len(t) for t in out.tokens]
    return np.stack([np.asarray(t) for t in out.tokens])


def count_compiles(fn, name="sample"):
  """(fn's result, number of XLA compilations of jit(`name`) jax.log_compiles reports)."""
  records = []
  handler = logging.Handler()
  handler.emit = lambda r: records.append(r.getMessage())
  logger = logging.getLogger("jax")
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      out = fn()
  finally:
    logger.removeHandler(handler)
  return out, sum(f"Finished XLA compilation of jit({name})" in m for m in records)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--prompt", type=int, default=32)
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--top-p", type=float, default=0.9)
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--segments", type=int, default=4,
                  help="decode_segments of the extra 'ours top-p, N seg' row (<= 1: no such row)")
  ap.add_argument("--no-hf", action="store_true")
  ap.add_argument("--no-tunix", action="store_true")
  a = ap.parse_args()
  b, n = a.batch, a.new
  prompt = np.random.RandomState(0).randint(1, CONFIG["vocab_size"], (b, a.prompt))
  prompt = prompt.astype(np.int32)
  with tempfile.TemporaryDirectory() as tmp:
    n_params = make_checkpoint(tmp)
    print(f"{jax.devices()[0].platform} ({os.cpu_count()} cores), jax {jax.__version__}; Qwen3 "
          f"{n_params / 1e6:.2f}M params (float32); batch {b}, prompt {a.prompt}, {n} new "
          f"tokens, top_p {a.top_p}, median of {a.repeats} interleaved repeats")
    samplers, skipped, compile_s = {}, {}, {}
    segmented = functools.partial(Ours, segments=a.segments)
    segmented.name = f"ours top-p, {a.segments} seg"
    for cls, greedy, off in [(Ours, False, False), (segmented, False, a.segments <= 1),
                             (Ours, True, False), (MatmulFloor, False, False),
                             (HF, False, a.no_hf), (Tunix, False, a.no_tunix)]:
      if off:
        skipped[cls.name] = "skipped: disabled by flag"
        continue
      try:
        s = cls(tmp, prompt, a.top_p, greedy=greedy)
      except Exception as e:  # pylint: disable=broad-except
        skipped[cls.name] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:150]}"
        continue
      samplers[s.name] = s
    # Compile (ours, explicitly) and warm up: the first call of each length is not timed.
    first = {}
    for name, s in samplers.items():
      if isinstance(s, Ours):
        compile_s[name] = s.compile(n) + s.compile(1)
      for length in (n, 1):
        t0 = time.perf_counter()
        try:
          s(length)
        except Exception as e:  # pylint: disable=broad-except
          skipped[name] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:150]}"
          break
        first[name, length] = time.perf_counter() - t0
    for name in skipped:
      samplers.pop(name, None)
    times = {(name, length): [] for name in samplers for length in (n, 1)}
    for _ in range(a.repeats):
      for name, s in samplers.items():
        for length in (n, 1):
          t0 = time.perf_counter()
          s(length)
          times[name, length].append(time.perf_counter() - t0)
    # Greedy parity of the three implementations on the same weights.
    parity = {}
    for name, cls in [("HF generate (torch)", HF), ("Tunix Sampler", Tunix)]:
      if name in samplers:
        ref = Ours(tmp, prompt, a.top_p, greedy=True)(PARITY_TOKENS)
        parity[name] = float((cls(tmp, prompt, a.top_p, greedy=True)(PARITY_TOKENS) == ref).mean())
    # Recompilation check: same shapes, a new key and new prompt values.
    ours = samplers.get("ours top-p")
    if ours is not None:
      before = sample._cache_size()
      new_prompt = ours.prompt % (CONFIG["vocab_size"] - 1) + 1  # other values, same shape
      _, compiles = count_compiles(lambda: ours(n, prompt=new_prompt))
      after = sample._cache_size()

  med = {k: statistics.median(v) for k, v in times.items()}
  for name in samplers:
    compile_s.setdefault(name, first[name, n] - med[name, n])
  hf = "HF generate (torch)"
  print(f"{'sampler':<21}{'e2e tok/s':>10}{'decode tok/s':>13}{'ms/step':>9}{'prefill ms':>11}"
        f"{'compile s':>10}{'e2e vs HF':>10}{'decode vs HF':>13}")
  for name in list(samplers) + list(skipped):
    if name in skipped:
      print(f"{name:<21}{skipped[name]}")
      continue
    full, one = med[name, n], med[name, 1]
    e2e, dec, step = b * n / full, b * (n - 1) / (full - one), (full - one) / (n - 1)
    if hf in samplers:
      hf_e2e = b * n / med[hf, n]
      hf_dec = b * (n - 1) / (med[hf, n] - med[hf, 1])
      r1, r2 = f"{e2e / hf_e2e:.2f}x", f"{dec / hf_dec:.2f}x"
    else:
      r1 = r2 = "-"
    if isinstance(samplers[name], MatmulFloor):  # no prefill: only the per-step columns
      e2e_s, one_s, r1 = "-", "-", "-"
    else:
      e2e_s, one_s = f"{e2e:.0f}", f"{1e3 * one:.1f}"
    print(f"{name:<21}{e2e_s:>10}{dec:>13.0f}{1e3 * step:>9.2f}{one_s:>11}"
          f"{compile_s[name]:>10.2f}{r1:>10}{r2:>13}")
  floor = "matmuls only (floor)"
  if hf in samplers and floor in samplers:
    step_ms = lambda name: 1e3 * (med[name, n] - med[name, 1]) / (n - 1)
    ceiling = step_ms(hf) / step_ms(floor)
    print(f"ceiling: HF's decode step / the matmul floor = {step_ms(hf):.2f} / "
          f"{step_ms(floor):.2f} ms = {ceiling:.2f}x; a decode step 5x faster than HF's must take "
          f"<= {step_ms(hf) / 5:.2f} ms, {step_ms(hf) / 5 / step_ms(floor):.2f}x the floor")
  for name, frac in parity.items():
    print(f"greedy parity with ours ({PARITY_TOKENS} tokens x {b} rows): {name} "
          f"{100 * frac:.1f}% identical tokens")
  if ours is not None:
    verdict = "no recompilation" if after == before and compiles == 0 else "RECOMPILED"
    print(f"recompilation check (same shapes, new key, new prompt values): "
          f"sample._cache_size() {before} -> {after}, jax.log_compiles saw {compiles} "
          f"compilations: {verdict}")


if __name__ == "__main__":
  main()
