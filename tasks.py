"""tasks.py -- the task contract: what a row's kind means (its reward, its reasons, the answer "distinct
correct answers" counts), and the two built-in tasks of the embedded default.

A row is {"id", "prompt", "gold", "kind"}; lad.py trains on rows and eval.py scores them through `judge`
and `answer_key` here, for every kind alike (neither names a kind). Kinds:
    math   gold = an answer string; reward 1 iff verifier.py judges the final answer equivalent
    sum    the built-in arithmetic task below; gold = its spec; reward 1 iff the first line is a valid answer
    code   gold = sandbox.py's problem dict; reward 1 iff the response's last fenced python block passes
           every test in the bubblewrap sandbox (DeepCoder's sparse outcome reward)

The built-in tasks (paper context: LAD matters when a prompt has several correct answers, so both have
many per prompt and the number of distinct correct answers a policy keeps can be counted):
    builtin-sum   "13 no4:" -> two digits joined by '+' that sum to 13 and avoid the digit 4 ("8+5", "6+7", ...)
    builtin-code  "13 py:" -> a fenced python program printing 13 ("```python\\nprint(8+5)\\n```"), run in the sandbox
Each is split once, deterministically, into "train" and "heldout" prompts (disjoint), so held-out figures
measure generalisation to unseen prompts. tiny.py warm-starts its model on `draw` of a task's train split.

Commands: none (a module; `python lad.py --train-data builtin-code`, `python eval.py --benchmark builtin-sum`).
Deliberately left out: task kinds beyond these three (add one here: a reward, its reasons, an answer key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
from typing import Callable

import sandbox
import verifier

KINDS = ("math", "sum", "code")
GRADERS = verifier.GRADERS
"""The math graders (verifier.py: ours, math-verify, verl's math_dapo); docs/verifier.md compares them."""
REASONS = {"math": ("ok", "wrong_answer"), "sum": ("ok", "wrong_answer"), "code": sandbox.REASONS}
"""The reasons a reward of each kind comes with (code: sandbox.py's; documented in docs/sandbox.md)."""


@dataclasses.dataclass
class Verdict:
    """One response's judgement: its 0/1 reward, why (one of REASONS[kind]), and for code the sandbox's
    detail and, on EvalPlus problems, the reward on the base tests alone (HumanEval as EvalPlus reports it)."""
    reward: float
    reason: str
    detail: str = ""
    base_reward: float | None = None


def judge(texts: list[str], golds: list, kind: str, *, weak_sandbox: bool = False, grader: str = "ours") -> list[Verdict]:
    """The verdict of each response against its gold, for one task kind: math through verifier.py with
    `grader` (time-bounded worker processes), sum inline, code through sandbox.py (parallel bubblewrap
    sandboxes). One bad sample is that sample's reward 0 with its reason, never an exception for the batch."""
    if kind == "code":
        return [Verdict(v.reward, v.reason, v.detail, v.base_reward)
                for v in sandbox.score_code_batch_verdicts(texts, golds, weak_sandbox=weak_sandbox)]
    if kind == "sum":
        rewards = [sum_reward(t, g) for t, g in zip(texts, golds)]
    elif kind == "math":
        rewards = verifier.score_batch(texts, golds, grader=grader)
    else:
        raise ValueError(f"unknown task kind {kind!r}; choose from {KINDS}")
    return [Verdict(r, "ok" if r > 0 else "wrong_answer") for r in rewards]


def require(kinds, *, weak_sandbox: bool = False) -> None:
    """Refuse (ValueError naming the fix) when the judge of one of `kinds` cannot run on this machine: code
    rewards need the bubblewrap sandbox unless weak_sandbox (then a warning on stderr says so)."""
    if "code" not in kinds:
        return
    if weak_sandbox:
        print("WARNING: --weak-sandbox true: model-written programs run WITHOUT bubblewrap (docs/sandbox.md says "
              "what that does not protect); do not use it with untrusted code", file=sys.stderr, flush=True)
        return
    try:
        sandbox.check_sandbox()
    except sandbox.SandboxUnavailable as e:
        raise ValueError(f"code rewards need the bubblewrap sandbox: {e}") from None


def describe(kind: str, grader: str = "ours") -> dict:
    """How a kind's reward is computed, in words and limits (eval.py records it in summary.json)."""
    if kind == "code":
        return {"reward": "1 iff the response's last fenced python block passes every test (DeepCoder's sparse "
                          "outcome reward), else 0 with the reason; no block -> 0 (no_code_block)",
                "limits": {"per_test_s": sandbox.PER_TEST_S, "total_s": sandbox.TOTAL_S, "memory_mb": sandbox.MEMORY_MB,
                           "tmpfs_bytes": sandbox.TMPFS_BYTES, "output_cap_bytes": sandbox.OUTPUT_CAP},
                "isolation": "bubblewrap sandbox, expected values compared outside it (docs/sandbox.md)"}
    if kind == "sum":
        return {"reward": "1 iff the response's first line is k single digits joined by '+' summing to the target "
                          "and avoiding the forbidden digit (tasks.sum_reward)"}
    return {"reward": "1 iff the grader judges the response's final answer equivalent to the gold (docs/verifier.md)",
            "grader": grader}


def answer_key(text: str, kind: str):
    """The answer a response gives, for counting distinct correct answers: the candidate line (sum), the
    program (code: its last fenced python block, whitespace-normalised) or the final answer (math)."""
    if kind == "code":
        prog = sandbox.extract_program(text)
        return None if prog is None else "\n".join(ln.rstrip() for ln in prog.strip().splitlines())
    return sum_answer(text) if kind == "sum" else verifier.extract_answer(text)


# ----------------------------------------------------------------------------------------------------
# builtin-sum (kind "sum"): k single digits joined by '+' that sum to T and avoid one digit d
# ----------------------------------------------------------------------------------------------------

TERMS = (2,)                   # digits per answer; calibrated (docs/training.md: 3 and 4 did not learn in minutes)
TARGET_MAX = 18                # largest target T used
MIN_ANSWERS = 4                # prompts with fewer correct answers are not used (diversity needs several)
HELDOUT_FRACTION = 0.2         # of the prompts, chosen by a fixed hash
SPLIT_SEED = "lad-sum-v1"      # changing it changes the split; keep fixed


def sum_prompt(target, avoid, terms):
    # Short, with the target first and the answer right after the colon: a longer "T=17 avoid=3 k=2:"
    # stayed on the loss plateau (no arithmetic learned) for 600+ warm-start steps. `terms` is only in
    # the prompt when the task mixes several values of it.
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


def _heldout(seed, key):
    """The fixed hash that splits a task's prompts: True for the held-out ones (HELDOUT_FRACTION of them)."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 16 ** 8 < HELDOUT_FRACTION


def sum_split(split):
    """builtin-sum's prompts of a split ("train" or "heldout") -> [{"id", "prompt", "gold"}]."""
    return [{"id": f"sum-{t}-{d}-{k}", "prompt": sum_prompt(t, d, k), "gold": sum_gold(t, d, k)}
            for t, d, k in _triples() if _heldout(SPLIT_SEED, f"{t}:{d}:{k}") == (split == "heldout")]


def _sum_draw():
    """Warm-start examples: a training prompt and a uniformly random correct answer, rng -> (str, str)."""
    rows = [(t, d, k) for t, d, k in _triples() if not _heldout(SPLIT_SEED, f"{t}:{d}:{k}")]
    return lambda rng: (lambda t, d, k: (sum_prompt(t, d, k), random_answer(t, d, k, rng)))(*rng.choice(rows))


_SUM_GOLD = re.compile(r"target=(\d+),avoid=(\d),terms=(\d+)")


def sum_answer(response: str) -> str | None:
    """The candidate of a builtin-sum response: its first line, whitespace stripped; None if empty."""
    first = response.split("\n", 1)[0].strip()
    return first or None


def sum_reward(response: str, gold: str) -> float:
    """1.0 iff the candidate is k single digits joined by '+', none the forbidden digit, summing to T."""
    m = _SUM_GOLD.fullmatch(gold)
    if m is None or int(m.group(3)) < 1:
        raise ValueError(f"malformed builtin-sum gold {gold!r} (expected 'target=<T>,avoid=<d>,terms=<k>', k >= 1)")
    target, avoid, k = int(m.group(1)), m.group(2), int(m.group(3))
    cand = sum_answer(response)
    if cand is None or len(cand) != 2 * k - 1:
        return 0.0
    digits = cand[0::2]
    if not all(c in "0123456789" for c in digits) or any(c != "+" for c in cand[1::2]):
        return 0.0
    if avoid in digits:
        return 0.0
    return 1.0 if sum(int(c) for c in digits) == target else 0.0


# ----------------------------------------------------------------------------------------------------
# builtin-code (kind "code"): the same arithmetic written as a program, run in the sandbox like any code
# problem. Any program printing the target passes (print(4+9), print(13), ...): several correct programs
# per prompt, counted as distinct by their text. The warm start teaches print(a+b) with digits a, b.
# ----------------------------------------------------------------------------------------------------

CODE_TERMS = 2                 # digits in the warm start's print(a+b)
CODE_SPLIT_SEED = "lad-code-v1"


def code_prompt(target):
    return f"{target} py:"


def code_program(digits):
    """The response the warm start teaches: print(a+b) in a fenced python block (DeepCoder's format)."""
    return "```python\nprint(" + "+".join(map(str, digits)) + ")\n```"


def code_row(target):
    """The problem as a LiveCodeBench-style row (one stdin test), parsed by sandbox.parse_code_row."""
    return {"problem": code_prompt(target), "tests": [{"input": "", "output": f"{target}\n", "testtype": "stdin"}]}


def _code_targets(split):
    return [t for t in range(9 * CODE_TERMS + 1) if count_answers(t, -1, CODE_TERMS) >= MIN_ANSWERS
            and _heldout(CODE_SPLIT_SEED, t) == (split == "heldout")]


def code_split(split):
    """builtin-code's problems of a split -> [{"id", "prompt", "gold"}], gold parsed like a file's code row."""
    return [{"id": f"code-{t}", "prompt": code_prompt(t),
             "gold": sandbox.parse_code_row(code_row(t), f"builtin-code:code-{t}")} for t in _code_targets(split)]


def _code_draw():
    targets = _code_targets("train")

    def draw(rng):
        t = rng.choice(targets)
        return code_prompt(t), code_program(random_answer(t, -1, CODE_TERMS, rng).split("+"))
    return draw


# ----------------------------------------------------------------------------------------------------
# The built-in tasks by name (lad.py --train-data, eval.py --benchmark)
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BuiltinTask:
    """A built-in task: what lad.py trains on and eval.py scores by name, and what tiny.py warm-starts on."""
    name: str
    kind: str                      # the task kind of its rows
    new_tokens: int                # its response limit (lad.py and eval.py: --max-new-tokens 0)
    split: Callable                # "train" | "heldout" -> rows {"id", "prompt", "gold"}, prompts used as they are
    draw: Callable                 # () -> (rng -> (prompt, answer)): warm-start examples of the train split
    cache_key: dict                # what defines the task, for tiny.py's cache of its warm-started model
    base: BuiltinTask | None = None  # the task whose warm-started model this one's warm start continues
    warm_lr: float | None = None   # its warm start's lr, where tiny.WARM's does not suit it


SUM = BuiltinTask("builtin-sum", "sum", 12, sum_split, _sum_draw,
                  {"terms": TERMS, "tmax": TARGET_MAX, "min": MIN_ANSWERS, "split": SPLIT_SEED})
# 32 tokens: a fenced print(a+b) is 25 tokens with EOS. Warm-started from builtin-sum's model: from a random init,
# print(a+b) stayed at chance for 500+ steps (the digits sit 11-14 characters after the target). lr 1e-3:
# at WARM's 3e-3 the loss oscillated (0.26 at step 150, 0.55 at 200, 0.36 at the end, "python" still
# misspelt); at 1e-3 it ends at 0.13, every answer character right under teacher forcing (docs/training.md).
CODE = BuiltinTask("builtin-code", "code", 32, code_split, _code_draw,
                   {**SUM.cache_key, "task": "code", "code_terms": CODE_TERMS, "code_split": CODE_SPLIT_SEED,
                    "base": "sum", "warm_lr": 1e-3}, base=SUM, warm_lr=1e-3)
BUILTIN = {t.name: t for t in (SUM, CODE)}
DEPRECATED = {"builtin": "builtin-sum", "tiny": "builtin-sum", "tiny-code": "builtin-code"}
"""Older names of the built-in tasks (lad.py --train-data builtin, eval.py --benchmark tiny), still accepted."""


def builtin(name: str, prog: str = "") -> BuiltinTask | None:
    """The built-in task called `name` (an older name too, with a one-line deprecation note on stderr), or
    None when `name` is not one (a file path)."""
    if name in DEPRECATED:
        print(f"{prog or 'lad'}: {name!r} is deprecated; use {DEPRECATED[name]!r}", file=sys.stderr)
        name = DEPRECATED[name]
    return BUILTIN.get(name)


def builtin_rows(task: BuiltinTask, split: str) -> list[dict]:
    """A built-in task's rows of one split, with their kind."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'heldout'")
    return [{**r, "kind": task.kind} for r in task.split(split)]
