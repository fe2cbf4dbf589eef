"""The embedded default: a built-in verifiable task and a tiny Qwen2 warm-started on it (no download, ever).

Used by lad.py (default --model and --train-data), eval.py and the tests. Paper context: LAD (Sec. 3)
matters when a prompt has several correct answers, so the built-in task has many per prompt and the
number of distinct correct answers a policy keeps can be counted (SPEC.md "The embedded default").

The task, kind "sum" (scored by verifier.sum_task_reward): write `k` single digits joined by '+' that
sum to a target T and avoid one forbidden digit d. Prompt "13 no4:"; correct responses "8+5", "6+7",
"5+8", ... (then EOS), not "9+4"; gold "target=13,avoid=4,terms=2". Prompts with fewer than MIN_ANSWERS
correct answers are not used. The (T, d, k) triples are split once, deterministically, into "train" and
"heldout" (disjoint), so held-out evaluation measures generalisation to unseen prompts.

The model: Qwen2 architecture from a config (hidden 128, 4 layers, 2 heads of head_dim 64, which vLLM's
CPU attention accepts; about 0.86M parameters), character-level tokenizer saved with it, so that
transformers and vLLM both load the folder with AutoTokenizer / AutoModelForCausalLM. The warm start is a
short supervised phase on uniformly random correct answers of training prompts (loss on answer tokens
only), deliberately short so that RL has room left (README "training" gives the measured accuracy).

Commands
    python tiny.py                 # build (or reuse) the cached warm-started model; print its accuracy
    python tiny.py --rebuild       # rebuild it
    python tiny.py --task code     # the built-in code task's model (lad.py --train-data builtin-code)
    python tiny.py --out DIR       # random-init tiny model (no warm start) into DIR
    python tiny.py --out DIR --context 8192   # ... whose context holds real code prompts (one token per byte)

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

# ----------------------------------------------------------------------------------------------------
# Task (kind "sum"); the contract is shared with verifier.py, lad.py and eval.py
# ----------------------------------------------------------------------------------------------------

TERMS = (2,)                   # digits per answer; calibrated (README "training": 3 and 4 did not learn in minutes)
TARGET_MAX = 18                # largest target T used
MIN_ANSWERS = 4                # prompts with fewer correct answers are not used (diversity needs several)
HELDOUT_FRACTION = 0.2         # of the (T, d, k) triples, chosen by a fixed hash
SPLIT_SEED = "lad-sum-v1"      # changing it changes the split; keep fixed


def sum_prompt(target, avoid, terms):
    # Short, with the target first and the answer right after the colon: a longer "T=17 avoid=3 k=2:"
    # stayed on the loss plateau (no arithmetic learned) for 600+ warm-start steps (README "training").
    # `terms` is only in the prompt when the task mixes several values of it.
    return f"{target} no{avoid}:" if len(TERMS) == 1 else f"{target} no{avoid} k{terms}:"


def sum_gold(target, avoid, terms):
    return f"target={target},avoid={avoid},terms={terms}"


def count_answers(target, avoid, terms):
    """Number of ordered digit sequences (length `terms`, no digit == avoid) summing to target."""
    ways = [1] + [0] * target                                   # ways[s] for sequences of length 0
    for _ in range(terms):
        new = [0] * (target + 1)
        for s, w in enumerate(ways):
            if w:
                for d in range(10):
                    if d != avoid and s + d <= target:
                        new[s + d] += w
        ways = new
    return ways[target]


def random_answer(target, avoid, terms, rng):
    """A uniformly random correct answer, by rejection-free sequential sampling on the counts."""
    digits, left = [], target
    for i in range(terms, 0, -1):
        choices = [d for d in range(10) if d != avoid and d <= left]
        weights = [count_answers(left - d, avoid, i - 1) if i > 1 else int(d == left) for d in choices]
        d = rng.choices(choices, weights)[0]
        digits.append(d)
        left -= d
    return "+".join(map(str, digits))


def _triples():
    for k in TERMS:
        for t in range(0, min(9 * k, TARGET_MAX) + 1):
            for d in range(10):
                if count_answers(t, d, k) >= MIN_ANSWERS:
                    yield t, d, k


def task_split(split):
    """The built-in task's prompts: split in {"train", "heldout"} -> list of {"id", "prompt", "gold"}."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'heldout'")
    rows = []
    for t, d, k in _triples():
        h = int(hashlib.sha256(f"{SPLIT_SEED}:{t}:{d}:{k}".encode()).hexdigest()[:8], 16) / 16 ** 8
        if (h < HELDOUT_FRACTION) == (split == "heldout"):
            rows.append({"id": f"sum-{t}-{d}-{k}", "prompt": sum_prompt(t, d, k), "gold": sum_gold(t, d, k)})
    return rows


