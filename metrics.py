"""metrics.py -- the held-out metrics, one home for lad.py's periodic evaluation, eval.py and tiny.py.

Avg@k, Pass@k (the unbiased estimator of Chen et al. 2021), distinct-n (Li et al. 2016; paper Table 4)
and distinct correct answers per prompt, under ONE naming scheme (`eval/...`, docs/metrics.md), so a
training curve and eval.py's table are the same numbers under the same names. Pure Python: no torch,
no transformers, nothing imported from the other scripts.

Commands: none (a module). Deliberately left out: the paper's GPT-4 "logical diversity" judge (it
needs a network and a paid API).
"""

from __future__ import annotations

import re
from collections.abc import Sequence



def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k of one problem from n samples of which c are correct (Chen et al. 2021).

    1 - C(n-c, k) / C(n, k), computed as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never
    forms the (huge) binomials and is exact up to float rounding for any n.
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"pass_at_k expects ints, got n={n!r}, c={c!r}, k={k!r}")
    if k < 1 or n < k:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if c < 0 or c > n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    # Chen et al. (2021), Eq. 1 / their numerically stable form: C(n-c,k)/C(n,k) = prod_{i=n-c+1}^{n} (1 - k/i)
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(rewards) -> float:
    """Avg@k: mean reward (accuracy for 0/1 rewards) over the k samples of one problem.

    `rewards` is a flat sequence (one problem's samples), or a sequence of such sequences (one per
    problem), in which case the result is the mean over problems of each problem's Avg@k, so a
    problem with more samples does not weigh more.
    """
    rows = list(rewards)
    if not rows:
        raise ValueError("avg_at_k of an empty sequence")
    if all(isinstance(r, (list, tuple)) for r in rows):
        return sum(avg_at_k(r) for r in rows) / len(rows)
    return float(sum(float(r) for r in rows) / len(rows))


# Tokenisation for distinct-n: runs of word characters (letters, digits, _) and every other
# non-space character on its own. Why not a model tokenizer: the figure must compare checkpoints with
# different tokenizers and generation files from other frameworks, so it has to be model-independent.
# Why not plain whitespace: math and the built-in task write "3+5+9" or "x^2+1=0" without spaces,
# which whitespace splitting would count as one "word"; splitting symbols off makes those n-grams
# meaningful while leaving ordinary prose exactly as whitespace splitting would (minus punctuation).
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """The tokens distinct_n counts: r'\\w+|[^\\w\\s]' (words, and each other symbol alone)."""
    return _TOKEN_RE.findall(text)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """distinct-n of a group of texts: distinct n-grams / total n-grams, pooled over all the texts.

    Pass the samples of ONE prompt; eval.py averages this over prompts (paper Table 4 follows the
    common definition of Li et al. 2016). n-grams never cross text boundaries. Texts shorter than n
    contribute nothing; if no text has an n-gram the value is 0.0 (nothing diverse was produced).
    Tokens: see tokenize().
    """
    if isinstance(texts, str):
        raise TypeError("distinct_n expects a list of texts, not one string")
    if n < 1:
        raise ValueError(f"distinct_n needs n >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        toks = tokenize(text)
        for i in range(len(toks) - n + 1):
            seen.add(tuple(toks[i:i + n]))
            total += 1
    return len(seen) / total if total else 0.0


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself (the paper's Pass@16 / Pass@32 are the last point)."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


def problem_values(samples: list[dict], ks: list[int]) -> dict:
    """Every per-problem figure of one problem from its samples ({"reward", "response", "answer", and
    optionally "num_tokens", "truncated"}); a benchmark's figure is the mean over its problems.
    Avg@k is stored as "eval/avg@n" (k = this problem's n samples; summary.json records n)."""
    n = len(samples)
    rewards = [r["reward"] for r in samples]
    correct = [r["reward"] >= 1.0 for r in samples]          # rewards are 0/1 (verifier.py contract)
    c = sum(correct)
    texts = [r["response"] for r in samples]
    v = {"eval/avg@n": avg_at_k(rewards)}
    for k in ks:
        v[f"eval/pass@{k}"] = pass_at_k(n, c, k)
    for m in (1, 2, 3, 4):
        v[f"eval/distinct-{m}"] = distinct_n(texts, m)
    # an answer the extractor cannot name (None) is not a distinct answer, as train/distinct_correct counts
    v["eval/distinct_answers"] = float(len({r["answer"] for r, ok in zip(samples, correct) if ok} - {None}))
    v["eval/len_words"] = sum(len(tokenize(t)) for t in texts) / n
    if all(r.get("num_tokens") is not None for r in samples):
        v["eval/len_tokens"] = sum(r["num_tokens"] for r in samples) / n
    if all(r.get("truncated") is not None for r in samples):
        v["eval/truncated"] = sum(bool(r["truncated"]) for r in samples) / n
    return v


def mean_values(per_problem: list[dict]) -> dict:
    """The mean over problems of each figure that every problem has (a benchmark's figure)."""
    names = [k for k in per_problem[0] if all(k in v for v in per_problem)] if per_problem else []
    return {k: sum(v[k] for v in per_problem) / len(per_problem) for k in names}
