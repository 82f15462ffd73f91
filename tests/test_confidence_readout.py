"""`eval.confidence` "greedy" / "mean": the cut after the last confidence marker against brute
force (char and BPE tokenizers), the greedy continuation against step-by-step argmax of the
uncached model, the draws' first tokens against the model's next-token distribution (empirical
frequencies), the mean over draws by hand, and the sampled answer left as it was."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from caopd_jax import evaluation, tasks
from caopd_jax.data import arithmetic
from caopd_jax.jobs import ConfigError, validate
from caopd_jax.models import ModelConfig, Transformer
from caopd_jax.opd import prompts
from caopd_jax.sampling import SamplingConfig, valid_from_lengths
from caopd_jax.tokenizers import load_tokenizer
from configs import common

import test_tokenizers  # pylint: disable=g-bad-import-order

TASK = tasks.get(common.arithmetic_task())
CHAR = TASK.new_tokenizer()
TEXTS = ["12+34=64\nConfidence: 0.75", "no marker here", "confidence: 1\nConfidence: 0.5",
         "Confidence:", "x CONFIDENCE: 0.1 tail", "Confidence 0.3"]


def brute_force_cut(tok, ids, marker):
  """Smallest k whose decoded prefix ends past the last marker of the whole text (0: none)."""
  full = tok.decode(ids).lower()
  j = full.rfind(marker.lower())
  if j < 0:
    return 0
  for k in range(1, len(ids) + 1):
    if len(tok.decode(ids[:k])) >= j + len(marker):
      return k if tok.decode(ids[:k]).lower()[j:j + len(marker)] == marker.lower() else 0
  return 0


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_marker_prefix_matches_brute_force(kind, tmp_path):
  if kind == "char":
    tok = CHAR
  else:
    tok = load_tokenizer(test_tokenizers.bpe_tokenizer_dir(tmp_path, corpus=TEXTS))
  cuts = []
  for text in TEXTS:
    ids = tok.encode(text)
    k = evaluation.marker_prefix(tok, ids, TASK.marker)
    assert k == brute_force_cut(tok, ids, TASK.marker), text
    cuts.append(k)
    if k:  # the prefix ends with the marker, its last occurrence
      head = tok.decode(ids[:k]).lower()
      assert head.rstrip(" ").endswith("confidence:") and head.count("confidence:") == \
          text.lower().count("confidence:")
  assert [bool(k) for k in cuts] == [True, False, True, True, True, False]


def test_greedy_continuation_is_argmax_of_the_uncached_model():
  model = Transformer(ModelConfig.tiny("qwen3", vocab_size=CHAR.vocab_size), rngs=nnx.Rngs(5))
  graphdef, params = nnx.split(model)
  rng = np.random.RandomState(0)
  lens = [5, 2, 7]
  valid = np.asarray(valid_from_lengths(np.array(lens), 7))
  prompt = np.where(valid, rng.randint(3, CHAR.vocab_size, (3, 7)), CHAR.pad_id).astype(np.int32)
  marker = CHAR.encode("\nConfidence: ")
  responses = [list(rng.randint(3, 12, 4)) + marker + [5, 6],  # marker then a sampled value
               list(rng.randint(3, 12, 6)),                    # no marker: kept as it is
               marker + list(rng.randint(3, 12, 3))]
  cfg = SamplingConfig(max_new_tokens=12, stop_ids=(CHAR.eos_id,), pad_id=CHAR.pad_id)
  out = evaluation.reread_confidence(graphdef, params, CHAR, prompt, valid, responses,
                                     TASK.marker, cfg, num_tokens=5)
  assert out[1] == [responses[1]]
  out = [o[0] for o in out]
  forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  width = 7 + max(len(r) for r in responses) + 5
  for i in (0, 2):
    k = evaluation.marker_prefix(CHAR, responses[i], TASK.marker)
    assert out[i][:k] == responses[i][:k]  # the answer part is untouched
    seq = list(prompt[i][valid[i]]) + responses[i][:k]
    ref = []
    for _ in range(5):  # independent reference: full forward, argmax, append
      # right-padded to one width (one compile): causal, so position len(seq) - 1 is unaffected
      padded = np.full((1, width), CHAR.pad_id, np.int32)
      padded[0, :len(seq)] = seq
      logits = np.asarray(forward(params, jnp.asarray(padded)))[0, len(seq) - 1]
      t = int(np.argmax(logits))
      ref.append(t)
      seq.append(t)
      if t == CHAR.eos_id:
        break
    assert out[i][k:] == ref, i


def test_draws_follow_the_models_next_token_distribution():
  model = Transformer(ModelConfig.tiny("qwen3", vocab_size=CHAR.vocab_size), rngs=nnx.Rngs(2))
  graphdef, params = nnx.split(model)
  valid = np.asarray(valid_from_lengths(np.array([3, 5]), 5))
  prompt = np.where(valid, np.arange(10).reshape(2, 5) + 4, CHAR.pad_id).astype(np.int32)
  marker = CHAR.encode("\nConfidence: ")
  responses = [[7, 8] + marker + [9], [5] + marker]
  cfg = SamplingConfig(max_new_tokens=6, stop_ids=(CHAR.eos_id,), pad_id=CHAR.pad_id)
  draws = 4000
  out = evaluation.reread_confidence(graphdef, params, CHAR, prompt, valid, responses,
                                     TASK.marker, cfg, num_tokens=2, draws=draws,
                                     key=jax.random.key(4))
  for i in range(2):
    k = evaluation.marker_prefix(CHAR, responses[i], TASK.marker)
    assert len(out[i]) == draws and all(d[:k] == responses[i][:k] for d in out[i])
    seq = list(prompt[i][valid[i]]) + responses[i][:k]
    logits = np.asarray(model(jnp.asarray([seq], jnp.int32)))[0, -1].astype(np.float64)
    exact = np.exp(logits - logits.max())
    exact /= exact.sum()
    counts = np.bincount([d[k] for d in out[i]], minlength=len(exact))
    assert stats.chisquare(counts, exact * draws).pvalue > 1e-3, i


def test_mean_confidence_by_hand():
  draws = [CHAR.encode(t) for t in ("1+1=2\nConfidence: 0.50", "Confidence: 1.00",
                                    "Confidence: x", "Confidence: 0.75")]
  assert evaluation.mean_confidence(CHAR, draws) == pytest.approx((0.5 + 1.0 + 0.0 + 0.75) / 4)


def test_generate_and_score_keeps_answers_and_correctness():
  """Greedy readout changes only what follows the marker: same sampled responses otherwise."""
  model = Transformer(ModelConfig.tiny("qwen3", vocab_size=CHAR.vocab_size), rngs=nnx.Rngs(1))
  graphdef, params = nnx.split(model)
  records = arithmetic.generate("add", max_digits=2, num_train=50, num_test=6, num_ood=4)["test"]
  widths = prompts.widths(CHAR, TASK, records)
  cfg = SamplingConfig(max_new_tokens=10, stop_ids=(CHAR.eos_id,), pad_id=CHAR.pad_id)
  runs = {c: evaluation.generate_and_score(graphdef, params, CHAR, TASK, records, widths=widths,
                                           sampling=cfg, batch_size=6, seed=3, confidence=c)
          for c in ("sampled", "greedy", "mean")}
  for c in ("greedy", "mean"):
    np.testing.assert_array_equal(runs["sampled"]["correct"], runs[c]["correct"])
    for a, b in zip(runs["sampled"]["response"], runs[c]["response"]):
      j = a.lower().rfind("confidence:")
      assert (a == b) if j < 0 or c == "mean" else a[:j + 11] == b[:j + 11]
  with pytest.raises(ValueError, match="must be one of"):
    evaluation.generate_and_score(graphdef, params, CHAR, TASK, records, widths=widths,
                                  sampling=cfg, batch_size=6, confidence="mode")


def test_bad_readout_is_a_config_error():
  c = common.opd()
  c.eval.confidence = "mode"
  with pytest.raises(ConfigError, match="eval.confidence=.mode."):
    validate(c)
