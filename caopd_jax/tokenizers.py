"""Tokenizers behind one small interface: a character-level one for embedded toy tasks and a
wrapper around a local HF tokenizer (`AutoTokenizer`, no hub access).

Interface: `vocab_size, pad_id, bos_id, eos_id, special_ids, stop_ids, encode(text), decode(ids),
apply_chat_template(messages), save(path)`; `pad_left` turns token lists into a left-padded
int32 batch with a validity mask (prompts are left-truncated, as in the CaOPD code).
"""

import json
import os
import re
import string

import numpy as np

CHAR_SPECIALS = ("<pad>", "<bos>", "<eos>")
DEFAULT_ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")


class CharTokenizer:
  """One id per character of `alphabet` after <pad>, <bos>, <eos>, then one id per `piece`.

  Pieces are multi-character strings (a toy task's fixed template phrases) matched greedily,
  longest first, before single characters; they keep toy sequences short. decode(encode(s)) == s.
  """

  def __init__(self, alphabet: str = DEFAULT_ALPHABET, pieces=()):
    if len(set(alphabet)) != len(alphabet):
      raise ValueError("CharTokenizer alphabet has repeated characters.")
    pieces = tuple(dict.fromkeys(p for p in pieces if len(p) > 1))
    self.alphabet, self.pieces = alphabet, pieces
    self._strings = list(CHAR_SPECIALS) + list(alphabet) + list(pieces)
    self._ids = {c: i for i, c in enumerate(self._strings) if i >= len(CHAR_SPECIALS)}
    # pieces longest first, then any one character: re tries alternatives in order, so findall
    # is the greedy longest-piece-first scan
    by_length = sorted(pieces, key=len, reverse=True)
    self._scan = re.compile("|".join([re.escape(p) for p in by_length] + ["."]), re.DOTALL)
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    self.vocab_size = len(self._strings)
    self.special_ids = (self.pad_id, self.bos_id, self.eos_id)
    self.stop_ids = (self.eos_id,)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = [self.bos_id] if add_bos else []
    try:
      ids.extend([self._ids[piece] for piece in self._scan.findall(text)])
    except KeyError as e:
      raise ValueError(f"Character {e.args[0]!r} is not in the CharTokenizer alphabet.") from None
    return ids

  def decode(self, ids, skip_special: bool = True) -> str:
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"Token id {i} is outside the CharTokenizer vocabulary ({self.vocab_size}).")
      if i >= len(CHAR_SPECIALS) or not skip_special:
        out.append(self._strings[i])
    return "".join(out)

  def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
    raise ValueError("CharTokenizer has no chat template; format prompts as plain text.")

  def save(self, path: str):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "char_tokenizer.json"), "w") as f:
      json.dump({"alphabet": self.alphabet, "pieces": list(self.pieces)}, f)

  @classmethod
  def load(cls, path: str) -> "CharTokenizer":
    with open(os.path.join(path, "char_tokenizer.json")) as f:
      spec = json.load(f)
    return cls(spec["alphabet"], spec.get("pieces", ()))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model",
                   "spiece.model")


class HFTokenizer:
  """A local HF tokenizer directory behind the same interface."""

  def __init__(self, path: str):
    import transformers  # pylint: disable=g-import-not-at-top
    if not os.path.isdir(path):
      raise FileNotFoundError(f"Tokenizer directory {path!r} does not exist.")
    if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
      raise FileNotFoundError(
          f"{path!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}): set "
          "config.tokenizer to the directory of the model's tokenizer.")
    self.hf = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    self.eos_id = self.hf.eos_token_id
    if self.eos_id is None:
      raise ValueError(f"Tokenizer at {path!r} defines no eos token.")
    self.pad_id = self.hf.pad_token_id if self.hf.pad_token_id is not None else self.eos_id
    self.bos_id = self.hf.bos_token_id
    self.vocab_size = len(self.hf)
    self.special_ids = tuple(sorted(set(self.hf.all_special_ids)))
    vocab = self.hf.get_vocab()  # EOS and the end-of-turn tokens the vocabulary has
    self.stop_ids = tuple(sorted({self.eos_id} | {vocab[s] for s in END_OF_TURN if s in vocab}))

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = self.hf.encode(text, add_special_tokens=False)
    return ([self.bos_id] if add_bos and self.bos_id is not None else []) + ids

  def decode(self, ids, skip_special: bool = True) -> str:
    return self.hf.decode(np.asarray(ids).reshape(-1).tolist(), skip_special_tokens=skip_special)

  def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
    if not getattr(self.hf, "chat_template", None):
      raise ValueError("This HF tokenizer has no chat template.")
    return self.hf.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=add_generation_prompt)

  def save(self, path: str):
    self.hf.save_pretrained(path)


def load_tokenizer(path_or_name: str):
  """`"char"` for the default CharTokenizer, a dir with char_tokenizer.json, or a HF tokenizer dir."""
  if path_or_name == "char":
    return CharTokenizer()
  if os.path.exists(os.path.join(path_or_name, "char_tokenizer.json")):
    return CharTokenizer.load(path_or_name)
  return HFTokenizer(path_or_name)


def check_vocabulary(tokenizer, vocab_size: int, where: str):
  """The tokenizer's ids must index the model's embedding rows (a padded table may be larger)."""
  if tokenizer.vocab_size > vocab_size:
    raise ValueError(f"The tokenizer has {tokenizer.vocab_size} tokens but the model at {where} "
                     f"has only {vocab_size} embedding rows: they do not belong together. Set "
                     "config.tokenizer to the model's own tokenizer directory.")


def pad_left(seqs, length: int, pad_id: int):
  """Left-pads (and left-truncates) token lists to `length`: (int32 [B,L], bool valid [B,L])."""
  ids = np.full((len(seqs), length), pad_id, np.int32)
  valid = np.zeros((len(seqs), length), bool)
  for i, s in enumerate(seqs):
    s = list(s)[-length:] if length else []
    if s:
      ids[i, length - len(s):] = s
      valid[i, length - len(s):] = True
  return ids, valid


def pad_right(seqs, length: int, pad_id: int):
  """Right-pads (and right-truncates) token lists: (int32 [B,L], bool valid [B,L])."""
  ids = np.full((len(seqs), length), pad_id, np.int32)
  valid = np.zeros((len(seqs), length), bool)
  for i, s in enumerate(seqs):
    s = list(s)[:length]
    ids[i, :len(s)] = s
    valid[i, :len(s)] = True
  return ids, valid
