"""eval.py -- Avg@k, Pass@k and diversity of LAD / GRPO checkpoints on math benchmarks, side by side.

(Work in progress: the metric functions below are final; loaders, generation, scoring and --compare
follow in the next commits.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

# ----------------------------------------------------------------------------------------------------
# METRICS (pure Python; imported by lad.py for periodic evaluation, so no torch/transformers here)
# ----------------------------------------------------------------------------------------------------


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
