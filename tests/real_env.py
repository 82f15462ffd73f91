"""The real-data test environment: the public eval rows (science MCQ, tool use), a locally trained
byte-level BPE with a Qwen-style chat template, tiny random HF Qwen3 checkpoints (no hub access).
Built once per session by the `real_env` fixture (conftest.py)."""

from caopd_jax import data
from caopd_jax.tasks.chat import CONFIDENCE_LINE
from caopd_jax.tokenizers import load_tokenizer

from shared_eval import EVAL_DIR  # pylint: disable=g-bad-import-order

QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def records(tfds_dir, task):
  return list(data.get_source(task, "eval", tfds_dir, manual_dir=EVAL_DIR))


def train_tokenizer(texts, path, vocab_size, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                    eos="<|im_end|>"):
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(QWEN_PATTERN), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  bpe.decoder = tokenizers.decoders.ByteLevel()
  bpe.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos,
                                              pad_token="<|endoftext|>")
  fast.chat_template = CHAT_TEMPLATE
  fast.save_pretrained(path)
  return path


def corpus(sci, tool):
  texts = []
  for i, r in enumerate(sci):
    texts += [m["content"] for m in r["messages"]]
    texts.append(f"<reasoning>\nThe product needs it.\n</reasoning>\n<answer>\n{r['answer']}\n"
                 f"</answer>{'' if i % 2 else chr(10)}Confidence: 0.{i % 10}")
  for r in tool:
    texts.append(r["prompt"])
    g = r["golden_answer"][0]
    texts.append(f"Thought: I should call it.\nAction: {g['Action']}\nAction Input: "
                 f"{g['Action_Input']}\nConfidence: 0.88")
  return texts + [CONFIDENCE_LINE, "This is an example for a response to the question"]


def save_qwen3(path, vocab_size, seed, hidden=32, layers=1, tokenizer_dir=None):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  cfg = transformers.AutoConfig.for_model(
      "qwen3", vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
      max_position_embeddings=4096, tie_word_embeddings=False)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
  model.save_pretrained(path)
  if tokenizer_dir:
    transformers.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
  return path


def build(root):
  """{root, tfds, sci, tool, tok_dir, student, teacher, bad_teacher} under `root`."""
  tfds_dir = str(root / "tfds")
  sci, tool = records(tfds_dir, "science"), records(tfds_dir, "tooluse")
  texts = corpus(sci, tool)
  tok_dir = train_tokenizer(texts, str(root / "tok"), 1024)
  n = len(load_tokenizer(tok_dir).hf)
  e = dict(root=root, tfds=tfds_dir, sci=sci, tool=tool, tok_dir=tok_dir)
  e["student"] = save_qwen3(str(root / "student"), n, 0, tokenizer_dir=tok_dir)
  e["teacher"] = save_qwen3(str(root / "teacher"), n, 1, hidden=48, layers=2, tokenizer_dir=tok_dir)
  bad_tok = train_tokenizer(texts[::2], str(root / "bad_tok"), 900)
  e["bad_teacher"] = save_qwen3(str(root / "bad_teacher"), n, 2, tokenizer_dir=bad_tok)
  return e
