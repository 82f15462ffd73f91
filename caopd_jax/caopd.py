"""CaOPD target replacement on token ids, inside the compiled step.

CaOPD (Zhang et al. 2026, "The Illusion of Certainty", arXiv 2604.16830), step 3: with
P_acc = (#correct of K rollouts)/K formatted with two decimals,
  (a) student completion: cut from the first "Confidence:" marker to the end, append
      "\\nConfidence: {P_acc}" and EOS;
  (b) teacher demonstration: its confidence value becomes {P_acc};
  (c) teacher note before the final instruction: "... confidence for this question is {P_acc} ...".
Everything here is jittable (except the host section at the end, for real BPE tokenizers):
strings are pre-tokenised into tables indexed by k = K * P_acc, and variable-length pieces are
spliced with gathers. Teacher contexts are built from segments
whose padding may sit *inside* the sequence: the model derives positions from the validity
mask (cumsum) and never attends to invalid slots, so gaps are harmless.
"""

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def format_confidence(k: int, num_samples: int) -> str:
  """Two decimals as in the CaOPD code: K=8 -> 0.00, 0.12, 0.25, 0.38, 0.50, 0.62, 0.75, 0.88, 1.00."""
  return f"{k / num_samples:.2f}"


def string_table(tokenizer, strings, append_eos: bool = False):
  """Tokenises each string: (int32 [N, Lmax] right-padded with pad_id, int32 lengths [N])."""
  seqs = [tokenizer.encode(s) + ([tokenizer.eos_id] if append_eos else []) for s in strings]
  width = max(len(s) for s in seqs)
  table = np.full((len(seqs), width), tokenizer.pad_id, np.int32)
  for i, s in enumerate(seqs):
    table[i, :len(s)] = s
  return table, np.array([len(s) for s in seqs], np.int32)


def confidence_tables(tokenizer, num_samples: int, prefix: str = "\nConfidence: "):
  """(completion suffix table for (a), bare value table for (b)/(c)), indexed by k = 0..K."""
  values = [format_confidence(k, num_samples) for k in range(num_samples + 1)]
  return (string_table(tokenizer, [prefix + v for v in values], append_eos=True),
          string_table(tokenizer, values))


def p_acc_index(p_acc, num_samples: int):
  """k = round(K * P_acc) as int32 (P_acc is exactly k/K by construction)."""
  return jnp.round(p_acc * num_samples).astype(jnp.int32)


def find_marker(tokens, valid, marker, last: bool = False):
  """(found bool [B], start int32 [B]) of the first (or last) full match of `marker` in valid tokens."""
  marker = jnp.asarray(marker, jnp.int32)
  n, m = tokens.shape[1], marker.shape[0]
  idx = jnp.arange(n)[:, None] + jnp.arange(m)[None, :]  # [n, m]
  inside = idx < n
  window = jnp.take(tokens, jnp.minimum(idx, n - 1), axis=1)  # [B, n, m]
  window_valid = jnp.take(valid, jnp.minimum(idx, n - 1), axis=1) & inside
  match = jnp.all((window == marker) & window_valid, axis=-1)  # [B, n]
  found = jnp.any(match, axis=-1)
  if last:
    start = n - 1 - jnp.argmax(match[:, ::-1], axis=-1)
  else:
    start = jnp.argmax(match, axis=-1)
  return found, start.astype(jnp.int32)


def splice(tokens, cut, table, lengths, k, pad_id: int):
  """Rows tokens[b, :cut[b]] ++ table[k[b], :lengths[k[b]]], right-padded: ([B, N+L], valid)."""
  b, n = tokens.shape
  width = n + table.shape[1]
  j = jnp.arange(width)[None, :]
  ins = jnp.asarray(table)[k]  # [B, L]
  ins_len = jnp.asarray(lengths)[k][:, None]
  cut = cut[:, None]
  from_prefix = jnp.take_along_axis(tokens, jnp.clip(j, 0, n - 1).repeat(b, 0), axis=1)
  from_insert = jnp.take_along_axis(ins, jnp.clip(j - cut, 0, ins.shape[1] - 1), axis=1)
  out = jnp.where(j < cut, from_prefix, jnp.where(j < cut + ins_len, from_insert, pad_id))
  return out.astype(jnp.int32), j < cut + ins_len


def completion_cut(tokens, mask, marker, stop_ids=(), strip_ids=()):
  """int32 [B]: where each completion's answer ends: at its first marker (else at its end,
  before a final stop token), with trailing `strip_ids` (whitespace) removed."""
  found, start = find_marker(tokens, mask, marker)
  length = jnp.sum(mask, axis=-1).astype(jnp.int32)
  last_tok = jnp.take_along_axis(tokens, jnp.maximum(length - 1, 0)[:, None], axis=1)[:, 0]
  ends_with_stop = (length > 0) & jnp.isin(last_tok, jnp.asarray(stop_ids or (-1,), jnp.int32))
  cut = jnp.where(found, start, length - ends_with_stop.astype(jnp.int32))
  if strip_ids:
    pos = jnp.arange(tokens.shape[1])[None, :]
    keep = ~jnp.isin(tokens, jnp.asarray(strip_ids, jnp.int32)) & (pos < cut[:, None])
    cut = jnp.max(jnp.where(keep, pos + 1, 0), axis=-1).astype(jnp.int32)
  return cut


