"""experiments/confidence_digits.py: the probe's texts, and its next-token probabilities against
HF transformers' (torch) softmax at each text's last token."""

import numpy as np
import pytest

from caopd_jax import tasks
from caopd_jax.models.hf_io import load_hf
from caopd_jax.tokenizers import load_tokenizer
from configs import common
from experiments import confidence_digits

import fast_xla  # pylint: disable=g-bad-import-order,unused-import
from hf_fixtures import hf_logits  # pylint: disable=g-bad-import-order

TASK = tasks.get(common.arithmetic_task())
RECORDS = [{"id": 0, "question": "12+7", "answer": "19"},
           {"id": 1, "question": "45+68", "answer": "113"}]


def test_prefixes_end_at_the_confidence_the_probe_reads():
  tok = TASK.new_tokenizer()
  for r, s, t in zip(RECORDS, confidence_digits.prefixes(TASK, tok, RECORDS, "student"),
                     confidence_digits.prefixes(TASK, tok, RECORDS, "teacher", "0.75", "0.")):
    answer = TASK.solution_text(r)
    assert s == TASK.student_text(tok, r) + answer + "\nConfidence: "
    assert t.endswith(answer + "\nConfidence: 0.") and not t.startswith(TASK.student_text(tok, r))
    assert answer + "\nConfidence: 0.75\n" in t  # the demonstration, stating --stated
  with pytest.raises(ValueError, match="Unknown format 'chat'"):
    confidence_digits.prefixes(TASK, tok, RECORDS, "chat")


def test_next_token_probs_match_transformers(arithmetic_models):
  import transformers  # pylint: disable=import-outside-toplevel
  _, student, _ = arithmetic_models
  tok = load_tokenizer(student)
  texts = [*confidence_digits.prefixes(TASK, tok, RECORDS, "teacher"),
           *confidence_digits.prefixes(TASK, tok, RECORDS, "student", after="0.")]
  got = confidence_digits.next_token_probs(load_hf(student), tok, texts, batch_size=3)
  hf = transformers.AutoModelForCausalLM.from_pretrained(student).float().eval()
  assert len({len(tok.encode(t)) for t in texts}) > 2  # padded batches
  for text, p in zip(texts, got):
    logits = hf_logits(hf, [tok.encode(text)])[0, -1].astype(np.float64)
    ref = np.exp(logits - logits.max())
    np.testing.assert_allclose(p, ref / ref.sum(), atol=2e-5)
  rows = confidence_digits.probe(load_hf(student), tok, TASK, RECORDS)
  assert [r["format"] for r in rows] == ["student", "teacher"]
  d1 = tok.encode("1")[0]
  assert rows[1]["p1"] == pytest.approx(got[:2, d1].mean(), abs=1e-6)
