"""bench/logprob_memory.py -- peak memory of policy.Policy's log-prob passes over a grid of micro-batches and chunks.

SPEC "Numbers to meet": never materialise float32 logits for the whole batch at once; peak memory of the
log-prob pass grows with the chunk, not the batch. policy.Policy computes the LM head and log-softmax
--logprob-chunk response tokens at a time (checkpointed per chunk when grad is on); this measures it.

Two passes, as lad.main runs them: the old-log-prob pass (forward, no grad) and the update (forward with grad
+ backward of sum(logp)), on policy.make_batch's tensors. The model is a random-init Qwen2 with Qwen2's
vocabulary (151936) and a deliberately small trunk (hidden 64, 2 layers), so the logits dominate and the
part of memory that does grow with the batch (hidden states, attention, saved activations) stays small.

Instrument: LiveBytes, a TorchDispatchMode that sees every tensor created inside it, records each new
storage once (outputs that alias an input, i.e. views and in-place results, are not new memory),
subtracts it when the storage is freed (weakref.finalize) and keeps the peak: the peak of live bytes
allocated by the pass, deterministic, on any device. It also keeps the peak of the "logit-shaped"
bytes alone (float32 tensors whose last dimension is the vocabulary) and the largest such tensor.
Weights and their gradients exist before the pass (gradients are allocated by an untracked warm-up
backward and accumulated in place), so they are not counted. Corroboration: for every cell, one
subprocess runs the same pass and reports ru_maxrss minus its RSS just before it (--rss false skips it).
tests/test_logprob_memory.py asserts the bound with the same instrument, and that it catches a
full-logits computation.

Commands (CPU)
    python bench/logprob_memory.py                                   # the full grid (about 6 minutes)
    python bench/logprob_memory.py --micro-batch 4,16 --logprob-chunk 128,1024     # a short grid
    python bench/logprob_memory.py --micro-batch 1,4 --logprob-chunk 256 --rss false

Deliberately left out: GPU allocator figures (lad.py's perf/logprob_peak_gb and perf/update_peak_gb,
bench/gpu_step.py), bf16 (the trainer's log-softmax is float32 by design), long prompts (prompt positions
never reach the head: Policy gathers response positions first).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import parse_args  # noqa: E402
from policy import Policy, make_batch  # noqa: E402


@dataclasses.dataclass
class Args:
    """Peak memory of policy.Policy's log-prob pass (no grad) and update (grad + backward), micro-batch x chunk grid."""

    DEPRECATED_FLAGS = {"batches": "micro_batch", "chunks": "logprob_chunk"}

    micro_batch: str = "1,4,16"
    """comma-separated micro-batch sizes (lad.py's --micro-batch: responses per forward)"""
    logprob_chunk: str = "128,512,1024"
    """comma-separated --logprob-chunk values (lad.py's flag; default 1024)"""
    response_len: int = 256
    """response tokens per sequence (all responses this long, so N = batch x response_len)"""
    prompt_len: int = 16
    """prompt tokens per sequence"""
    vocab: int = 151936
    """vocabulary (Qwen2's)"""
    hidden: int = 64
    """hidden size of the random-init Qwen2 (small, so that the logits dominate)"""
    layers: int = 2
    """decoder layers"""
    rss: bool = True
    """corroborate each cell with ru_maxrss of one subprocess"""
    threads: int = 1
    """torch CPU threads (memory does not depend on it)"""
    child: str = ""
    """internal: 'batch,chunk,grad' runs one pass and prints its RSS growth as JSON"""