def replace_completion_confidence(tokens, mask, k, marker, suffix_table, suffix_lengths,
                                  stop_ids=(), strip_ids=(), pad_id: int = 0):
  """(a): the answer part (`completion_cut`) followed by suffix_table[k] ("\nConfidence: P" EOS)."""
  cut = completion_cut(tokens, mask, marker, stop_ids, strip_ids)
  return splice(tokens, cut, suffix_table, suffix_lengths, k, pad_id)


def fill_segments(segments):
  """Concatenates (ids [B, Li], valid [B, Li]) segments along time (gaps allowed)."""
  ids = jnp.concatenate([jnp.asarray(s[0], jnp.int32) for s in segments], axis=1)
  valid = jnp.concatenate([jnp.asarray(s[1], bool) for s in segments], axis=1)
  return ids, valid


def table_segment(table, lengths, k, enabled=True):
  """(ids, valid) of table[k] rows, all invalid where `enabled` is False."""
  ids = jnp.asarray(table)[k]
  enabled = jnp.broadcast_to(jnp.asarray(enabled, bool), ids.shape[:1])[:, None]
  valid = (jnp.arange(ids.shape[1])[None, :] < jnp.asarray(lengths)[k][:, None]) & enabled
  return ids, valid


# ============================================================================================
# Host-side replacement for real (BPE) tokenizers, on decoded-text offsets.
#
# With a byte-level BPE the marker "Confidence:" has no fixed token ids: the pre-tokenizer may
# merge it with what precedes it (" Confidence", ">Confidence", ...), and sampled token
# sequences need not be the canonical tokenisation at all ("Conf" "idence" ":"). So the cut is
# found on the host, where the rollouts are decoded for verification anyway: every token's
# bytes (as `decode(..., skip_special=True)` shows them) give each token's byte span; the last
# case-insensitive "confidence:" in the decoded bytes fixes the cut; trailing ASCII whitespace
# before it is dropped. The sampled tokens that end at or before the cut are kept as they were
# sampled; the part of the token straddling the cut that lies before it (e.g. the ">" of a
# ">Confidence" token) is re-tokenised on its own (the "fragment"); then the pre-tokenised
# "\nConfidence: {P_acc}" + EOS row of the suffix table follows.
# Differences from re-tokenising the whole string `text[:cut].rstrip() + "\nConfidence: P"` (the
# released code): (i) the kept prefix keeps the sampled ids, which need not be canonical; (ii)
# the fragment and the suffix are tokenised separately, so a merge across the junction (e.g. a
# Qwen-style ">\n" pre-token) is not formed; (iii) whitespace stripping is ASCII-only. The
# decoded text is the same in every case (tests/test_real_data.py).
# ============================================================================================


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


class HostSplice(NamedTuple):
  tokens: np.ndarray  # int32 [N, W]: answer part ++ suffix_table[k] (right-padded)
  valid: np.ndarray  # bool [N, W]
  answer_len: np.ndarray  # int32 [N]: tokens of the answer part (before "\nConfidence: ...")
  found: np.ndarray  # bool [N]: the completion had a marker
  fallback: np.ndarray  # bool [N]: the answer part was re-tokenised as a whole (see below)
  truncated: np.ndarray  # bool [N]: the answer part was cut to fit W


def host_replace_completion(table, encode, tokens, mask, k, suffix_table, suffix_lengths, *,
                            width: int, pad_id: int, marker: str = "Confidence:",
                            last: bool = True) -> HostSplice:
  """(a) on the host for any tokenizer: each completion's answer part (`find_cut` on its decoded
  bytes) followed by suffix_table[k] ("\\nConfidence: P" EOS); see the section comment.

  table: `token_bytes(tokenizer, V)`; encode: str -> ids (no special tokens); tokens/mask
  [N, C] numpy; k int [N]. If the re-tokenised fragment does not decode back to its bytes (a
  normalising tokenizer), the answer part is re-tokenised as a whole (`fallback`). If the answer
  part plus the suffix exceed `width`, the answer part is cut from its end (`truncated`), as the
  released code truncates the base text to fit the completion limit.
  """
  tokens, mask, k = np.asarray(tokens), np.asarray(mask, bool), np.asarray(k)
  n = tokens.shape[0]
  out = np.full((n, width), pad_id, np.int32)
  valid = np.zeros((n, width), bool)
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
    suffix = np.asarray(suffix_table)[k[i], :int(np.asarray(suffix_lengths)[k[i]])].tolist()
    if len(answer) + len(suffix) > width:
      truncated[i] = True
      answer = answer[:max(width - len(suffix), 0)]
    row = (answer + suffix)[:width]
    out[i, :len(row)] = row
    valid[i, :len(row)] = True
    answer_len[i] = len(answer)
  return HostSplice(out, valid, answer_len, found, fallback, truncated)
