"""How rollouts are judged, and where each one's answer ends (the CaOPD cut), as a `Verdict`.

  verify = make(task, tokenizer, records, num_samples=K, width=max_new_tokens)
  verdict = verify(prompts, samples)      # jittable; inside the iteration's one graph

task.verification == "tokens" (in the graph): correct iff the completion starts with the target
tokens (`exact_match_tokens`); the answer ends at the first/last marker token sequence
(`caopd.completion_cut`).

task.verification == "text" (on the host, through `jax.pure_callback`): every rollout is decoded
and judged by `task.is_correct(text, task.gold(record))`. With a byte-level BPE the marker
"Confidence:" has no fixed token ids (" Confidence", ">Confidence", "Conf" "idence" ":" ...), so
the cut is found on the decoded bytes: each token's bytes (`token_bytes`) give its span; the
first/last case-insensitive marker fixes the cut; trailing ASCII whitespace is dropped. Tokens
that end at or before the cut are kept as sampled; the part of the token straddling the cut
that lies before it (e.g. the ">" of ">Confidence") is re-tokenised on its own. Differences from
re-tokenising `text[:cut].rstrip()` as the released code does: the kept prefix keeps the sampled
ids, the fragment and the suffix are tokenised separately, stripping is ASCII-only; the decoded
text is the same (tests/test_real_data.py).
"""

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from caopd_jax.opd.caopd import completion_cut


class Verdict(NamedTuple):
  correct: jax.Array  # bool [B, K]
  answer: jax.Array  # int32 [N, W]: each rollout's answer part is its first answer_len tokens
  answer_len: jax.Array  # int32 [N]
  metrics: dict  # float32 scalars (host path: marker_found, edit_fallback, edit_truncated)


def exact_match_tokens(completion_tokens, mask, target):
  """bool [N]: the completion starts with the target tokens (int32 [N, L], -1 padded)."""
  length = min(completion_tokens.shape[1], target.shape[1])
  if target.shape[1] > length:  # answers longer than the completion window can never match
    overflow = jnp.any(target[:, length:] >= 0, axis=-1)
  else:
    overflow = jnp.zeros(target.shape[:1], bool)
  t, c, m = target[:, :length], completion_tokens[:, :length], mask[:, :length]
  ok = jnp.where(t >= 0, (c == t) & m, True)
  return jnp.all(ok, axis=-1) & ~overflow & jnp.any(t >= 0, axis=-1)


