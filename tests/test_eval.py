"""Tests for eval.py: metrics against brute force and hand-computed values, loaders on the real
benchmark files, scoring of a synthetic generations file, and --compare."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eval as ev  # noqa: E402


# ----------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------


def brute_pass_at_k(n, c, k):
    """Fraction of k-subsets of n samples (c correct) that contain at least one correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_subset_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert ev.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_known_values_and_stability():
    assert ev.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert ev.pass_at_k(4, 1, 2) == pytest.approx(0.5)          # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert ev.pass_at_k(10, 0, 5) == 0.0
    assert ev.pass_at_k(10, 6, 5) == 1.0                        # n - c < k
    # large n: the binomials overflow a float, the product form does not
    big = ev.pass_at_k(2000, 3, 1000)
    exact = 1 - math.comb(1997, 1000) / math.comb(2000, 1000)
    assert big == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(4, 1, 5), (4, 5, 2), (4, -1, 2), (4, 1, 0)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        ev.pass_at_k(n, c, k)


def test_avg_at_k_hand_computed():
    assert ev.avg_at_k([1, 0, 0, 1]) == 0.5
    assert ev.avg_at_k([1.0, 1.0, 1.0]) == 1.0
    # per-problem means (0.5 and 1/3) averaged with equal weight, not pooled (3/7)
    assert ev.avg_at_k([[1, 0, 1, 0], [0, 1, 0]]) == pytest.approx((0.5 + 1 / 3) / 2)
    with pytest.raises(ValueError):
        ev.avg_at_k([])


def test_distinct_n_hand_computed():
    texts = ["the cat sat", "the cat ran"]
    # unigrams: the cat sat the cat ran -> 4 distinct / 6
    assert ev.distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat)(cat sat)(the cat)(cat ran) -> 3 distinct / 4
    assert ev.distinct_n(texts, 2) == pytest.approx(3 / 4)
    # trigrams never cross texts: 2 distinct / 2
    assert ev.distinct_n(texts, 3) == 1.0
    assert ev.distinct_n(texts, 4) == 0.0                       # no 4-grams at all
    assert ev.distinct_n(["a a a a"], 2) == pytest.approx(1 / 3)


def test_distinct_n_tokenisation_splits_symbols():
    assert ev.tokenize("3+5+9") == ["3", "+", "5", "+", "9"]
    assert ev.tokenize("x^2 = 17, so") == ["x", "^", "2", "=", "17", ",", "so"]
    # "3+5+9" and "9+5+3": tokens 3 + 5 + 9 9 + 5 + 3 -> distinct {3,+,5,9} = 4 / 10
    assert ev.distinct_n(["3+5+9", "9+5+3"], 1) == pytest.approx(4 / 10)
    with pytest.raises(TypeError):
        ev.distinct_n("one string", 1)


def test_metrics_import_is_light():
    """lad.py imports the metrics during training: eval.py must not pull torch/transformers at import."""
    import subprocess
    code = "import sys, eval; bad = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
