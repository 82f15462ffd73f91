"""CaOPD's target replacement as one transform of the OPD batch, on token ids, in the graph.

CaOPD (Zhang et al. 2026, "The Illusion of Certainty", arXiv 2604.16830), step 3: with
P_acc = (#correct of K rollouts)/K formatted with two decimals,
  (a) student completion: cut at the "Confidence:" marker (the task says first or last), append
      "\\nConfidence: {P_acc}" and EOS;
  (b) teacher context: its stated confidence becomes {P_acc};
  (c) teacher note before the final instruction: "... confidence for this question is {P_acc} ...".
`transform` applies all three to an OPD `Draft` (caopd_jax.opd.batch); nothing else in the
program knows about CaOPD. Strings are pre-tokenised into tables indexed by k = K * P_acc and
spliced with gathers. Segments may leave padding *inside* a sequence: the model derives positions
from the validity mask (cumsum) and never attends to invalid slots, so gaps are harmless.
No importance weights apply to the modified trajectories (the draft drops the sampler's
log-probs).
"""

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


def p_acc_index(correct, num_samples: int):
  """k = #correct of the K rollouts, int32 [B], from correct bool [B, K] (P_acc = k / K)."""
  return jnp.sum(correct.astype(jnp.int32), axis=-1)


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


def completion_cut(tokens, mask, marker, stop_ids=(), strip_ids=(), last: bool = False):
  """int32 [B]: where each completion's answer ends: at its first (or last) marker, else at its
  end before a final stop token, with trailing `strip_ids` (whitespace) removed."""
  found, start = find_marker(tokens, mask, marker, last)
  length = jnp.sum(mask, axis=-1).astype(jnp.int32)
  last_tok = jnp.take_along_axis(tokens, jnp.maximum(length - 1, 0)[:, None], axis=1)[:, 0]
  ends_with_stop = (length > 0) & jnp.isin(last_tok, jnp.asarray(stop_ids or (-1,), jnp.int32))
  cut = jnp.where(found, start, length - ends_with_stop.astype(jnp.int32))
  if strip_ids:
    pos = jnp.arange(tokens.shape[1])[None, :]
    keep = ~jnp.isin(tokens, jnp.asarray(strip_ids, jnp.int32)) & (pos < cut[:, None])
    cut = jnp.max(jnp.where(keep, pos + 1, 0), axis=-1).astype(jnp.int32)
  return cut


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


def table_segment(table, lengths, k):
  """(ids, valid) [B, L] of rows table[k]."""
  ids = jnp.asarray(table)[k]
  return ids, jnp.arange(ids.shape[1])[None, :] < jnp.asarray(lengths)[k][:, None]


def broadcast_rows(segment, rows: int):
  """A row-constant segment (ids, valid) [1, L] repeated to [rows, L]."""
  ids, valid = segment
  return (jnp.broadcast_to(jnp.asarray(ids, jnp.int32), (rows, ids.shape[1])),
          jnp.broadcast_to(jnp.asarray(valid, bool), (rows, ids.shape[1])))


def transform(draft, verdict, consts, num_samples: int, pad_id: int):
  """The three replacements (a), (b), (c) on an OPD `Draft`; returns the CaOPD draft."""
  k = p_acc_index(verdict.correct, num_samples)
  completion = splice(verdict.answer, verdict.answer_len, *consts.suffix,
                      jnp.repeat(k, num_samples), pad_id)  # (a)
  context = draft.context
  if context is not None:
    b = k.shape[0]
    value = table_segment(*consts.values, k)
    context = {}
    for name, seg in draft.context.items():
      if name == "tail":  # (c), before the final instruction
        context.update(note_pre=broadcast_rows(consts.note_pre, b), note_value=value,
                       note_post=broadcast_rows(consts.note_post, b))
      context[name] = value if name == "value" else seg  # (b)
  return draft._replace(completion=completion, context=context, behavior_logprobs=None)
