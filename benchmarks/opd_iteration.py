"""One whole CaOPD iteration: ours (one compiled graph) vs a PyTorch + transformers pipeline doing
the same work the way the released CaOPD code does, side by side, per phase.

The embedded task's shapes: 4 prompts x K=8 rollouts (24 new tokens, T=1), the EMA self-teacher
with the demonstration in context, CaOPD's three replacements, full-vocabulary KL(teacher ||
student) per completion token (per-sequence mean), AdamW with clipping, EMA update (a = 0.001).
Two students (same weights on both sides, loaded from one HF checkpoint): the default job's
(configs/common.py model(), 0.8M) and a ~25M-parameter Qwen3 (hidden 512, 8 layers), over the
task's character vocabulary.

  ours:    caopd_jax.opd.iteration.Iteration (the OPD job's own setup), jitted as the train
           loop jits it (train.loop.compile_step: donated state, declared shardings). Phase times
           come from the same pieces jitted separately: rollouts (the sampler), verification
           (in-graph `pure_callback`) + P_acc + the CaOPD transform + batch assembly, teacher
           scoring (its forward), update (the train step minus the teacher forward).
  PyTorch: HF `generate` (num_return_sequences=K) for the rollouts; decoding, exact-match
           verification, P_acc and the text replacement in Python, then re-tokenisation (as the
           released code does); a teacher forward under no_grad; the same loss; backward,
           clip_grad_norm_, fused AdamW; EMA with torch._foreach_lerp_.
The first iteration's losses are compared on the same rollouts (our sampled tokens fed to both).
Repeats are interleaved; medians [min-max] are printed with the end-to-end ratio.

  python -m benchmarks.opd_iteration [--sizes default,25m --rounds 5]
"""
import argparse
import copy
import dataclasses
import os
import statistics
import sys
import tempfile
import time

import numpy as np

SIZES = {
    "default": None,  # configs/common.model()
    "25m": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
                intermediate_size=1536, tie_word_embeddings=False),
}


