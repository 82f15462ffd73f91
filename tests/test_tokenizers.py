"""Tokenizers: round trips, greedy pieces, the HF wrapper on a locally trained BPE."""

import numpy as np
import pytest

from caopd_jax import tasks
from configs import common
from caopd_jax.tokenizers import CharTokenizer, HFTokenizer, load_tokenizer, pad_left, pad_right


def test_char_round_trip_and_specials():
  tok = CharTokenizer()
  text = "Q: 37+85\nConfidence: 0.62"
  ids = tok.encode(text, add_bos=True)
  assert ids[0] == tok.bos_id and len(ids) == len(text) + 1
  assert tok.decode(ids) == text
  assert tok.decode(ids + [tok.eos_id], skip_special=False) == "<bos>" + text + "<eos>"
  with pytest.raises(ValueError, match="not in the CharTokenizer alphabet"):
    tok.encode("é")
  with pytest.raises(ValueError, match="outside"):
    tok.decode([tok.vocab_size])


def test_pieces_are_greedy_longest_first_and_round_trip(tmp_path):
  tok = CharTokenizer(pieces=("ab", "abc", "\nConfidence: "))
  ids = tok.encode("abcab\nConfidence: 1")
  assert [tok.decode([i]) for i in ids] == ["abc", "ab", "\nConfidence: ", "1"]
  tok.save(str(tmp_path))
  again = load_tokenizer(str(tmp_path))
  assert again.encode("abcab") == tok.encode("abcab") and again.vocab_size == tok.vocab_size
  t = tasks.get(common.arithmetic_task(pad_operands=False, answer_order="msb"))
  tok = t.new_tokenizer()
  r = {"question": "12+7", "answer": "19"}
  s = t.student_text(tok, r) + t.response_text(r, "0.50")
  assert tok.decode(tok.encode(s)) == s and len(tok.encode(s)) == 1 + 4 + 1 + 2 + 1 + 4


def _greedy_reference(tok, pieces, text):
  """The scan written out: at each position the longest piece that starts there, else one char."""
  ids, i = [], 0
  by_length = sorted(pieces, key=len, reverse=True)
  while i < len(text):
    piece = next((p for p in by_length if text.startswith(p, i)), text[i])
    ids.append(tok._ids[piece])  # pylint: disable=protected-access
    i += len(piece)
  return ids


def test_encode_matches_a_position_by_position_greedy_scan():
  pieces = ("ab", "abc", "bca", "c.*", "a\nb", "+-", "\n")  # overlapping and regex metacharacters
  tok = CharTokenizer(pieces=pieces)
  rng = np.random.default_rng(0)
  alphabet = list("abc.*+-\\n\n ")
  for _ in range(300):
    text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 30))))
    assert tok.encode(text) == _greedy_reference(tok, pieces, text), text
    assert tok.decode(tok.encode(text)) == text


def test_padding_helpers():
  ids, valid = pad_left([[5, 6, 7], [8]], 2, 0)
  np.testing.assert_array_equal(ids, [[6, 7], [0, 8]])
  np.testing.assert_array_equal(valid, [[True, True], [False, True]])
  ids, valid = pad_right([[5, 6, 7], [8]], 4, 0)
  np.testing.assert_array_equal(ids, [[5, 6, 7, 0], [8, 0, 0, 0]])


def bpe_tokenizer_dir(path, corpus=("Confidence: 0.75", "The answer is <answer>B</answer>")):
  """Saves a byte-level BPE trained on `corpus` (an HF tokenizer directory) at `path`."""
  tokenizers = pytest.importorskip("tokenizers")
  import transformers  # pylint: disable=import-outside-toplevel
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|im_end|>"],
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  bpe.train_from_iterator(list(corpus) * 20, trainer)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe, eos_token="<|im_end|>", unk_token="<unk>",
      chat_template="{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|im_end|>{% endfor %}"
                    "{% if add_generation_prompt %}<assistant>{% endif %}")
  fast.save_pretrained(str(path))
  return str(path)


def test_hf_tokenizer_wrapper(tmp_path):
  bpe_tokenizer_dir(tmp_path)
  tok = load_tokenizer(str(tmp_path))
  assert isinstance(tok, HFTokenizer) and tok.pad_id == tok.eos_id
  assert tok.decode(tok.encode("Confidence: 0.75")) == "Confidence: 0.75"
  text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
  assert text == "<user>hi<|im_end|><assistant>"
  assert tok.eos_id in tok.special_ids
  with pytest.raises(FileNotFoundError):
    HFTokenizer(str(tmp_path / "missing"))