# ----------------------------------------------------------------------------------------------------
# Task (kind "code", `lad.py --train-data builtin-code`): the same arithmetic written as a program, run in
# the sandbox (sandbox.py) like any code problem. Prompt "13 py:"; a correct response is a fenced python
# block whose program prints 13, e.g. "```python\nprint(8+5)\n```"; the one stdin test expects "13".
# Any program printing 13 passes (print(4+9), print(13), ...): several correct programs per prompt,
# counted as distinct by their text. The warm start teaches print(a+b) with digits a, b.
# ----------------------------------------------------------------------------------------------------

CODE_TERMS = 2                 # digits in the warm start's print(a+b) (warm-started from the sum model)
CODE_SPLIT_SEED = "lad-code-v1"


def code_prompt(target):
    return f"{target} py:"


def code_program(digits):
    """The response the warm start teaches: print(a+b) in a fenced python block (DeepCoder's format)."""
    return "```python\nprint(" + "+".join(map(str, digits)) + ")\n```"


def code_gold(target):
    """The problem as a LiveCodeBench-style row (one stdin test), parsed by sandbox.parse_code_row."""
    return {"problem": code_prompt(target), "tests": [{"input": "", "output": f"{target}\n", "testtype": "stdin"}]}


def code_targets():
    return [t for t in range(9 * CODE_TERMS + 1) if count_answers(t, -1, CODE_TERMS) >= MIN_ANSWERS]


def code_split(split):
    """The built-in code task's rows: split in {"train", "heldout"} -> list of {"id", "prompt", "row"};
    "row" is the code problem in a file format (data.builtin_rows parses it)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'heldout'")
    rows = []
    for t in code_targets():
        h = int(hashlib.sha256(f"{CODE_SPLIT_SEED}:{t}".encode()).hexdigest()[:8], 16) / 16 ** 8
        if (h < HELDOUT_FRACTION) == (split == "heldout"):
            rows.append({"id": f"code-{t}", "prompt": code_prompt(t), "row": code_gold(t)})
    return rows


def _examples(task):
    """(prompt, answer) draws of a task's training split for the warm start: rng -> (str, str)."""
    if task == "sum":
        train_ids = {r["id"] for r in task_split("train")}
        rows = [r for r in _triples() if f"sum-{r[0]}-{r[1]}-{r[2]}" in train_ids]
        return lambda rng: (lambda t, d, k: (sum_prompt(t, d, k), random_answer(t, d, k, rng)))(*rng.choice(rows))
    if task == "code":
        targets = [int(r["id"].split("-")[1]) for r in code_split("train")]

        def draw(rng):
            t = rng.choice(targets)
            return code_prompt(t), code_program(random_answer(t, -1, CODE_TERMS, rng).split("+"))
        return draw
    raise ValueError(f"unknown built-in task {task!r}; choose 'sum' or 'code'")


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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + _byte_chars())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", model_max_length=context or MODEL_CONFIG["max_position_embeddings"])


def make_model(seed=0, context=None):
    """Random-init tiny Qwen2 and its tokenizer; context: max_position_embeddings (default MODEL_CONFIG's)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

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

WARM = dict(steps=300, batch=64, lr=3e-3, warmup=20)  # calibrated: README "training"


def warm_start(model, tok, seed=0, steps=WARM["steps"], batch=WARM["batch"], lr=WARM["lr"], log=print,
               callback=None, task="sum"):
    """Train `model` in place on random correct answers of the training prompts of `task` (sum or code;
    deterministic in seed)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    draw = _examples(task)
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
        if callback is not None:
            callback(step + 1)
        if (step + 1) % 50 == 0 or step == 0:
            log(f"warm start step {step + 1}/{steps}  loss {loss.item():.3f}  {time.time() - t0:.0f}s")
    model.eval()
    return model


def cache_root():
    """LAD_CACHE if set, else .cache/ next to this file (gitignored)."""
    return Path(os.environ.get("LAD_CACHE", Path(__file__).resolve().parent / ".cache"))