# ----------------------------------------------------------------------------------------------------
# Instrument
# ----------------------------------------------------------------------------------------------------


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside the mode that are still alive, and their peak.

    vocab: also track float32 tensors whose last dimension is `vocab` ("logit-shaped"): their live
    bytes and peak (vocab_peak), and the largest one's number of rows, numel / vocab (vocab_rows).
    """

    def __init__(self, vocab=None):
        super().__init__()
        self.vocab = vocab
        self.live = self.peak = self.vocab_live = self.vocab_peak = self.vocab_rows = 0
        self._seen = set()

    def _free(self, key, n, is_vocab):
        self._seen.discard(key)
        self.live -= n
        if is_vocab:
            self.vocab_live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            # a storage's Python object lives exactly as long as the storage (PyObject preservation),
            # so id() is a stable key and the finalizer runs when the memory is released
            if id(st) in self._seen or st.data_ptr() in inputs or st.nbytes() == 0:
                continue                    # already counted, or a view / in-place result of an input
            n = st.nbytes()
            is_vocab = self.vocab is not None and t.dim() > 0 and t.shape[-1] == self.vocab and t.dtype == torch.float32
            self._seen.add(id(st))
            weakref.finalize(st, self._free, id(st), n, is_vocab)
            self.live += n
            self.peak = max(self.peak, self.live)
            if is_vocab:
                self.vocab_live += n
                self.vocab_peak = max(self.vocab_peak, self.vocab_live)
                self.vocab_rows = max(self.vocab_rows, t.numel() // self.vocab)
        return out


# ----------------------------------------------------------------------------------------------------
# Model, inputs, passes
# ----------------------------------------------------------------------------------------------------


def make_model(vocab, hidden, layers, seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                      max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
                      bos_token_id=None)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg)


def make_inputs(batch, prompt_len, response_len, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = [(torch.randint(2, vocab, (prompt_len,), generator=g).tolist(),
              torch.randint(2, vocab, (response_len,), generator=g).tolist()) for _ in range(batch)]
    return make_batch(items, 0, torch.device("cpu"))


def run_pass(policy, batch, grad):
    """The old-log-prob pass (grad=False) or an update's forward + backward (grad=True)."""
    if not grad:
        with torch.no_grad():
            policy(*batch)
        return
    logp, _, _ = policy(*batch)
    (logp * batch[4]).sum().backward()


def prepare_grads(policy, prompt_len, vocab):
    """Gradients allocated before any measurement, so a pass only accumulates into them."""
    run_pass(policy, make_inputs(1, prompt_len, 4, vocab, seed=1), True)
    for p in policy.parameters():
        p.grad.zero_()


def measure(policy, batch, grad, vocab):
    with LiveBytes(vocab) as lb:
        run_pass(policy, batch, grad)
    return lb


# ----------------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------------


def rss_child(a):
    b, c, grad = a.child.split(",")
    lm = make_model(a.vocab, a.hidden, a.layers)
    policy = Policy(lm, int(c), 1.0)
    prepare_grads(policy, a.prompt_len, a.vocab)
    batch = make_inputs(int(b), a.prompt_len, a.response_len, a.vocab)
    before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run_pass(policy, batch, grad == "1")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # ru_maxrss is a high-water mark: it measures the pass only where the pass went above the setup's peak
    print(json.dumps({"rss_mb": (peak - before) / 2 ** 20 if peak > setup_peak else None}))


