"""OPD train-step throughput: `caopd_jax.train.step.make_opd_step` vs the same step in PyTorch.

One random Qwen3 student and one random Qwen3 teacher (the same config, ~27M parameters each:
vocab 8192, hidden 512, 6 layers, 8 heads / 4 kv heads, head_dim 64, MLP 1536, untied
lm_head) are built with transformers + torch, saved locally and loaded by both sides
(ours with `caopd_jax.models.load_hf`), so both run the SAME float32 weights on the same batch:
B=8 rows of prompt 64 + completion 192 tokens (no padding; the teacher sees its own prompt of
the same length and the same completion), loss on the 192 completion tokens.

Step (both sides, float32): teacher forward without gradients, student forward + backward,
full-vocabulary KL(teacher || student) per completion token (`full_forward`), token mean, then
global-norm gradient clipping at 1.0 and AdamW (lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight
decay 0.01, constant lr). Fixed teacher (no EMA).
  ours:    jax.jit(make_opd_step(..., objective="full_forward", chunk_size=...),
           donate_argnums=0), compiled once ahead of time (lower + compile timed separately).
  PyTorch: transformers Qwen3ForCausalLM (sdpa attention, use_cache=False,
           logits_to_keep=C+1 so only completion positions are projected), F.log_softmax,
           clip_grad_norm_(1.0), torch.optim.AdamW (fastest available implementation).

All timed work is interleaved round-robin (matmul peak of each framework, then one step of
each), after one untimed warm-up step each, so background load hits both alike; medians over
`--rounds`. tokens/s counts the B * (P + C) sequence tokens a step trains on.

Matmul peak: median time of a square float32 matmul (jnp.dot under jit / torch.mm) at each size
of `--peak-sizes`; a framework's peak is its best size, the machine's peak the larger of the two.

Model FLOPs per step (S = P + C, N = non-embedding parameters of one model: the blocks' weights
and norms, the final norm; the embedding gather is not counted):
  student fwd+bwd: 6 N B S + 6 D V B C (lm_head on the C completion positions)
                   + 3 * 4 L B S^2 H Dh (attention scores and p.V, full S x S as in PaLM's MFU)
  teacher fwd:     2 N B S + 2 D V B C + 4 L B S^2 H Dh
Rematerialised work (the chunked objective recomputes the vocabulary projections in its
backward) is not model FLOPs and is not counted.

  python -m benchmarks.train_step [--rounds 7] [--chunk-size 192]
  python -m benchmarks.train_step --profile=/tmp/ts_prof --no-torch --rounds 1

--profile=DIR traces `--profile-steps` more steps of ours with `jax.profiler` (a perfetto trace
under DIR) and prints where the device time goes: every XLA op's summed duration per step,
grouped (matmul fusions, layout copies / transposes, reductions, other fusions), and the ten
most expensive ops.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

CONFIG = dict(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
              num_attention_heads=8, num_key_value_heads=4, head_dim=64, rms_norm_eps=1e-6,
              rope_theta=1e6, max_position_embeddings=1024, tie_word_embeddings=False,
              bos_token_id=None, eos_token_id=None, pad_token_id=None, use_cache=False)
OPT = dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0)


def make_checkpoint(path, seed):
  import torch
  import transformers
  transformers.utils.logging.disable_progress_bar()
  cfg = transformers.Qwen3Config(**CONFIG)
  torch.manual_seed(seed)
  model = transformers.Qwen3ForCausalLM(cfg).float()
  with torch.no_grad():  # random norm scales so every parameter matters
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path)


def param_counts():
  c = CONFIG
  d, v, f, L = c["hidden_size"], c["vocab_size"], c["intermediate_size"], c["num_hidden_layers"]
  h, kv, dh = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
  attn = d * h * dh * 2 + d * kv * dh * 2 + 2 * dh  # q, o, k, v, q_norm, k_norm
  block = attn + 3 * d * f + 2 * d  # + MLP + two norms
  nonemb = L * block + d  # + final norm
  return dict(nonembedding=nonemb, embedding=v * d, lm_head=d * v, total=nonemb + 2 * v * d)


def model_flops(b, p, c):
  cf = CONFIG
  n = param_counts()["nonembedding"]
  d, v, L = cf["hidden_size"], cf["vocab_size"], cf["num_hidden_layers"]
  h, dh = cf["num_attention_heads"], cf["head_dim"]
  s = p + c
  attn_fwd = 4 * L * b * s * s * h * dh
  student = 6 * n * b * s + 6 * d * v * b * c + 3 * attn_fwd
  teacher = 2 * n * b * s + 2 * d * v * b * c + attn_fwd
  return student + teacher


def make_batch(b, p, c, seed=0):
  rs = np.random.RandomState(seed)
  v = CONFIG["vocab_size"]
  completion = rs.randint(0, v, (b, c))
  student = np.concatenate([rs.randint(0, v, (b, p)), completion], 1).astype(np.int32)
  teacher = np.concatenate([rs.randint(0, v, (b, p)), completion], 1).astype(np.int32)
  return dict(student_tokens=student, student_valid=np.ones(student.shape, bool),
              teacher_tokens=teacher, teacher_valid=np.ones(teacher.shape, bool),
              completion_mask=np.ones((b, c), bool))


class Ours:
  name = "ours (JAX)"

  def __init__(self, student_path, teacher_path, batch, chunk_size):
    import jax
    import jax.numpy as jnp
    import ml_collections
    from flax import nnx

    from caopd_jax.models import load_hf
    from caopd_jax.train.optim import make_optimizer
    from caopd_jax.train.step import init_state, make_opd_step
    self.jax = jax
    graphdef, params = nnx.split(load_hf(student_path))
    tgraphdef, tparams = nnx.split(load_hf(teacher_path))
    opt_cfg = ml_collections.ConfigDict(dict(name="adamw", schedule="constant", warmup_frac=0.0,
                                             **OPT))
    opt, schedule = make_optimizer(opt_cfg, total_steps=1000)
    self.step_fn = jax.jit(make_opd_step(graphdef, tgraphdef, opt, schedule,
                                         objective="full_forward", chunk_size=chunk_size),
                           donate_argnums=0)
    self.state = init_state(params, opt, teacher=tparams)
    self.batch = {k: jnp.asarray(v) for k, v in batch.items()}

  def compile(self):
    t0 = time.perf_counter()
    lowered = self.step_fn.lower(self.state, self.batch)
    t1 = time.perf_counter()
    self.compiled = lowered.compile()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.batch)
    return float(self.jax.block_until_ready(metrics["train/loss"]))


class Torch:
  name = "PyTorch (HF)"

  def __init__(self, student_path, teacher_path, batch):
    import torch
    import transformers
    self.torch = torch
    F = torch.nn.functional
    load = lambda p: transformers.AutoModelForCausalLM.from_pretrained(
        p, dtype=torch.float32, attn_implementation="sdpa").float()
    self.student, self.teacher = load(student_path).train(), load(teacher_path).eval()
    for p in self.teacher.parameters():
      p.requires_grad_(False)
    self.params = list(self.student.parameters())
    kw = dict(lr=OPT["lr"], betas=(OPT["b1"], OPT["b2"]), eps=OPT["eps"],
              weight_decay=OPT["weight_decay"])
    try:
      self.opt = torch.optim.AdamW(self.params, fused=True, **kw)
      self.opt_impl = "fused"
    except (RuntimeError, ValueError):
      self.opt = torch.optim.AdamW(self.params, foreach=True, **kw)
      self.opt_impl = "foreach"
    self.s_ids = torch.as_tensor(batch["student_tokens"], dtype=torch.long)
    self.t_ids = torch.as_tensor(batch["teacher_tokens"], dtype=torch.long)
    self.mask = torch.as_tensor(batch["completion_mask"], dtype=torch.float32)
    c = self.mask.shape[1]

    def step():
      self.opt.zero_grad(set_to_none=True)
      with torch.no_grad():
        t_logits = self.teacher(input_ids=self.t_ids, use_cache=False,
                                logits_to_keep=c + 1).logits[:, :-1]
        logq = F.log_softmax(t_logits.float(), dim=-1)
      s_logits = self.student(input_ids=self.s_ids, use_cache=False,
                              logits_to_keep=c + 1).logits[:, :-1]
      logp = F.log_softmax(s_logits.float(), dim=-1)
      kl = (logq.exp() * (logq - logp)).sum(-1)  # KL(q || pi) per completion token
      loss = (kl * self.mask).sum() / self.mask.sum().clamp(min=1.0)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(self.params, OPT["grad_clip"])
      self.opt.step()
      return loss.item()

    self.step = step

  def __call__(self):
    return self.step()


def matmul_peaks(sizes, reps=3):
  """{framework: {n: median seconds}} for one square n x n float32 matmul."""
  import jax
  import jax.numpy as jnp
  import torch
  out = {"jax": {}, "torch": {}}
  dot = jax.jit(jnp.dot)
  for n in sizes:
    rs = np.random.RandomState(n)
    a, b = rs.randn(n, n).astype(np.float32), rs.randn(n, n).astype(np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    dot(ja, jb).block_until_ready()
    torch.mm(ta, tb)
    for name, fn in (("jax", lambda: dot(ja, jb).block_until_ready()),
                     ("torch", lambda: torch.mm(ta, tb))):
      ts = []
      for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
      out[name][n] = min(ts)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--prompt", type=int, default=64)
  ap.add_argument("--completion", type=int, default=192)
  ap.add_argument("--chunk-size", type=int, default=192)
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--peak-sizes", type=int, nargs="+", default=[1024, 2048])
  ap.add_argument("--no-torch", action="store_true")
  ap.add_argument("--profile", default="", help="trace our step into this directory")
  ap.add_argument("--profile-steps", type=int, default=3)
  a = ap.parse_args()

  import jax
  import torch
  ncpu = os.cpu_count()
  torch.set_num_threads(ncpu)
  b, p, c = a.batch, a.prompt, a.completion
  counts = param_counts()
  flops = model_flops(b, p, c)
  batch = make_batch(b, p, c)
  print(f"machine: {ncpu} CPU cores; jax {jax.__version__} ({jax.devices()[0].platform}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"model: Qwen3 {CONFIG['num_hidden_layers']} layers, hidden {CONFIG['hidden_size']}, "
        f"heads {CONFIG['num_attention_heads']}/{CONFIG['num_key_value_heads']} x "
        f"{CONFIG['head_dim']}, MLP {CONFIG['intermediate_size']}, vocab {CONFIG['vocab_size']}, "
        f"untied; params {counts['total'] / 1e6:.2f}M (non-embedding "
        f"{counts['nonembedding'] / 1e6:.2f}M, embedding + lm_head "
        f"{2 * counts['embedding'] / 1e6:.2f}M)")
  print(f"batch: B={b}, prompt {p} + completion {c} (loss on {b * c} tokens); chunk_size "
        f"{a.chunk_size}; model FLOPs/step {flops / 1e9:.1f} G")

  with tempfile.TemporaryDirectory() as tmp:
    sp, tp = os.path.join(tmp, "student"), os.path.join(tmp, "teacher")
    make_checkpoint(sp, seed=0)
    make_checkpoint(tp, seed=1)
    ours = Ours(sp, tp, batch, a.chunk_size)
    ref = None if a.no_torch else Torch(sp, tp, batch)
  assert sum(x.size for x in jax.tree.leaves(ours.state.params)) == counts["total"]

  t_lower, t_compile = ours.compile()
  t0 = time.perf_counter()
  first = {"ours": ours()}
  first_s = {"ours": time.perf_counter() - t0}
  if ref is not None:
    t0 = time.perf_counter()
    first["torch"] = ref()
    first_s["torch"] = time.perf_counter() - t0
    print(f"first-step loss: ours {first['ours']:.7f}  PyTorch {first['torch']:.7f}  "
          f"|diff| {abs(first['ours'] - first['torch']):.2e}")

  runners = {"ours": ours} if ref is None else {"ours": ours, "torch": ref}
  times = {k: [] for k in runners}
  losses = {k: [] for k in runners}
  peaks = {"jax": {n: [] for n in a.peak_sizes}, "torch": {n: [] for n in a.peak_sizes}}
  for r in range(a.rounds):
    pk = matmul_peaks(a.peak_sizes)
    for fw in pk:
      for n, t in pk[fw].items():
        peaks[fw][n].append(t)
    order = list(runners) if r % 2 == 0 else list(runners)[::-1]
    for k in order:
      t0 = time.perf_counter()
      losses[k].append(runners[k]())
      times[k].append(time.perf_counter() - t0)
    print(f"round {r}: " + "  ".join(f"{k} {times[k][-1]:.3f}s" for k in runners), flush=True)
  assert ours.compiled is not None  # every step ran the one AOT-compiled executable

  tok = b * (p + c)
  med = {k: statistics.median(v) for k, v in times.items()}
  peak = {fw: max(2 * n ** 3 / statistics.median(ts) for n, ts in d.items())
          for fw, d in peaks.items()}
  machine_peak = peak["jax"] if ref is None else max(peak.values())
  if ref is not None:
    print(f"loss after {a.rounds + 1} steps: ours {losses['ours'][-1]:.7f}  PyTorch "
          f"{losses['torch'][-1]:.7f}  |diff| {abs(losses['ours'][-1] - losses['torch'][-1]):.2e}")
  print()
  print(f"{'':<14} {'step s':>8} {'tokens/s':>9} {'vs torch':>9} {'compile s':>10} "
        f"{'mm peak GF/s':>13} {'model GF/s':>11} {'of peak':>8}")
  for k, fw in (("ours", "jax"), ("torch", "torch")):
    if k not in runners:
      continue
    ratio = f"{med['torch'] / med[k]:.2f}x" if "torch" in med else "-"
    comp = f"{t_lower + t_compile:.1f}" if k == "ours" else f"({first_s[k] - med[k]:.1f})"
    print(f"{runners[k].name:<14} {med[k]:>8.3f} {tok / med[k]:>9.0f} {ratio:>9} {comp:>10} "
          f"{peak[fw] / 1e9:>13.1f} {flops / med[k] / 1e9:>11.1f} "
          f"{flops / med[k] / machine_peak:>7.1%}")
  print(f"\ncompile (ours): trace+lower {t_lower:.1f}s + XLA compile {t_compile:.1f}s; "
        f"PyTorch: first step minus median step, in parentheses (eager, no compile). "
        f"'of peak' = model GFLOP/s / {machine_peak / 1e9:.1f} (best matmul of either "
        f"framework, sizes {a.peak_sizes}); PyTorch AdamW "
        f"{'-' if ref is None else ref.opt_impl}.")
  for fw in peak:
    print(f"matmul GFLOP/s {fw}: " + ", ".join(
        f"n={n} {2 * n ** 3 / statistics.median(ts) / 1e9:.1f}" for n, ts in peaks[fw].items()))
  if a.profile:
    profile(ours, a.profile, a.profile_steps)


GROUPS = (("YNNPACK fusions (dots, their reductions)", ("ynn", "xnn", "onednn", "dot")),
          ("layout copies and transposes", ("copy", "transpose")))


def profile(ours, directory, steps):
  """Traces `steps` steps of ours and prints the op time per step by group (summarize)."""
  import glob
  import jax
  t0 = time.perf_counter()
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    for _ in range(steps):
      ours()
  wall = (time.perf_counter() - t0) / steps
  path = sorted(glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"),
                          recursive=True))[-1]
  summarize(path, steps, wall)


def summarize(path, steps, wall):
  """Sums the XLA ops' durations of a perfetto trace (events with an `hlo_op`) per step."""
  import collections
  import gzip
  import json
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  ops, busy = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X":
      continue
    if "hlo_op" in e.get("args", {}):
      ops[e["name"]] += e.get("dur", 0) / 1e6 / steps
    elif e["name"] == "ThunkExecutor::Execute":  # an XLA worker thread running the program
      busy[e["tid"]] += e.get("dur", 0) / 1e6 / steps
  if not ops:
    print(f"profile: no XLA op events found in {path}")
    return
  groups = collections.Counter()
  for name, t in ops.items():
    low = name.lower()
    g = next((g for g, keys in GROUPS if any(k in low for k in keys)), "other fusions and ops")
    groups[g] += t
  total = sum(ops.values())
  print(f"\nprofile ({path}), per step: wall {wall:.3f} s (traced); summed XLA op time "
        f"{total:.3f} s; XLA worker threads busy " +
        ", ".join(f"{t:.3f} s" for t in sorted(busy.values(), reverse=True)))
  for g, t in groups.most_common():
    print(f"  {g:<40} {t:7.3f} s  {t / total:6.1%}")
  print("  most expensive ops:")
  for name, t in ops.most_common(10):
    print(f"    {name:<50} {t:7.3f} s")


if __name__ == "__main__":
  sys.exit(main())