def make(task, tokenizer, records, *, num_samples: int, width: int, vocab_size=None,
         slack: int = 8, judge=None):
  """`verify(prompts, samples) -> Verdict` for `task`; `records` are the ones prompts may hold
  (host path: looked up by their `id`); width: the completion width (max_new_tokens); judge:
  `(text, gold) -> bool` on the host (default `task.is_correct`; evaluation: `eval_correct`)."""
  k = num_samples
  last = task.cut == "last"
  if task.verification == "tokens":
    strip, marker = tuple(tokenizer.encode(" \n")), tuple(tokenizer.encode(task.confidence_prefix))

    def verify_tokens(prompts, samples):
      target = jnp.repeat(prompts["target"], k, axis=0)
      correct = exact_match_tokens(samples.tokens, samples.mask, target).reshape(-1, k)
      cut = completion_cut(samples.tokens, samples.mask, marker, tokenizer.stop_ids,
                           strip, last)
      return Verdict(correct, samples.tokens, cut, {})

    return verify_tokens

  golds = {}
  for r in records:
    if int(r["id"]) in golds:
      raise ValueError(f"Task {task.name!r}: record id {r['id']} appears twice; host "
                       "verification looks records up by id.")
    golds[int(r["id"])] = task.gold(r)
  table = token_bytes(tokenizer, vocab_size)
  answer_width = width + slack
  judge = judge or task.is_correct

  def host(rows, tokens, mask):
    rows, tokens, mask = np.asarray(rows), np.asarray(tokens), np.asarray(mask, bool)
    texts = [tokenizer.decode(t[m]) for t, m in zip(tokens, mask)]
    correct = np.array([judge(s, golds[int(rows[i // k])]) for i, s in enumerate(texts)],
                       bool).reshape(-1, k)
    return (correct, *host_answer(table, tokenizer.encode, tokens, mask, width=answer_width,
                                  marker=task.marker, last=last))

  def verify_text(prompts, samples):
    n = samples.tokens.shape[0]
    shapes = (jax.ShapeDtypeStruct((n // k, k), jnp.bool_),
              jax.ShapeDtypeStruct((n, answer_width), jnp.int32),
              jax.ShapeDtypeStruct((n,), jnp.int32),
              *(jax.ShapeDtypeStruct((n,), jnp.bool_) for _ in range(3)))
    correct, answer, length, found, fallback, truncated = jax.pure_callback(
        host, shapes, prompts["row"], samples.tokens, samples.mask)
    frac = lambda x: jnp.mean(x.astype(jnp.float32))
    return Verdict(correct, answer, length, {
        "rollout/marker_found": frac(found), "rollout/edit_fallback": frac(fallback),
        "rollout/edit_truncated": frac(truncated)})

  return verify_text


# ---- the host cut ------------------------------------------------------------------------------
def _bytes_to_unicode():
  """GPT-2's byte <-> printable-unicode table used by byte-level BPE vocabularies."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, (chr(c) for c in cs)))


def _decoder_types(hf):
  """Names of the backend decoder steps of a fast HF tokenizer ({'ByteLevel'}, ...)."""
  import json  # pylint: disable=g-import-not-at-top
  try:
    spec = json.loads(hf.backend_tokenizer.to_str()).get("decoder") or {}
  except AttributeError:  # a slow tokenizer
    return set()
  steps = spec.get("decoders", [spec]) if spec.get("type") == "Sequence" else [spec]
  return {s.get("type") for s in steps if isinstance(s, dict)}


def token_bytes(tokenizer, size: int | None = None) -> list[bytes]:
  """Per token id, the UTF-8 bytes it contributes to `tokenizer.decode(ids)` (special tokens
  contribute nothing, as with skip_special). `size` (e.g. the model's padded vocabulary) extends
  the table with empty entries for ids the tokenizer does not know.

  Byte-level BPE (GPT-2, Llama 3, Qwen) and SentencePiece-style (Metaspace + byte fallback)
  vocabularies are read exactly; any other tokenizer falls back to decoding ids one by one."""
  size = max(size or 0, tokenizer.vocab_size)
  table = [b""] * size
  hf = getattr(tokenizer, "hf", None)
  if hf is None:  # CharTokenizer and other pure-Python tokenizers
    special = set(tokenizer.special_ids)
    for i in range(tokenizer.vocab_size):
      table[i] = b"" if i in special else tokenizer.decode([i]).encode("utf-8")
    return table
  special = set(hf.all_special_ids)
  added = {i: t for i, t in hf.added_tokens_decoder.items()}
  kinds = _decoder_types(hf)
  pieces = hf.convert_ids_to_tokens(list(range(len(hf))))
  if "ByteLevel" in kinds:
    inverse = {c: b for b, c in _bytes_to_unicode().items()}
  for i, piece in enumerate(pieces):
    if i in special or piece is None:
      continue
    if i in added:  # added tokens are stored verbatim (e.g. Qwen3's "<think>")
      table[i] = added[i].content.encode("utf-8")
    elif "ByteLevel" in kinds and all(c in inverse for c in piece):
      table[i] = bytes(inverse[c] for c in piece)
    elif "ByteFallback" in kinds and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
      table[i] = bytes([int(piece[3:5], 16)])
    elif "Metaspace" in kinds or "Replace" in kinds:
      table[i] = piece.replace("\u2581", " ").encode("utf-8")
    else:
      table[i] = hf.decode([i]).encode("utf-8")
  return table


def find_cut(data: bytes, marker: str = "Confidence:", last: bool = True) -> tuple[bool, int]:
  """(found, cut): the byte offset where the answer part of `data` ends: the start of the last
  (or first) case-insensitive `marker`, else the end; trailing ASCII whitespace removed."""
  pos = (data.lower().rfind if last else data.lower().find)(marker.lower().encode("utf-8"))
  cut = pos if pos >= 0 else len(data)
  return pos >= 0, len(data[:cut].rstrip())


def host_answer(table, encode, tokens, mask, *, width: int, marker: str = "Confidence:",
                last: bool = True):
  """(answer int32 [N, width], answer_len [N], found, fallback, truncated bool [N]): each
  completion's tokens up to the cut (see the module docstring) for any tokenizer.

  table: `token_bytes(tokenizer, V)`; encode: str -> ids; tokens/mask [N, C] numpy. If the
  re-tokenised fragment does not decode back to its bytes (a normalising tokenizer) the answer
  part is re-tokenised as a whole (`fallback`); one longer than `width` is cut (`truncated`).
  """
  n = tokens.shape[0]
  out = np.zeros((n, width), np.int32)
  answer_len = np.zeros((n,), np.int32)
  found, fallback, truncated = (np.zeros((n,), bool) for _ in range(3))
  for i in range(n):
    ids = tokens[i][mask[i]].tolist()
    spans = [table[t] if 0 <= t < len(table) else b"" for t in ids]
    data = b"".join(spans)
    found[i], cut = find_cut(data, marker, last)
    ends = np.cumsum([len(s) for s in spans]) if spans else np.zeros((0,), int)
    j = int(np.searchsorted(ends, cut, side="right"))  # tokens that end at or before the cut
    while j and not spans[j - 1]:  # zero-width tokens (EOS, specials) right at the cut
      j -= 1
    start = int(ends[j - 1]) if j else 0
    while j and start < cut and (data[start] & 0xC0) == 0x80:  # never split a UTF-8 character
      j -= 1
      start = int(ends[j - 1]) if j else 0
    fragment = data[start:cut]
    frag_ids = list(encode(fragment.decode("utf-8", errors="replace"))) if fragment else []
    answer = ids[:j] + frag_ids
    if b"".join(table[t] for t in frag_ids) != fragment:
      fallback[i] = True
      answer = list(encode(data[:cut].decode("utf-8", errors="replace")))
    truncated[i] = len(answer) > width
    answer = answer[:width]
    out[i, :len(answer)] = answer
    answer_len[i] = len(answer)
  return out, answer_len, found, fallback, truncated