def build(size, tmp):
  """(config, HF dir) of the CaOPD iteration at `size`."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from caopd_jax import tasks  # pylint: disable=g-import-not-at-top
  from caopd_jax.models import ModelConfig, Transformer, save_hf  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  del jnp
  c = common.opd(caopd=True, data_dir=os.path.join(tmp, "tfds"), report_objectives=(),
                 steps=1000, log_every=1000)
  c.task.update(dict(num_train=400, num_test=40, num_ood=20))
  c.optim.update(dict(schedule="constant", warmup_frac=0.0))
  tok = tasks.get(c.task).new_tokenizer()
  m = dict(common.model())
  m.update(SIZES[size] or {})
  path = os.path.join(tmp, size)
  save_hf(Transformer(ModelConfig(vocab_size=tok.vocab_size, **m), rngs=nnx.Rngs(0)), path,
          tokenizer=tok)
  c.init_from = path
  return c, path


class Ours:
  def __init__(self, config, workdir):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from caopd_jax.jobs import opd  # pylint: disable=g-import-not-at-top
    from caopd_jax.train.loop import compile_step  # pylint: disable=g-import-not-at-top
    from caopd_jax.train.step import completion_hidden  # pylint: disable=g-import-not-at-top
    self.jax = jax
    self.run = run = opd.setup(config, workdir)
    self.prompts = jax.tree.map(jnp.asarray, run.get_batch(0))
    it = run.iteration
    t0 = time.perf_counter()
    self.step, _, _ = compile_step(it, run.mesh, run.state, self.prompts)
    self.compiled = self.step.lower(run.state, self.prompts).compile()
    self.compile_s = time.perf_counter() - t0
    self.state = run.state
    self.rollout = jax.jit(dataclasses.replace(it, verify=lambda prompts, samples: None).rollout)
    self.judge = jax.jit(lambda prompts, samples: it.batch(prompts, samples,
                                                           it.verify(prompts, samples)))
    gd = run.teacher.graphdef

    def teacher_forward(teacher, batch):
      c = batch["completion_mask"].shape[1]
      model = nnx.merge(gd, teacher)
      h = completion_hidden(model, batch["teacher_tokens"], batch["teacher_valid"], c)
      return model.logits(h).sum()

    self.teacher = jax.jit(teacher_forward)
    self.update = jax.jit(it.opd_step)

  def iteration(self):
    self.state, m = self.step(self.state, self.prompts)
    return float(self.jax.block_until_ready(m["train/loss"]))

  def phases(self):
    """Seconds of each phase, jitted separately (warm: run `phases` once before timing)."""
    jax, out = self.jax, {}
    key = jax.random.key(int(time.time() * 1e6) % (2 ** 31))
    t0 = time.perf_counter()
    samples, _ = jax.block_until_ready(self.rollout(self.state, self.prompts, key))
    out["rollouts"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch, _ = jax.block_until_ready(self.judge(self.prompts, samples))
    out["verification + P_acc + replacement"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(self.teacher(self.state.teacher, batch))
    out["teacher scoring"] = time.perf_counter() - t0
    state = jax.block_until_ready(jax.tree.map(lambda x: x.copy(), self.state))
    t0 = time.perf_counter()
    jax.block_until_ready(self.update(state, batch))
    out["update (student fwd+bwd, AdamW, EMA)"] = time.perf_counter() - t0 - out["teacher scoring"]
    return out, (samples, batch)


class Torch:
  """The released-code-style pipeline (module docstring), on the same weights and prompts."""

  def __init__(self, path, run, alpha):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    from caopd_jax import contexts  # pylint: disable=g-import-not-at-top
    self.torch, self.F = torch, torch.nn.functional
    torch.set_num_threads(os.cpu_count())
    transformers.utils.logging.set_verbosity_error()
    self.student = transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="sdpa").float()
    self.teacher = copy.deepcopy(self.student).eval()
    for p in self.teacher.parameters():
      p.requires_grad_(False)
    self.params = list(self.student.parameters())
    self.opt = torch.optim.AdamW(self.params, lr=3e-4, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=0.0, fused=True)
    self.run, self.alpha = run, alpha
    self.tok, self.task = run.tokenizer, run.task
    self.ctx = contexts.get("demo")
    self.k = run.iteration.num_samples
    self.records = None

  def set_records(self, records):
    self.records = records

  def _pad_left(self, seqs):
    torch, w = self.torch, max(len(s) for s in seqs)
    ids = torch.full((len(seqs), w), self.tok.pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), w), dtype=torch.long)
    for i, s in enumerate(seqs):
      ids[i, w - len(s):] = torch.tensor(s)
      att[i, w - len(s):] = 1
    return ids, att

  def rollouts(self):
    torch = self.torch
    prompts = [self.tok.encode(self.task.student_text(self.tok, r)) for r in self.records]
    ids, att = self._pad_left(prompts)
    with torch.no_grad():
      out = self.student.generate(input_ids=ids, attention_mask=att, do_sample=True,
                                  temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=24,
                                  num_return_sequences=self.k, eos_token_id=self.tok.eos_id,
                                  pad_token_id=self.tok.pad_id)
    return [row[ids.shape[1]:].tolist() for row in out]

  def verify_and_replace(self, completions):
    """Decode, verify (exact match), P_acc, text replacement + re-tokenisation; the batch."""
    from caopd_jax.opd.caopd import format_confidence  # pylint: disable=g-import-not-at-top
    from caopd_jax.opd.prompts import teacher_text  # pylint: disable=g-import-not-at-top
    tok, task, k = self.tok, self.task, self.k
    texts = []
    for c in completions:
      c = c[:c.index(tok.eos_id) + 1] if tok.eos_id in c else c
      texts.append(tok.decode([t for t in c if t != tok.pad_id]))
    rows = []
    for b, r in enumerate(self.records):
      group = texts[b * k:(b + 1) * k]
      correct = [s.startswith(task.target_text(r)) for s in group]
      p = format_confidence(sum(correct), k)
      ctx = tok.encode(teacher_text(tok, task, r, self.ctx, task.solution_text(r), p, True))
      prompt = tok.encode(task.student_text(tok, r))
      for s in group:
        cut = s.find(task.marker)
        answer = (s if cut < 0 else s[:cut]).rstrip(" \n")
        comp = tok.encode(answer + task.confidence_prefix + p) + [tok.eos_id]
        rows.append((prompt, ctx, comp))
    return rows

  def tensors(self, rows):
    """Left-padded (student ids, attention, teacher ids, attention, completion mask) of `rows`."""
    torch = self.torch
    c = max(len(comp) for _, _, comp in rows)
    mask = torch.zeros((len(rows), c))
    for i, (_, _, comp) in enumerate(rows):
      mask[i, :len(comp)] = 1
    pad = lambda comp: comp + [self.tok.pad_id] * (c - len(comp))
    s_ids, s_att = self._pad_left([p + pad(comp) for p, _, comp in rows])
    t_ids, t_att = self._pad_left([x + pad(comp) for _, x, comp in rows])
    s_att[:, -c:] *= mask.long()  # completion padding is not attended
    t_att[:, -c:] *= mask.long()
    return s_ids, s_att, t_ids, t_att, mask

  def loss(self, s_ids, s_att, t_ids, t_att, mask):
    """(per-sequence mean of KL(teacher || student) over completion tokens, teacher seconds)."""
    torch, F, c = self.torch, self.F, mask.shape[1]
    t0 = time.perf_counter()
    with torch.no_grad():
      pos = (t_att.cumsum(-1) - 1).clamp(min=0)
      logq = F.log_softmax(self.teacher(input_ids=t_ids, attention_mask=t_att,
                                        position_ids=pos).logits[:, -c - 1:-1].float(), -1)
    t_teacher = time.perf_counter() - t0
    pos = (s_att.cumsum(-1) - 1).clamp(min=0)
    logp = F.log_softmax(self.student(input_ids=s_ids, attention_mask=s_att,
                                      position_ids=pos).logits[:, -c - 1:-1].float(), -1)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    per_seq = (kl * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.mean(), t_teacher

  def update(self, loss):
    torch = self.torch
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, 1.0)
    self.opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(list(self.teacher.parameters()), self.params, self.alpha)

  def iteration(self):
    times = {}
    t0 = time.perf_counter()
    comps = self.rollouts()
    times["rollouts"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = self.verify_and_replace(comps)
    times["verification + P_acc + replacement"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss, t_teacher = self.loss(*self.tensors(rows))
    self.update(loss)
    times["teacher scoring"] = t_teacher
    times["update (student fwd+bwd, AdamW, EMA)"] = time.perf_counter() - t0 - t_teacher
    return float(loss.detach()), times


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", default="default,25m")
  ap.add_argument("--rounds", type=int, default=5)
  a = ap.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  print(f"machine: {os.cpu_count()} CPU cores; jax {jax.__version__} "
        f"({jax.devices()[0].platform}); torch {torch.__version__}")
  for size in a.sizes.split(","):
    with tempfile.TemporaryDirectory() as tmp:
      config, path = build(size, tmp)
      ours = Ours(config, os.path.join(tmp, "w"))
      ref = Torch(path, ours.run, config.teacher.ema_alpha)
      ref.set_records(_records(ours.run, config))
      n = sum(x.size for x in jax.tree.leaves(ours.state.params))
      print(f"\n== student {size}: {n / 1e6:.2f}M parameters; 4 prompts x K={ours.run.iteration.num_samples}"
            f", 24 new tokens; compile (ours, whole iteration) {ours.compile_s:.1f} s")
      # the first iteration's loss on the same rollouts: our sampled tokens through both
      _, (samples, batch) = ours.phases()
      ours_loss = float(jax.device_get(ours.update(jax.tree.map(lambda x: x.copy(), ours.state),
                                                   batch)[1]["train/loss"]))
      t = {k: ref.torch.from_numpy(np.array(v)) for k, v in jax.device_get(batch).items()}
      torch_loss, _ = ref.loss(t["student_tokens"], t["student_valid"].long(),
                               t["teacher_tokens"], t["teacher_valid"].long(),
                               t["completion_mask"].float())
      torch_loss = float(torch_loss.detach())
      print(f"first-iteration loss on the same rollouts and batch: ours {ours_loss:.7f}  PyTorch "
            f"{torch_loss:.7f}  |diff| {abs(ours_loss - torch_loss):.1e} (relative "
            f"{abs(ours_loss - torch_loss) / abs(torch_loss):.1e})")
      rows = ref.verify_and_replace(np.asarray(samples.tokens).tolist())
      same = sum(_row_tokens(t, i) == (p + comp, x + comp) for i, (p, x, comp) in enumerate(rows))
      print(f"the PyTorch side's text replacement + re-tokenisation rebuilt {same} of {len(rows)} "
            "rows token for token (a random model samples non-canonical tokenisations)")
      ours.iteration(), ref.iteration(), ours.phases()  # warm up every path
      cache0 = ours.step._cache_size()  # 1: the warm-up call compiled the iteration once
      e2e = {"ours": [], "torch": []}
      phases = {"ours": [], "torch": []}
      for r in range(a.rounds):
        for who in (("ours", "torch") if r % 2 == 0 else ("torch", "ours")):
          t0 = time.perf_counter()
          if who == "ours":
            ours.iteration()
          else:
            phases["torch"].append(ref.iteration()[1])
          e2e[who].append(time.perf_counter() - t0)
        phases["ours"].append(ours.phases()[0])
      assert cache0 == 1 and ours.step._cache_size() == cache0, "the iteration recompiled"
      med = {k: statistics.median(v) for k, v in e2e.items()}
      rng = lambda v: f"{statistics.median(v):.3f} [{min(v):.3f}-{max(v):.3f}]"
      print(f"{'phase (s)':<40} {'ours':>24} {'PyTorch':>24}")
      for ph in phases["torch"][0]:
        print(f"{ph:<40} {rng([p[ph] for p in phases['ours']]):>24} "
              f"{rng([p[ph] for p in phases['torch']]):>24}")
      print(f"{'one iteration, end to end':<40} {rng(e2e['ours']):>24} {rng(e2e['torch']):>24}")
      print(f"end to end: ours is {med['torch'] / med['ours']:.2f}x the PyTorch pipeline "
            f"(medians of {a.rounds} interleaved rounds); no recompilation "
            f"(jit cache {cache0} -> {ours.step._cache_size()})")


def _row_tokens(t, i):
  """(student, teacher) token lists of row i of our batch, padding dropped."""
  keep = lambda ids, valid: ids[i][valid[i].bool()].tolist()
  return (keep(t["student_tokens"], t["student_valid"]),
          keep(t["teacher_tokens"], t["teacher_valid"]))


def _records(run, config):
  """The records of step 0's prompts (the batch `Ours` runs), as the OPD job draws them."""
  from caopd_jax import data  # pylint: disable=g-import-not-at-top
  it = data.BatchIterator(run.records, config.prompts_per_step, seed=config.seed)
  return [run.records[i] for i in it.global_indices(0)]


if __name__ == "__main__":
  sys.exit(main())