def _cache_key(seed, task="sum"):
    d = {"model": MODEL_CONFIG, "warm": WARM, "terms": TERMS, "tmax": TARGET_MAX, "min": MIN_ANSWERS,
         "split": SPLIT_SEED, "tokenizer": "bytelevel-nomerge", "seed": seed, "v": 2}
    if task != "sum":                  # the sum model's key (and so its cached folder) stays as it was
        d.update(task=task, code_terms=CODE_TERMS, code_split=CODE_SPLIT_SEED, base="sum")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def default_model_dir(seed=0, rebuild=False, log=print, task="sum"):
    """Path of the cached tiny model warm-started on `task` (sum or code); built on first use (under a
    file lock, so that several ranks or processes calling this at once build it once)."""
    # The code model starts from the sum model: from a random init, print(a+b) stayed at chance for 500+
    # steps (the digits sit 11-14 characters after the target, the sum task's 1-5); from the sum model it
    # reaches about 0.3 training accuracy in 300 (README "training"). Resolved before the lock (flock is
    # per open file: taking it twice in one process would deadlock).
    base = default_model_dir(seed, rebuild=False, log=log) if task == "code" else None
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"tiny-{task}-s{seed}-{_cache_key(seed, task)}"
    with open(root / ".tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if rebuild and final.exists():
                shutil.rmtree(final)
            if not (final / "config.json").exists():
                log(f"building the tiny warm-started model (once) in {final}")
                tmp = root / f".tmp-{final.name}-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                n_threads = torch.get_num_threads()
                if base is None:
                    model, tok = make_model(seed)
                else:
                    from transformers import AutoModelForCausalLM, AutoTokenizer

                    model, tok = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
                warm_start(model, tok, seed=seed, log=log, task=task)
                torch.set_num_threads(n_threads)
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                os.replace(tmp, final)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(final)


def evaluate_builtin(model, tok, split="heldout", k=16, temperature=1.0, seed=0, max_new_tokens=32, task="sum"):
    """Held-out figures of `model` on a split of a built-in task (sum or code): metrics.py's, under
    eval.py's and lad.py's names (eval/avg@n, eval/pass@k, eval/distinct_answers, ...)."""
    import data
    import metrics
    from rollout import HFEngine

    rows = data.builtin_rows(split, task)
    kind = rows[0]["kind"]
    engine = HFEngine(model, tok)
    prompts = [tok(r["prompt"])["input_ids"] for r in rows]
    samples = engine.generate(prompts, k, temperature=temperature, top_p=1.0,
                              max_new_tokens=max_new_tokens, seed=seed)
    texts = tok.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
    rewards = data.rewards(texts, [rows[s.prompt_index]["gold"] for s in samples], kind)
    per = [[{"reward": float(rewards[j]), "response": texts[j], "answer": data.answer_key(texts[j], kind),
             "num_tokens": len(samples[j].response_ids), "truncated": bool(samples[j].truncated)}
            for j in range(i * k, (i + 1) * k)] for i in range(len(rows))]
    vals = [metrics.problem_values(p, metrics.default_ks(k)) for p in per]
    return {**metrics.mean_values(vals), "eval/n": k, "eval/prompts": len(rows)}


@dataclasses.dataclass
class Args:
    """Build the embedded default model (see the module docstring)."""

    CHOICES = {"task": ["sum", "code"]}

    task: str = "sum"
    """built-in task the model is warm-started on: sum (lad.py's default) or code (--train-data builtin-code)"""
    seed: int = 0
    """seed of the model's initialisation and warm start (lad.py's default model uses 0)"""
    rebuild: bool = False
    """rebuild the cached warm-started model even if it exists"""
    out: str = ""
    """write a random-init (not warm-started) tiny model to this folder instead; empty = the cached default"""
    context: int = 0
    """with --out: the model's context (max_position_embeddings, tokens = bytes); 0 = 256 (MODEL_CONFIG)"""


if __name__ == "__main__":
    from common import parse_args

    a = parse_args(Args)
    if a.out:
        print(init_model_dir(a.out, a.seed, a.context or None))
        sys.exit(0)
    t0 = time.time()
    path = default_model_dir(a.seed, rebuild=a.rebuild, task=a.task)
    print(f"model: {path}  ({time.time() - t0:.0f}s)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m, t = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    split = task_split if a.task == "sum" else code_split
    print(f"{a.task}: train prompts {len(split('train'))}, heldout prompts {len(split('heldout'))}")
    print("heldout before RL:", json.dumps(evaluate_builtin(m, t, task=a.task)))
