"""SPEC "Log-probs": Policy never materialises float32 logits for the whole batch, and the peak
memory of its passes grows with the chunk, not the batch. Deterministic: bench/logprob_memory.py's
LiveBytes dispatch mode counts the bytes of every tensor created (no timing, no RSS). The last test
runs the same checks on full-logits computations and asserts that they fail there."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import lad  # noqa: E402
from policy import Policy  # noqa: E402

_spec = importlib.util.spec_from_file_location("logprob_memory", ROOT / "bench" / "logprob_memory.py")
mem = importlib.util.module_from_spec(_spec)
sys.modules["logprob_memory"] = mem                    # its dataclass looks itself up there
_spec.loader.exec_module(mem)

# logits dominate: a (CHUNK, V) float32 block is 2 MB, the trunk's activations for 16 x 36 tokens ~1 MB
V, H, PROMPT, T, CHUNK = 16384, 32, 4, 32, 32
SMALL, BIG = 4, 16                                      # BIG = 4 x SMALL responses


def full_logits_bytes(b):
    return b * T * V * 4


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return mem.make_model(V, H, 1)


def measure(lm, chunk, b, grad):
    policy = Policy(lm, chunk, 1.0)
    lm.zero_grad(set_to_none=True)
    mem.prepare_grads(policy, PROMPT, V)                # parameter grads exist before the measured pass
    return mem.measure(policy, mem.make_inputs(b, PROMPT, T, V), grad, V)


def check(lm, chunk):
    """The two SPEC assertions for Policy(lm, chunk), in both passes; raises AssertionError."""
    for grad in (False, True):
        small, big = measure(lm, CHUNK if chunk is None else chunk, SMALL, grad), \
            measure(lm, CHUNK if chunk is None else chunk, BIG, grad)
        assert 0 < big.vocab_rows <= CHUNK, f"grad={grad}: a ({big.vocab_rows}, V) float32 tensor was created"
        growth = big.peak - small.peak
        allowed = 0.1 * (full_logits_bytes(BIG) - full_logits_bytes(SMALL))
        assert growth < allowed, f"grad={grad}: peak grew {growth / 2**20:.1f} MB for 4x the batch"


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad+backward"])
def test_no_logit_tensor_larger_than_a_chunk(lm, grad):
    for b in (SMALL, BIG):
        lb = measure(lm, CHUNK, b, grad)
        # > 0: the instrument does see the head's logits; <= CHUNK: never more than a chunk of them
        assert 0 < lb.vocab_rows <= CHUNK
        # at most about three chunk-sized float32 temporaries at once (Policy._head: 2 in the forward,
        # ~2.9 measured with backward; a head that also kept the logits and p alive holds ~3.8)
        assert lb.vocab_peak <= 3.5 * CHUNK * V * 4


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad+backward"])
def test_peak_grows_with_the_chunk_not_the_batch(lm, grad):
    small, big = measure(lm, CHUNK, SMALL, grad), measure(lm, CHUNK, BIG, grad)
    full_growth = full_logits_bytes(BIG) - full_logits_bytes(SMALL)        # 24 MB
    assert big.peak - small.peak < 0.1 * full_growth
    assert big.peak < 0.5 * full_logits_bytes(BIG)
    wide = measure(lm, 4 * CHUNK, BIG, grad)                              # 4x the chunk, same batch
    # grows with the chunk: more than one chunk-sized float32 tensor's worth of growth (4x - 1x = 3
    # chunks each; Policy holds two at its peak, so about 6 chunks here)
    assert wide.peak - big.peak > 4 * CHUNK * V * 4


def test_the_checks_fail_on_full_logits(lm):
    # Policy with one chunk covering the whole batch computes the (B*T, V) logits at once
    with pytest.raises(AssertionError):
        check(lm, 10 ** 9)
    # the naive computation: HF logits for every position, log-softmax, gather, backward
    ids, attn, pos, tgt, valid = mem.make_inputs(BIG, PROMPT, T, V)
    lm.zero_grad(set_to_none=True)
    mem.prepare_grads(Policy(lm, CHUNK, 1.0), PROMPT, V)
    with mem.LiveBytes(V) as lb:
        logits = lm(input_ids=ids, attention_mask=attn).logits.float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]
        logp.sum().backward()
    assert lb.vocab_rows >= BIG * T > CHUNK
    assert lb.peak >= full_logits_bytes(BIG)
    # and the chunked Policy itself passes the same checks
    check(lm, None)