def main(a):
    torch.set_num_threads(a.threads)
    if a.child:
        return rss_child(a)
    MB = 2 ** 20
    batches = [int(x) for x in a.micro_batch.split(",")]
    chunks = [int(x) for x in a.logprob_chunk.split(",")]
    print(f"# log-prob memory, policy.Policy; random-init Qwen2 vocab {a.vocab}, hidden {a.hidden}, {a.layers} layers "
          f"(tied head); prompts {a.prompt_len} + responses {a.response_len} tokens; float32 on cpu "
          f"({platform.machine()}, torch {torch.__version__}); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
          flush=True)
    print("peak = peak live bytes allocated by the pass (LiveBytes dispatch mode; weights and their grads excluded); "
          "logits = peak of float32 (.., vocab) tensors alive at once; rss = ru_maxrss growth of a subprocess "
          "running the same pass", flush=True)
    t_start = time.time()
    cells = [(grad, b, c) for grad in (False, True) for b in batches for c in chunks]
    rss = dict.fromkeys(cells)
    if a.rss:   # first, while this process is small: a child inherits its parent's RSS as its ru_maxrss floor
        for grad, b, c in cells:
            out = subprocess.run([sys.executable, __file__, "--child", f"{b},{c},{int(grad)}"] +
                                 [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in
                                  ("response_len", "prompt_len", "vocab", "hidden", "layers", "threads")],
                                 capture_output=True, text=True, check=True)
            rss[grad, b, c] = json.loads(out.stdout.strip().splitlines()[-1])["rss_mb"]
    lm = make_model(a.vocab, a.hidden, a.layers)
    res = {}
    for grad in (False, True):
        for b in batches:
            batch = make_inputs(b, a.prompt_len, a.response_len, a.vocab)
            for c in chunks:
                policy = Policy(lm, c, 1.0)
                lm.zero_grad(set_to_none=True)
                prepare_grads(policy, a.prompt_len, a.vocab)
                lb = measure(policy, batch, grad, a.vocab)
                res[grad, b, c] = (lb.peak / MB, lb.vocab_peak / MB, lb.vocab_rows, rss[grad, b, c])

    for grad in (False, True):
        print(f"\n## {'update: forward with grad + backward' if grad else 'old-log-prob pass: forward, no grad'}"
              f" -- cells: peak MB / logits MB / rss MB; largest logit-shaped tensor in rows (tokens)")
        print(f"{'batch':>5s} {'tokens':>6s} {'full logits MB':>14s}  " +
              "  ".join(f"{'chunk ' + str(c):>26s}" for c in chunks))
        for b in batches:
            n = b * a.response_len
            row = []
            for c in chunks:
                peak, vpeak, rows, r_mb = res[grad, b, c]
                row.append(f"{peak:7.0f} / {vpeak:6.0f} / {'-' if r_mb is None else f'{r_mb:5.0f}':>5s} [{rows:4d}]")
            print(f"{b:5d} {n:6d} {n * a.vocab * 4 / MB:14.0f}  " + "  ".join(f"{x:>26s}" for x in row))

    # the claims, from the numbers above
    print()
    big = [b for b in batches if b * a.response_len >= max(chunks)]
    for grad in (False, True):
        tag = "update" if grad else "no-grad"
        rows_ok = all(res[grad, b, c][2] <= c for b in batches for c in chunks)
        print(f"{tag}: largest logit-shaped tensor <= chunk rows in every cell: {'yes' if rows_ok else 'NO'}")
        if len(big) >= 2:
            b0, b1 = big[0], big[-1]
            full = (b1 - b0) * a.response_len * a.vocab * 4 / MB
            for c in chunks:
                d = res[grad, b1, c][0] - res[grad, b0, c][0]
                dv = res[grad, b1, c][1] - res[grad, b0, c][1]
                print(f"{tag}, chunk {c}: batch {b0} -> {b1}: peak +{d:.0f} MB (logit-shaped +{dv:.0f} MB) while full "
                      f"logits would grow +{full:.0f} MB; peak / (chunk x vocab x 4 B) = "
                      f"{res[grad, b1, c][0] * MB / (c * a.vocab * 4):.2f}")
    # reference: the same instrument on the naive computation (HF logits for every position, then log-softmax)
    b0 = batches[0]
    ids, attn, pos, tgt, valid = make_inputs(b0, a.prompt_len, a.response_len, a.vocab)
    with torch.no_grad(), LiveBytes(a.vocab) as lb:
        logits = lm(input_ids=ids, attention_mask=attn).logits.float()
        torch.log_softmax(logits, -1).gather(-1, ids[..., None])
        del logits
    print(f"reference, naive full logits (lm(...).logits.float() + log_softmax, no grad) at batch {b0}: peak "
          f"{lb.peak / MB:.0f} MB, largest logit-shaped tensor {lb.vocab_rows} rows (every position of the batch)")
    print(f"\n({time.time() - t_start:.0f} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main(parse_args(Args))
