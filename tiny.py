"""tiny.py -- the embedded default model: a tiny Qwen2 and its character-level tokenizer, warm-started on a
built-in task (tasks.py) and cached, so that `python lad.py` runs with no download, ever.

The model: Qwen2 architecture from a config (hidden 128, 4 layers, 2 heads of head_dim 64, which vLLM's
CPU attention accepts; 0.89M parameters), a character-level tokenizer saved with it, so that transformers
and vLLM both load the folder with AutoTokenizer / AutoModelForCausalLM. The warm start is a short
supervised phase on uniformly random correct answers of a task's training prompts (loss on answer tokens
only), deliberately short so that RL has room left (docs/training.md gives the measured accuracy). The
task's examples come from the caller (lad.py and eval.py pass a tasks.BuiltinTask): this file knows
models, not tasks.

Commands
    python tiny.py --out DIR                  # a random-init tiny model (no warm start) in DIR
    python tiny.py --out DIR --context 8192   # ... whose context holds real code prompts (one token per byte)
    (the warm-started models are built on first use by lad.py and eval.py, cached under LAD_CACHE or .cache/)

Deliberately left out: BPE (characters suffice for digits), a chat template (prompts are plain text).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from common import parse_args

# ----------------------------------------------------------------------------------------------------
# Tokenizer and model
# ----------------------------------------------------------------------------------------------------

SPECIALS = ["<pad>", "<eos>", "<unk>"]


def _byte_chars():
    """GPT-2's byte -> printable-character map (the alphabet of byte-level BPE), in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


MODEL_CONFIG = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=2,
                    num_key_value_heads=2, head_dim=64, max_position_embeddings=256, rope_theta=10000.0,
                    tie_word_embeddings=True, rms_norm_eps=1e-6)


def make_tokenizer(context=None):
    """Character-level tokenizer: one token per byte (so per ASCII character); <pad>=0, <eos>=1, <unk>=2.

    Built as a byte-level BPE with no merges. Why that form: transformers 5 loads any folder whose
    config says model_type "qwen2" with its Qwen2Tokenizer, which rebuilds the pipeline from the
    vocabulary (byte-level pre-tokenizer and decoder); a plain character WordLevel model then lost its
    spaces. With the byte-level alphabet as vocabulary and no merges, the rebuilt tokenizer is
    identical, so transformers and vLLM (AutoTokenizer) encode and decode exactly as this one does.
    """
    vocab = {t: i for i, t in enumerate(SPECIALS + _byte_chars())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", model_max_length=context or MODEL_CONFIG["max_position_embeddings"])


def make_model(seed=0, context=None):
    """Random-init tiny Qwen2 and its tokenizer; context: max_position_embeddings (default MODEL_CONFIG's)."""
    tok = make_tokenizer(context)
    cfg = Qwen2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None, **{**MODEL_CONFIG, **({"max_position_embeddings": context} if context else {})})
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def init_model_dir(path, seed=0, context=None):
    """Random-init tiny Qwen2 (head_dim 64) saved in HF format with its tokenizer; returns the path.
    context: its max_position_embeddings (e.g. 8192 to hold real code prompts, one token per byte)."""
    model, tok = make_model(seed, context)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


# ----------------------------------------------------------------------------------------------------
# Warm start (supervised, answer tokens only) and its cache
# ----------------------------------------------------------------------------------------------------

WARM = dict(steps=300, batch=64, lr=3e-3, warmup=20)  # calibrated: docs/training.md


def warm_start(model, tok, draw, seed=0, steps=WARM["steps"], batch=WARM["batch"], lr=WARM["lr"], log=print):
    """Train `model` in place on `draw(rng) -> (prompt, answer)` examples (deterministic in seed)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARM["warmup"]))
    model.train()
    t0 = time.time()
    for step in range(steps):
        seqs, masks = [], []
        for _ in range(batch):
            prompt, answer = draw(rng)
            p = tok(prompt)["input_ids"]
            a = tok(answer)["input_ids"] + [tok.eos_token_id]
            seqs.append(p + a)
            masks.append([0] * len(p) + [1] * len(a))
        width = max(map(len, seqs))
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
        m = torch.tensor([x + [0] * (width - len(x)) for x in masks], dtype=torch.float32)
        att = (torch.arange(width)[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (nll * m[:, 1:]).sum() / m[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0 or step == 0:
            log(f"warm start step {step + 1}/{steps}  loss {loss.item():.3f}  {time.time() - t0:.0f}s")
    model.eval()
    return model


def cache_root():
    """LAD_CACHE if set, else .cache/ next to this file (gitignored)."""
    return Path(os.environ.get("LAD_CACHE", Path(__file__).resolve().parent / ".cache"))


def _cache_key(seed, task):
    d = {"model": MODEL_CONFIG, "warm": WARM, "tokenizer": "bytelevel-nomerge", "seed": seed, "v": 2, **task.cache_key}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def default_model_dir(task, seed=0, log=print):
    """Path of the cached tiny model warm-started on `task` (a tasks.BuiltinTask: its `draw` examples, its
    `cache_key`, and its `base`, whose model the warm start continues from); built on first use, under a
    file lock, so that several ranks or processes calling this at once build it once."""
    # Resolved before the lock: flock is per open file, so taking it twice in one process would deadlock.
    base = default_model_dir(task.base, seed, log) if task.base is not None else None
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"tiny-{task.kind}-s{seed}-{_cache_key(seed, task)}"
    with open(root / ".tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (final / "config.json").exists():
                log(f"building the tiny model warm-started on {task.name} (once) in {final}")
                tmp = root / f".tmp-{final.name}-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                n_threads = torch.get_num_threads()
                if base is None:
                    model, tok = make_model(seed)
                else:
                    model, tok = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
                warm_start(model, tok, task.draw(), seed=seed, lr=task.warm_lr or WARM["lr"], log=log)
                torch.set_num_threads(n_threads)
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                os.replace(tmp, final)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(final)


@dataclasses.dataclass
class Args:
    """Write a random-init tiny model (see the module docstring)."""

    out: str = ""
    """folder to write the random-init (not warm-started) tiny model to"""
    seed: int = 0
    """seed of the model's initialisation"""
    context: int = 0
    """the model's context (max_position_embeddings, tokens = bytes); 0 = 256 (MODEL_CONFIG)"""


if __name__ == "__main__":
    a = parse_args(Args)
    if not a.out:
        print("tiny.py: error: --out DIR is required (the warm-started models are built by lad.py and eval.py)",
              file=sys.stderr)
        sys.exit(2)
    print(init_model_dir(a.out, a.seed, a.context or None))
