"""Peak temporary memory of value_and_grad of an OPD loss: unchunked logits vs `chunked_objective`.

Compiles (does not run) jax.value_and_grad w.r.t. (student_h, student_kernel) of
  unchunked: compute(name, h_s @ W_s, h_t @ W_t, ...)   (two [B, T, V] float32 logits live)
  chunked:   chunked_objective(name, h_s, W_s, h_t, W_t, ..., chunk_size=C)
and prints XLA's `memory_analysis().temp_size_in_bytes` for each, and the ratio.

  python -m benchmarks.chunked_loss_memory [--vocab 32768 --seq 1024 --batch 2 --dim 256]
"""
import argparse

import jax
import jax.numpy as jnp

from caopd_jax.objectives import chunked_objective, compute
from caopd_jax.objectives.chunked import project


def temp_bytes(fn, *args):
  compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--vocab", type=int, default=32768)
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--dim", type=int, default=256)
  p.add_argument("--chunks", type=int, nargs="+", default=[64, 128, 256])
  p.add_argument("--objectives", nargs="+", default=["full_reverse", "vopd", "topk_reverse"])
  a = p.parse_args()
  b, t, d, v = a.batch, a.seq, a.dim, a.vocab
  sds = jax.ShapeDtypeStruct
  args = (sds((b, t, d), jnp.float32), sds((d, v), jnp.float32), sds((b, t, d), jnp.float32),
          sds((d, v), jnp.float32), sds((b, t), jnp.int32), sds((b, t), jnp.bool_))
  logits_mib = b * t * v * 4 / 2**20
  print(f"{jax.devices()[0].platform}: B={b} T={t} D={d} V={v}; one [B,T,V] f32 = "
        f"{logits_mib:.0f} MiB")
  print(f"{'objective':<14} {'chunk':>6} {'temp MiB':>10} {'vs unchunked':>13}")
  for name in a.objectives:
    hp = {"k": 32} if name == "topk_reverse" else {}

    def unchunked(sh, sk, th, tk, tok, mask, name=name, hp=hp):
      return compute(name, project(sh, sk), project(th, tk), tok, mask, **hp)

    base = temp_bytes(unchunked, *args)
    print(f"{name:<14} {'-':>6} {base / 2**20:>10.1f} {1.0:>12.1f}x")
    for c in a.chunks:
      def chunked(sh, sk, th, tk, tok, mask, name=name, hp=hp, c=c):
        return chunked_objective(name, sh, sk, th, tk, tok, mask, chunk_size=c, **hp)
      mem = temp_bytes(chunked, *args)
      print(f"{name:<14} {c:>6} {mem / 2**20:>10.1f} {base / mem:>12.1f}x")


if __name__ == "__main__":
  main()
