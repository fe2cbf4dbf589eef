"""Tests for verifier.py: a table of (gold, prediction, expected) equivalences, one group per named rule
(both directions), answer extraction, hostile inputs against the time bound, proof that model text is
never evaluated, and the other graders (math-verify, verl's DAPO scorer) in the same bounded workers."""

from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT / ".." / "shared"

import verifier as V  # noqa: E402

T, F = True, False

# (README rule row = verifier._RULES name or a scalar reading, [(gold, prediction, expected), ...]).
# Every row is checked in both directions (equivalence is symmetric).
GROUPS = [
    ("integers, decimals", [  # integers and decimals
        ("1000", "1,000", T), ("1000", "1000.0", T), ("0.5", ".5", T), ("-3", "-3.0", T), ("12", "13", F),
        ("1,234", "1234", T), ("27.0", "27", T), ("033", "33", T), ("3.14", "3.140", T), ("0.1", "0.11", F),
        ("1000000", "1{,}000{,}000", T), ("1000", "1\\,000", T), ("7", "7.", T), ("-0", "0", T), ("2", "-2", F),
    ]),
    ("fractions", [  # fractions
        ("\\frac{1}{2}", "1/2", T), ("\\dfrac{3}{4}", "0.75", T), ("\\tfrac{2}{6}", "\\frac13", T),
        ("\\frac{2}{4}", "\\frac{1}{2}", T), ("\\frac{1}{3}", "0.33", F), ("\\frac{1}{3}", "0.3333333", T),
        ("-\\frac{1}{2}", "\\frac{-1}{2}", T), ("\\frac{1}{2}", "\\frac{2}{1}", F), ("\\frac{10}{4}", "2.5", T),
        ("\\frac{4}{9}", "4/9", T), ("\\frac{11}{18}", "\\frac{22}{36}", T), ("\\frac{1}{54}", "\\frac{1}{45}", F),
    ]),
    ("fractions", [  # mixed numbers
        ("3\\frac{1}{2}", "\\frac{7}{2}", T), ("3\\frac{1}{2}", "3.5", T), ("2\\frac{1}{3}", "\\frac{2}{3}", F),
    ]),
    ("percentages", [  # percentages
        ("50\\%", "50", T), ("50\\%", "0.5", T), ("50\\%", "\\frac12", T), ("25\\%", "25 percent", T),
        ("50\\%", "5", F), ("12.5\\%", "0.125", T), ("40\\%", "0.4\\%", F),
    ]),
    ("degrees", [  # degrees
        ("30^\\circ", "30", T), ("30^{\\circ}", "30 degrees", T), ("90^\\circ", "\\frac{\\pi}{2}", T),
        ("45^\\circ", "40^\\circ", F), ("\\frac{\\pi}{3}", "60°", T),
    ]),
    ("units, text wrappers, currency", [  # units and \text{...} / \mbox / \textnormal
        ("5\\text{ cm}", "5", T), ("5", "5 \\mbox{ meters}", T), ("12", "12 \\textnormal{ inches}", T),
        ("6.5 \\mathrm{~m}", "6.5", T), ("3", "3\\text{ apples}", T), ("10", "10 square units", T),
        ("5\\text{ cm}", "6", F), ("24", "24 \\text{ cm}^2", T),
    ]),
    ("units, text wrappers, currency", [  # currency
        ("\\$5.00", "5", T), ("\\$1,000", "1000", T), ("5", "5 dollars", T), ("\\$18.90", "18.9", T), ("\\$5", "\\$6", F),
    ]),
    ("scientific notation", [  # scientific notation
        ("4.5e33", "4.5 \\times 10^{33}", T), ("4.5\\times10^{33}", "45\\cdot 10^{32}", T), ("4.5e33", "4.6e33", F),
        ("1.4\\times10^{-3}", "0.0014", T), ("6.02e23", "6.02 \\times 10^{23}", T), ("1e-30", "2e-30", F),
        ("3\\times 10^{8}", "300000000", T), ("6.0221e23", "6.0221409e23", F), ("2.5E-4", "0.00025", T),
    ]),
    ("radicals, pi, logs, trig", [  # radicals and pi (exact symbolic equality; decimals within REL_TOL)
        ("3\\sqrt{13}", "\\sqrt{117}", T), ("2\\sqrt{2}", "\\sqrt{8}", T), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", T),
        ("\\sqrt{2}", "1.41421356237", T), ("\\sqrt{2}", "1.414", F), ("2\\pi", "6.28318530718", T),
        ("2\\pi", "6.28", F), ("\\pi", "3.14159265358979", T), ("\\sqrt[3]{8}", "2", T), ("\\sqrt{3}", "\\sqrt{2}", F),
        ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt{6}}", T), ("4\\pi^{2}-1", "4\\pi^2 - 1", T), ("\\pi", "\\pi+10^{-60}", F),
        ("\\sqrt{12}", "2\\sqrt3", T), ("\\frac{3\\sqrt{3}}{2}", "\\frac{\\sqrt{27}}{2}", T), ("3\\sqrt{13}", "3\\sqrt{31}", F),
    ]),
    ("complex numbers", [  # complex numbers
        ("3+4i", "4i+3", T), ("1+i", "1-i", F), ("\\frac{1+i}{2}", "0.5+0.5i", T), ("i", "\\sqrt{-1}", T),
        ("2i", "2\\mathrm{i}", T), ("-1", "e^{i\\pi}", T),
    ]),
    ("sets, lists", [  # sets
        ("\\{1,2,3\\}", "\\{3,2,1\\}", T), ("\\{1,2\\}", "\\{1,2,3\\}", F), ("\\{1,2\\}", "\\{2,1,1\\}", T),
        ("\\emptyset", "\\varnothing", T), ("\\{\\frac12, 2\\}", "\\{0.5, 2\\}", T), ("\\{1\\}", "\\emptyset", F),
    ]),
    ("tuples", [  # tuples (ordered)
        ("(1,2)", "(1,2)", T), ("(1,2)", "(2,1)", F), ("(1,2,3)", "(1,2)", F), ("(\\frac12, 3)", "(0.5,3)", T),
        ("(0,1,1)", "(0, 1, 1)", T),
    ]),
    ("sets, lists", [  # unordered comma-separated lists of solutions
        ("1,2,3", "3, 2, 1", T), ("-3,0", "0,-3", T), ("1,3,9,11", "1, 3, 9", F), ("100,\\frac{1}{100}", "\\frac{1}{100}, 100", T),
        ("2, 3", "2 \\text{ and } 3", T), ("2,3", "x=2 \\text{ or } x=3", T), ("64,\\frac{1}{4}", "0.25, 64", T),
    ]),
    ("intervals, unions", [  # intervals (open vs closed) and unions
        ("[0,1)", "[0,1)", T), ("[0,1)", "[0,1]", F), ("(0,1)", "[0,1]", F),
        ("(-\\infty,-5)\\cup(5,\\infty)", "(5,\\infty)\\cup(-\\infty,-5)", T), ("[1,2]\\cup[2,3]", "[1,3]", T),
        ("(-\\infty, 0]", "(-\\infty, 0)", F), ("(-\\infty,-5)", "(-\\infty,-5]", F), ("\\mathbb{R}", "(-\\infty,\\infty)", T),
    ]),
    ("inequalities", [  # inequalities vs interval notation
        ("x>5", "(5,\\infty)", T), ("x \\ge 5", "[5,\\infty)", T), ("x\\geq5", "(5,\\infty)", F), ("k \\geqslant 2", "[2,\\infty)", T),
        ("(-\\infty,-5)\\cup(5,\\infty)", "x<-5 \\text{ or } x>5", T), ("-2<x<3", "(-2,3)", T), ("x \\in [1,2]", "[1,2]", T),
        ("1 \\le x \\le 2", "[1,2]", T), ("x<3", "x \\le 3", F), ("(0,4]", "0<t\\le 4", T), ("(0,4]", "0<t<4", F),
        ("x > 1 \\text{ and } x < 3", "(1,3)", T),
    ]),
    ("equations", [  # equations
        ("11", "x = 11", T), ("11", "x=12", F), ("x+y=2", "2x+2y=4", T), ("x+y=2", "x-y=2", F), ("y=2x+1", "2x-y+1=0", T),
        ("y = 2x+1", "y=2x+2", F), ("(1,2)", "(x,y)=(1,2)", T), ("x^2-2x+2", "g(x)=x^2-2x+2", T), ("M=2^{N-2}+1", "2^{N-2}+1", T),
        ("x = 11", "11 = x", T), ("x^2+y^2=1", "2x^2+2y^2=2", T), ("x=3", "y=3", F),
    ]),
    ("+-", [  # +- expansions
        ("1\\pm\\sqrt{2}", "1+\\sqrt{2}, 1-\\sqrt{2}", T), ("\\pm 3", "3,-3", T), ("\\pm 3", "3", F), ("2\\pm i", "2+i, 2-i", T),
        ("\\frac{1\\pm\\sqrt5}{2}", "\\frac{1+\\sqrt5}{2}, \\frac{1-\\sqrt5}{2}", T),
    ]),
    ("matrices", [  # matrices
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", T),
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}", F),
        ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "(1,2)", T),
        ("\\begin{pmatrix} \\frac12 & 0 \\\\ 0 & 1\\end{pmatrix}", "\\begin{pmatrix}0.5&0\\\\0&1\\end{pmatrix}", T),
    ]),
    ("text, multiple choice", [  # text answers and multiple-choice letters
        ("\\text{(B)}", "B", T), ("\\text{(B)}", "(C)", F), ("B", "\\textbf{(B)} 42", T), ("C", "(C)", T),
        ("\\text{Yes}", "yes", T), ("\\text{Yes}", "No", F), ("\\text{odd}", "Odd", T), ("\\text{north}", "south", F),
        ("E", "(E) none of these", T), ("A", "(B)", F),
    ]),
    ("tiny and huge values", [  # very small / very large values: relative, never absolute, tolerance
        ("\\frac{1}{2^{99}}", "\\frac{1}{2^{98}}", F), ("\\frac{1}{2^{99}}", "2^{-99}", T), ("2^{100}", "1267650600228229401496703205376", T),
        ("2^{100}", "1267650600228229401496703205377", F), ("10^{-20}", "10^{-21}", F), ("1.0\\times10^{-20}", "1e-20", T),
        ("10^{100}", "10^{100}+1", F), ("1.5e-300", "1.5\\times 10^{-300}", T), ("2^{2023}", "2\\cdot 2^{2022}", T),
    ]),
    ("expressions with variables", [  # symbolic expressions
        ("\\frac{1}{4}n(n+1)", "\\frac{n(n+1)}{4}", T), ("\\frac{1}{4}n(n+1)", "\\frac{n(n+2)}{4}", F), ("(x+1)^2", "x^2+2x+1", T),
        ("2^{k-n}", "\\frac{2^k}{2^n}", T), ("\\frac{ab}{2}", "\\frac{a b}{2}", T), ("\\frac{d!}{2k(d-k)!}", "\\frac{d !}{2 k(d-k) !}", T),
        ("\\sin^2 x + \\cos^2 x", "1", T), ("\\log_2 8", "3", T), ("\\ln(e^2)", "2", T), ("3n", "n+n+n", T),
        ("a^2-b^2", "(a-b)(a+b)", T), ("a^2-b^2", "(a-b)^2", F), ("\\binom{5}{2}", "10", T), ("5!", "120", T), ("|-3|", "3", T),
        ("\\frac{\\sqrt{3}}{3}", "\\tan 30^\\circ", T), ("x_1+x_2", "x_2+x_1", T), ("x_1", "x_2", F),
        ("n!", "n(n-1)!", T), ("\\binom{n}{2}", "\\frac{n(n-1)}{2}", T), ("\\sqrt{x}", "x^{1/2}", T),
        ("|x|", "x", F), ("\\sqrt{x^2}", "x", F),  # identity on the whole (complex) domain, not only x > 0
        ("\\lceil 7/2 \\rceil", "4", T), ("\\lfloor 7/2 \\rfloor", "4", F), ("m_{\\max}=n^2-n-1", "n^2-n-1", T),
    ]),
    # the long tail (near-misses that must stay unequal next to each)
    ("numeric agreement is no proof", [
        ("1", "2^{2^{-90}}", F), ("1", "2^{2^{-30}}", F), ("2^{2^{-90}}", "2^{2^{-90}}", T), ("0,250", "250", F),
        ("0,250", "0, 250", T), ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt{6}}", T), ("e^{\\pi\\sqrt{163}}", "262537412640768744", F),
    ]),
    ("sets, lists", [  # "and" between equations, Oxford commas
        ("1, 3", "x = 1 \\text{ and } x = 3", T), ("1, 3", "x = 1 \\text{ and } x = 4", F), ("9, 5, 2", "2, 5, and 9", T),
        ("9, 5, 2", "2, 5, \\text{ and } 9", T), ("9, 5, 2", "2, 5, and 8", F), ("x=1, y=2", "y=2, x=1", T), ("x=1, y=2", "y=1, x=2", F),
    ]),
    ("+-", [  # in or against a set
        ("\\{1\\pm\\sqrt2, 4\\}", "1+\\sqrt2, 1-\\sqrt2, 4", T), ("\\{1\\pm\\sqrt2, 4\\}", "1+\\sqrt2, 4", F),
        ("\\pm 7", "\\{-7, 7\\}", T), ("\\pm 7", "\\{7\\}", F),
    ]),
    ("number forms", [
        ("12{, }345", "12345", T), ("12{, }345", "12346", F), ("2 1/3", "\\frac{7}{3}", T), ("2 1/3", "\\frac{2}{3}", F),
        ("-2 1/3", "-\\frac{7}{3}", T), ("101_2", "101_{2}", T), ("101_2", "101_{3}", F), ("101_2", "5", F),
        ("15\\%", "15 percent", T), ("15\\%", "15 pct", T), ("0.15", "15 pct", T), ("0.16", "15 percent", F), ("0.15", "15\\text{ percent}", T),
    ]),
    ("labels before the value", [
        ("|PQ| = 3", "3", T), ("|PQ| = 3", "4", F), ("\\frac{PQ}{QR} = \\frac{1}{3}", "\\frac13", T), ("\\frac{PQ}{QR} = \\frac{1}{3}", "3", F),
        ("S_{ABC}:S = 4:9", "4:9", T), ("S_{ABC}:S = 4:9", "9:4", F), ("x + y = 2", "2", F), ("2x = 6", "6", F),
    ]),
    ("ratios", [
        ("AB:BC = 2:5", "2:5", T), ("AB:BC = 2:5", "4:10", T), ("AB:BC = 2:5", "5:2", F), ("2:5", "\\frac{2}{5}", T), ("2:5", "\\frac{5}{2}", F),
    ]),
    ("equality chains", [
        ("12", "3 \\cdot 4 = 12", T), ("13", "3 \\cdot 4 = 13", F), ("x = 7", "x = 3+4 = 7", T), ("x = 8", "x = 3+4 = 8", F),
        ("7", "x = 3+4 = 7", T), ("x = 7", "x = 7 = 8", F),
    ]),
    ("inequalities", [  # on a function value
        ("(0, 2)", "0 < g(t) < 2", T), ("[0, 2)", "0 < g(t) < 2", F), ("(0, 2)", "0 < 2t < 2", F),
    ]),
    ("sums and products", [
        ("55", "\\sum_{k=1}^{10} k", T), ("56", "\\sum_{k=1}^{10} k", F), ("385", "\\sum_{k=1}^{10} k^2", T),
        ("\\frac{n(n+1)}{2}", "\\sum_{k=1}^{n} k", T), ("\\frac{n(n-1)}{2}", "\\sum_{k=1}^{n} k", F), ("6x", "\\sum_{i=1}^{3} i x", T),
        ("120", "\\prod_{k=1}^{5} k", T), ("24", "\\prod_{k=1}^{5} k", F),
    ]),
    ("systems (cases)", [
        ("\\begin{cases} x=1 \\\\ y=2 \\end{cases}", "\\begin{cases} y=2 \\\\ x=1 \\end{cases}", T),
        ("\\begin{cases} x=1 \\\\ y=2 \\end{cases}", "\\begin{cases} y=1 \\\\ x=2 \\end{cases}", F),
        ("\\begin{cases} x=1 \\\\ y=2 \\end{cases}", "x=1, y=2", T),
        ("\\begin{cases} x & x > 0 \\\\ -x & x \\le 0 \\end{cases}", "\\begin{cases} -x & x \\le 0 \\\\ x & x > 0 \\end{cases}", T),
        ("\\begin{cases} x & x > 0 \\\\ -x & x \\le 0 \\end{cases}", "\\begin{cases} x & x \\le 0 \\\\ -x & x > 0 \\end{cases}", F),
    ]),
    ("intervals, unions", [  # symbolic endpoints
        ("(a, b]", "(a, b]", T), ("(a, b]", "(a, b)", F), ("[0, 2a)", "[0, a+a)", T), ("(a, b]", "(b, a]", F), ("(a, b]", "x \\in (a, b]", T),
    ]),
    # the second long tail: physics notation, approximations, TeX spacing, clock times, labels (each with its near-misses)
    ("physics notation", [  # named symbols (\hbar, \ell), Greek letters in unicode, primes, accents
        ("2\\hbar", "\\hbar \\cdot 2", T), ("\\hbar", "h", F), ("\\frac{\\hbar^2}{2m}", "\\frac{\\hbar^{2}}{2 m}", T),
        ("\\frac{\\hbar}{2}", "\\frac{h}{2}", F), ("\\hbar\\omega", "ℏω", T), ("\\hbar\\omega", "\\hbar\\Omega", F), ("\\hbar", "\\hslash", T),
        ("\\ell(\\ell+1)\\hbar^2", "\\hbar^2\\ell^2 + \\hbar^2\\ell", T), ("\\ell(\\ell+1)\\hbar^2", "l(l+1)\\hbar^2", F),
        ("\\omega'", "\\omega^{\\prime}", T), ("\\omega'", "\\omega", F), ("y''", "y^{\\prime\\prime}", T), ("y''", "y'", F),
        ("x'_1", "x_1^{\\prime}", T), ("2x", "f'(x) = 2x", T), ("x^2", "f'(x) = 2x", F), ("f'(x) = 2x", "f(x) = 2x", F),
        ("\\epsilon_0 E", "E\\varepsilon_0", T), ("\\epsilon_0 E", "\\epsilon E", F), ("\\frac{k_B T}{m}", "\\frac{T k_{B}}{m}", T),
        ("m_e c^2", "m_p c^2", F), ("\\vec{v}", "\\overrightarrow{v}", T), ("\\vec{v}", "v", F), ("\\hat{x}", "\\vec x", F),
        ("m\\vec{a}", "\\vec{F} = m \\vec a", T), ("\\dot{x}", "x'", F),
    ]),
    ("approximation chains", [  # an exact value, \approx, and its decimal (rounded or truncated)
        ("\\frac13", "\\frac{1}{3} \\approx 0.333", T), ("\\frac13", "\\frac{1}{3} \\approx 0.9", F), ("\\frac13", "\\frac13 \\approx 0.3", T),
        ("\\frac23", "\\frac23 \\approx 0.667", T), ("\\frac23", "\\frac23 \\approx 0.666", T), ("\\frac23", "\\frac23 \\approx 0.668", F),
        ("2\\pi", "2\\pi \\approx 6.28", T), ("2\\pi", "2\\pi \\approx 6.29", F), ("x = \\sqrt2", "x = \\sqrt{2} \\approx 1.414", T),
        ("x = \\sqrt2", "x = \\sqrt{2} \\approx 1.5", F), ("\\frac{1}{4}", "\\frac{1}{3} \\approx 0.25", F), ("0.333", "\\frac13 \\approx 0.333", F),
        ("6 \\times 10^{23}", "6 \\times 10^{23} \\approx 6.0 \\times 10^{23}", T), ("-\\frac23", "-\\frac23 \\approx -0.67", T),
        ("\\frac{1}{3}, 2", "\\frac13 \\approx 0.33, 2", T), ("\\frac{1}{3}, 2", "\\frac13 \\approx 0.4, 2", F),
    ]),
    ("labels before the value", [  # one rule for gold and answer: a name before =, \approx or \equiv
        ("12", "ab=12", T), ("12", "abc = 12", T), ("12", "total=12", T), ("12", "\\text{total} = 12", T), ("13", "\\text{total} = 12", F),
        ("0.33", "P \\approx 0.33", T), ("0.34", "P \\approx 0.33", F), ("12", "N \\equiv 12", T), ("12", "\\text{total cost} \\approx 12", T),
        ("\\text{total} = 12", "\\text{sum} = 12", F), ("\\text{total} = 12", "\\text{total} = 12.0", T), ("5", "v_{\\max} = 5", T),
        ("3.14", "\\approx 3.14", T), ("x + y \\approx 2", "2", F), ("3", "abc = 3 + x", F),
    ]),
    ("TeX spacing", [  # control spaces (also trailing), \hspace, and {,} between digit groups
        ("42", "42\\ ", T), ("43", "42\\ ", F), ("3250", "3 {, }250", T), ("3250", "3{,} 250", T), ("32500", "3 {, }250", F),
        ("325", "3 {, }25", F), ("1000", "1\\hspace{1mm}000", T), ("5", "\\;5\\!", T), ("x+1", "x\\,+\\,1", T), ("x+1", "x\\ +\\ 2", F),
    ]),
    ("percentages", [  # percent in words
        ("15\\%", "15 percentage", T), ("15\\%", "15 percentage points", T), ("15\\%", "16 percentage", F),
        ("0.15", "15\\text{ percentage}", T), ("0.15", "1.5 percentage", F), ("15\\%", "15 per cent", T), ("15\\%", "15percent", T),
    ]),
    ("clock times", [  # h:mm with a leading-zero minute, h:mm:ss, a.m./p.m.; ratios stay ratios
        ("5:00", "7:00", F), ("5:00", "5:00", T), ("1:2", "2:4", T), ("1:2", "2:1", F), ("17:30", "5:30 \\text{ p.m.}", T),
        ("17:30", "5:30 pm", T), ("5:30\\text{ a.m.}", "5:30 pm", F), ("0:5", "0:7", F), ("10:00", "10:00:00", T), ("5:00", "5", F),
        ("12:00 \\text{ a.m.}", "0:00", T), ("12:00 \\text{ p.m.}", "0:00", F), ("3:10", "6:20", T), ("7:05", "7:50", F),
    ]),
]
CASES = [row for _, rows in GROUPS for row in rows]


def test_table_size_and_categories():
    assert len(CASES) >= 240
    assert sum(1 for *_, e in CASES if not e) >= 50  # plenty of negatives: a checker saying True always fails


@pytest.mark.parametrize("gold,pred,expected", CASES)
def test_equivalence_table_core(gold, pred, expected):
    """The verdict logic itself, in this process (no worker), both directions."""
    assert V._equal_core(pred, gold) is expected, (gold, pred)
    assert V._equal_core(gold, pred) is expected, (pred, gold)


def test_rules_docs_and_groups_match():
    """docs/verifier.md row -> verifier._RULES name -> test group: every rule name is a row of the docs'
    rule table and a group here, and every group here is a row of that table."""
    doc = (ROOT / "docs" / "verifier.md").read_text()
    section = doc[doc.index("## Equivalence rules"):doc.index("## The label rule")]
    rows = {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ") and "---" not in line}
    groups = {name for name, _ in GROUPS}
    rules = {name for name, _ in V._RULES} - {"identical"}
    assert rules <= rows, rules - rows
    assert groups <= rows, groups - rows
    assert rules - {"scalars"} <= groups, rules - groups


def test_equivalence_table_through_score_batch():
    """The same table end to end: boxed responses through the worker pool, both directions; no verdict
    raised inside the worker (pool_stats counts those as errors, by reason)."""
    errors = V.pool_stats()["errors"]
    responses, golds, expected = [], [], []
    for gold, pred, exp in CASES:
        for g, p in ((gold, pred), (pred, gold)):
            responses.append(f"Let me think step by step. ... Therefore the result is $\\boxed{{{p}}}$.")
            golds.append(g)
            expected.append(1.0 if exp else 0.0)
    got = V.score_batch(responses, golds, timeout=2.0)
    bad = [(g, r[-60:], e, x) for g, r, e, x in zip(golds, responses, expected, got) if e != x]
    assert not bad
    assert V.pool_stats()["errors"] == errors, V.pool_stats()["error_reasons"]


def test_math_equal_public_api():
    assert V.math_equal("0.5", "\\frac{1}{2}") is True
    assert V.math_equal("x = 11", "11") is True
    assert V.math_equal("\\frac{1}{2^{99}}", "\\frac{1}{2^{98}}") is False
    assert V.math_reward("so \\boxed{\\sqrt{117}}", "3\\sqrt{13}") == 1.0
    assert V.math_reward("no answer here", "3") == 0.0


# ----------------------------------------------------------------------------------------------------
# extraction
# ----------------------------------------------------------------------------------------------------

EXTRACTION = [
    ("The answer is \\boxed{42}.", "42"),
    ("First \\boxed{1}, then more work... final \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{5}. Wait, that is wrong. Redo: \\boxed{7}", "7"),  # self-correction: the last box wins
    ("The roots are \\boxed{2} and \\boxed{3}.", "2, 3"),  # multi-part: connectives only between boxes
    ("$\\boxed{1}$, $\\boxed{4}$", "1, 4"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("so \\boxed 5", "5"),
    ("\\fbox{x+1}", "x+1"),
    ("\\boxed{4} and then \\boxed{5", "4"),  # a truncated last box is not an answer
    ("no box. The final answer is $\\frac{3}{4}$. Thanks", "\\frac{3}{4}"),
    ("The answer is 5. Wait, no. The answer is 7.", "7"),
    ("Some work\n**Answer:** $42$", "42"),
    ("work\nAnswer: 3.5.", "3.5"),
    ("Final Answer: The final answer is $2\\sqrt{2}$. I hope it is correct.", "2\\sqrt{2}"),
    ("nothing to see", None),
    ("", None),
    ("\\boxed{}", None),
    ("\\boxed{" * 50 + "1", None),
]


@pytest.mark.parametrize("response,expected", EXTRACTION)
def test_extract_answer(response, expected):
    assert V.extract_answer(response) == expected


def test_extract_answer_is_linear_on_huge_input():
    big = "x" * 2_000_000 + "\\boxed{7}"
    t0 = time.perf_counter()
    assert V.extract_answer(big) == "7"
    assert V.extract_answer("\\boxed{" * 300_000) is None
    assert V.extract_answer("the answer is " * 100_000) is None or True
    assert time.perf_counter() - t0 < 2.0


def test_benchmark_golds():
    """Real benchmark data: AIME's "033"-style and AMC's float golds, Minerva's boxed solutions."""
    bench = SHARED / "data" / "bench"
    aime = [json.loads(line) for line in open(bench / "aime24.jsonl")]
    amc = [json.loads(line) for line in open(bench / "amc23.jsonl")]
    minerva = [json.loads(line) for line in open(bench / "minerva_math.jsonl")]
    responses = [f"\\boxed{{{int(r['answer'])}}}" for r in aime] + [f"\\boxed{{{int(r['answer'])}}}" for r in amc]
    golds = [str(r["answer"]) for r in aime] + [str(r["answer"]) for r in amc]
    assert V.score_batch(responses, golds) == [1.0] * len(golds)
    wrong = [f"\\boxed{{{int(r['answer']) + 1}}}" for r in aime + amc]
    assert V.score_batch(wrong, golds) == [0.0] * len(golds)
    answers = [V.extract_answer(r["solution"]) for r in minerva]
    assert all(a for a in answers), sum(a is None for a in answers)
    # a Minerva gold given as the whole solution is reduced to its last box
    assert V.math_reward(f"\\boxed{{{answers[0]}}}", minerva[0]["solution"]) == 1.0
    # OlympiadBench: every gold parses or is prose, and no gold matches another problem's (different) gold
    olymp = [json.loads(line) for line in open(bench / "olympiadbench.jsonl")]
    golds = [", ".join(r["final_answer"]) for r in olymp]
    norms = [V._normalize(g) for g in golds]
    unparsed = [g for g, n in zip(golds, norms) if not V._is_text(n) and V._parse(n) is None]
    assert len(unparsed) <= 2, unparsed
    pairs = [(i, (i + k) % len(golds)) for i in range(len(golds)) for k in (1, 7, 50) if norms[i] != norms[(i + k) % len(golds)]]
    got = V.score_batch([f"\\boxed{{{golds[i]}}}" for i, _ in pairs], [golds[j] for _, j in pairs])
    assert [(golds[i], golds[j]) for (i, j), r in zip(pairs, got) if r] == []


# ----------------------------------------------------------------------------------------------------
# safety: no evaluation of model text, bounded time, never raises
# ----------------------------------------------------------------------------------------------------

FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "sympify", "parse_expr", "lambdify", "parse_latex", "S"}


def test_source_never_evaluates_text():
    """Safe by construction: no call of eval/exec/compile/sympify/parse_expr/lambdify in verifier.py."""
    tree = ast.parse((ROOT / "verifier.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "re":
                continue  # re.compile compiles a regular expression, not code
            assert name not in FORBIDDEN_CALLS, f"line {node.lineno}: {name}(...)"


def test_code_injection_strings_do_not_run(tmp_path):
    marker = tmp_path / "pwned"
    m = str(marker)
    payloads = [
        f"__import__('pathlib').Path('{m}').touch()",
        f"__import__('os').system('touch {m}')",
        f"eval(\"__import__('os').system('touch {m}')\")",
        f"exec(\"open('{m}','w')\")",
        "().__class__.__bases__[0].__subclasses__()",
        f"[c for c in ().__class__.__base__.__subclasses__() if c.__name__=='Popen'][0](['touch','{m}'])",
        f"\\boxed{{__import__('os').system('touch {m}')}}",
        f"lambda: open('{m}', 'w')",
        f"Symbol('x').__class__.__init__.__globals__['os'].system('touch {m}')",
    ]
    for p in payloads:
        for g in (p, "1", "x"):
            assert V._equal_core(p, g) in (True, False)  # in this process
        V.math_equal(p, "1")
        V.math_reward(p, p)
    V.score_batch(payloads, payloads)
    assert not marker.exists()


HOSTILE = [
    "9^{9^{9^9}}", "(x+1)^{100000}", "100000!", "{" * 5000 + "1" + "}" * 5000, "(" * 5000 + "1" + ")" * 5000,
    "x" * 2_000_000, "\x00\ud800 1\udfff", "1/0", "0/0", "\\boxed{" * 100_000, "2^{2^{2^{2^{2^{2^{2}}}}}}",
    "10^{10^{10}}", "\\sqrt{" * 3000, "1" * 100_000, "e^{e^{e^{100}}}", "\\frac{1}{" * 2000, "(x+1)^{100000}-(x+1)^{99999}",
    "\\begin{pmatrix}" * 500, "|" * 10000, "\\left(" * 10000, "x^{x^{x^{x^{x^{x}}}}}", "((x+1)^{60}+(y+2)^{60})^{60}",
]
HOSTILE_GOLDS = ["1", "(x+1)^{99999}(x+1)", "100000!", "1", "1", "x", "1", "1", "0", "1", "2", "10^{10^{10}}", "1", "1",
                 "1", "1", "x(x+1)^{99999}", "1", "1", "1", "x", "((x+1)^{60}+(y+2)^{60})^{61}"]


def test_hostile_inputs_are_bounded():
    timeout = 1.0
    responses = [f"\\boxed{{{h}}}" if len(h) < 10_000 else h for h in HOSTILE]
    t0 = time.perf_counter()
    got = V.score_batch(responses, HOSTILE_GOLDS, timeout=timeout, workers=2)
    assert time.perf_counter() - t0 < 40  # includes replacement workers' start-up, if any
    assert all(x in (0.0, 1.0) for x in got)
    assert got[1] == 1.0 and got[2] == 1.0 and got[16] == 1.0  # identities that are cheap to prove
    assert got[7] == 0.0 and got[8] == 0.0  # 1/0 and 0/0 equal nothing but themselves
    # one by one: each verdict returns within timeout + 0.1 s (warm pool)
    V.math_equal("1", "1")
    for h, g in zip(HOSTILE, HOSTILE_GOLDS):
        for a, b in ((h, g), (g, h)):
            t1 = time.perf_counter()
            r = V.math_equal(a, b, timeout=timeout)
            dt = time.perf_counter() - t1
            assert r in (True, False)
            assert dt <= timeout + 0.1 or V.pool_stats()["kills"] > 0, (a[:40], dt)


# A test-only worker: the real worker (verifier._serve) with its grader wrapped, so that marker
# responses make the grader hang in Python code (the worker's soft timer stops it), hang inside C code
# (no signal interrupts it: only the parent's kill does), raise, or kill the worker process; any other
# response goes to the real grader (ours, math-verify or verl's DAPO scorer).
HANG_PY, HANG_C, RAISE, CRASH = "<hang in Python>", "<hang in C>", "<grader raises>", "<worker crash>"


def _hanging_worker_argv(grader):
    code = f"""
import itertools, os, sys
sys.path.insert(0, {str(ROOT)!r})
import verifier
real = verifier._GRADERS[{grader!r}]
def grade(response, gold):
    if response == {HANG_PY!r}:
        while True:
            pass
    if response == {HANG_C!r}:
        return float(sum(itertools.repeat(1, 10 ** 13)))
    if response == {RAISE!r}:
        raise KeyError(response)
    if response == {CRASH!r}:
        os._exit(3)
    return real(response, gold)
verifier._GRADERS[{grader!r}] = grade
verifier._serve({grader!r})
"""
    return [sys.executable, "-I", "-c", code]


@pytest.fixture
def hanging_pool(monkeypatch):
    """A private pool (of the given grader) whose workers hang or crash on the marker responses."""
    monkeypatch.setattr(V, "_worker_argv", _hanging_worker_argv)
    pools = []

    def make(grader="ours"):
        pools.append(V._Pool(grader))
        return pools[-1]

    yield make
    for p in pools:
        p.close()


def test_hung_worker_is_killed_and_replaced(hanging_pool):
    """A verdict stuck in C code (no signal can interrupt it) is killed at the bound; the pool recovers."""
    pool = hanging_pool()
    assert pool.run([(0, "equal", "1", "1")], 1.0, 1) == [1.0]  # warm
    t0 = time.perf_counter()
    got = pool.run([(0, "reward", HANG_C, "1"), (1, "equal", "2", "2.0")], 0.5, 1)
    assert got == [0.0, 1.0]
    assert pool.stats["kills"] == 1
    assert pool.stats["max_latency_s"] <= 0.5 + 0.1 or time.perf_counter() - t0 < 30
    # a Python-level hang is stopped by the worker's own soft timer (no restart needed)
    t1 = time.perf_counter()
    assert pool.run([(0, "reward", HANG_PY, "1")], 0.5, 1) == [0.0]
    assert time.perf_counter() - t1 <= 0.5 + 0.1
    assert pool.stats["soft_timeouts"] == 1 and pool.stats["kills"] == 1
    # a worker that dies mid-batch: that verdict scores 0, the rest of the batch is still scored
    assert pool.run([(0, "reward", CRASH, "1"), (1, "reward", "\\boxed{3}", "3")], 1.0, 1) == [0.0, 1.0]
    assert pool.stats["kills"] == 2
    # a grader that raises: 0, counted by reason, the worker stays
    assert pool.run([(0, "reward", RAISE, "1"), (1, "reward", "\\boxed{3}", "3")], 1.0, 1) == [0.0, 1.0]
    assert pool.stats["errors"] == 1 and pool.stats["error_reasons"] == {"error: KeyError": 1} and pool.stats["kills"] == 2


def test_timeout_works_off_the_main_thread(hanging_pool):
    pool = hanging_pool()
    pool.run([(0, "equal", "1", "1")], 1.0, 1)  # warm
    out = []

    def work():
        t0 = time.perf_counter()
        out.append((pool.run([(0, "reward", HANG_C, "1")], 0.4, 1), time.perf_counter() - t0))
        out.append(V.math_equal("3\\sqrt{13}", "\\sqrt{117}"))

    th = threading.Thread(target=work)
    th.start()
    th.join(60)
    assert out[0][0] == [0.0] and out[0][1] <= 0.4 + 0.1
    assert out[1] is True


def test_never_raises_on_str_and_typeerror_otherwise():
    rng = random.Random(0)
    atoms = ["\\frac{", "}", "{", "(", ")", "[", "]", "\\sqrt", "^", "_", "x", "1", "0", "-", "+", "/", "\\pi", "=",
             "<", "\\le", ",", "\\{", "\\}", "i", "e", "%", "\\circ", "!", "|", "\\text{", "\\pm", "&", "\\\\",
             "\\begin{pmatrix}", "\\end{pmatrix}", "\\begin{cases}", "\\end{cases}", "\\sum_{k=", "\\prod_{", "k", ":", ".", " ", "\\infty", "\\cup", "\x00", "\ud800", "é", "$", "\\boxed{"]
    strings = ["".join(rng.choice(atoms) for _ in range(rng.randint(0, 25))) for _ in range(300)]
    for s in strings:
        V.extract_answer(s)
        assert V._equal_core(s, strings[0]) in (True, False)
    got = V.score_batch(strings, strings[::-1])
    assert all(x in (0.0, 1.0) for x in got)
    for bad in (None, 1, 1.5, b"1", ["1"]):
        with pytest.raises(TypeError):
            V.math_equal(bad, "1")
        with pytest.raises(TypeError):
            V.math_equal("1", bad)
        with pytest.raises(TypeError):
            V.extract_answer(bad)
        with pytest.raises(TypeError):
            V.math_reward(bad, "1")
        with pytest.raises(TypeError):
            V.score_batch([bad], ["1"])
    with pytest.raises(TypeError):
        V.score_batch("abc", "abc")
    with pytest.raises(ValueError):
        V.score_batch(["1"], ["1", "2"])
    with pytest.raises(ValueError, match="grader"):
        V.score_batch(["1"], ["1"], grader="nope")


def test_long_tail_syntax_never_raises():
    """Random strings of the long tail's notation (primes, \\approx, clock times, named symbols, TeX
    spacing): every verdict is a bool, and none raised inside the workers."""
    rng = random.Random(1)
    atoms = ["'", "\\prime", "^{\\prime}", "\\approx", "≈", "\\equiv", "=", "\\hbar", "ℏ", "ω", "\\ell", "\\vec{",
             "\\hat", "}", "{", "(", ")", ":", "05", "5", "12", "p.m.", " pm", "\\text{ a.m.}", "{,}", "{, }", "\\ ",
             "\\", "percentage", "\\hspace{1em}", "\\phantom{x}", "x", "f", "0.3", "\\frac{1}{3}", "_", "abc", "\\text{total}", " "]
    strings = ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 12))) for _ in range(400)]
    for s in strings:
        assert V._equal_core(s, strings[0]) in (True, False)
        assert V._equal_core("5:00", s) in (True, False)
    errors = V.pool_stats()["errors"]
    got = V.score_batch([f"\\boxed{{{s}}}" for s in strings], strings[::-1])
    assert all(x in (0.0, 1.0) for x in got)
    assert V.pool_stats()["errors"] == errors, V.pool_stats()["error_reasons"]


# ----------------------------------------------------------------------------------------------------
# the other graders: HuggingFace's math-verify and verl's DAPO scorer, in the same bounded workers
# ----------------------------------------------------------------------------------------------------

HAVE_VERL = V._dapo_path() is not None
needs_verl = pytest.mark.skipif(not HAVE_VERL, reason="verl is not installed (pip install --no-deps verl==0.9.1)")
GRADER_PARAMS = ["ours", "math-verify", pytest.param("dapo", marks=needs_verl)]

# (response, gold, rewards of ours, math-verify, dapo); rows where they disagree show what each reads
GRADER_CASES = [
    ("so the answer is \\boxed{34}", "34", (1, 1, 1)),
    ("Answer: 34", "34", (1, 1, 1)),
    ("Answer: 35", "34", (0, 0, 0)),
    ("so \\boxed{0.5}", "\\frac{1}{2}", (1, 1, 0)),                     # DAPO compares normalised strings
    ("Answer: 1,000", "1000", (1, 1, 1)),
    ("so \\boxed{1,000}", "1000", (1, 1, 0)),                            # DAPO's \boxed fallback: the raw string
    ("\\boxed{\\frac{1}{2^{98}}}", "\\frac{1}{2^{99}}", (0, 1, 0)),         # math-verify: 6 digits, absolute
    ("\\boxed{4.5 \\times 10^{33}}", "4.5e33", (1, 0, 0)),
    ("\\boxed{5}. Wait, that is wrong. Redo: \\boxed{7}", "7", (1, 0, 1)),  # math-verify takes the first box
    ("\\boxed{1 < x \\le 3}", "(1,3]", (1, 0, 0)),
    ("\\boxed{5:00}", "7:00", (0, 0, 0)),
]


@pytest.mark.parametrize("grader", GRADER_PARAMS)
def test_graders_on_a_table(grader):
    k = V.GRADERS.index(grader)
    got = V.score_batch([r for r, _, _ in GRADER_CASES], [g for _, g, _ in GRADER_CASES], grader=grader, timeout=2.0)
    assert got == [float(e[k]) for *_, e in GRADER_CASES], [(r[-30:], g) for (r, g, e), x in zip(GRADER_CASES, got) if x != e[k]]
    assert V.math_reward(GRADER_CASES[0][0], GRADER_CASES[0][1], grader=grader) == 1.0


def test_math_verify_hostile_inputs_are_bounded():
    """math-verify's own timeouts are off in our workers; ours bound it: 9^{9^{9^9}} runs in Python
    (the soft timer stops it), 100,000 nested boxes keep it in C (the parent kills the worker)."""
    V.score_batch(["\\boxed{1}"], ["1"], grader="math-verify", workers=1)  # warm
    before = V.pool_stats()
    for response in ("\\boxed{9^{9^{9^9}}}", "\\boxed{" * 100_000):
        t0 = time.perf_counter()
        assert V.score_batch([response], ["1"], grader="math-verify", workers=1, timeout=0.5) == [0.0]
        assert time.perf_counter() - t0 <= 0.5 + 0.2  # the bound, plus starting a replacement after a kill
    after = V.pool_stats()
    assert after["soft_timeouts"] + after["kills"] >= before["soft_timeouts"] + before["kills"] + 2
    assert V.score_batch(["\\boxed{2}"], ["2"], grader="math-verify", workers=1) == [1.0]  # the pool recovered


@pytest.mark.parametrize("grader", GRADER_PARAMS[1:])
def test_external_grader_hang_crash_and_error_score_zero(hanging_pool, grader):
    """An external grader that hangs (in Python or in C), raises or kills its worker: that sample
    scores 0 within the time bound, never an exception or a hang; the others are scored."""
    pool = hanging_pool(grader)
    items = [(0, "reward", HANG_C, "1"), (1, "reward", "Answer: 3", "3"), (2, "reward", HANG_PY, "1"),
             (3, "reward", RAISE, "1"), (4, "reward", CRASH, "1"), (5, "reward", "Answer: 4", "4")]
    t0 = time.perf_counter()
    assert pool.run(items, 0.5, 1) == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert pool.stats["kills"] == 2 and pool.stats["soft_timeouts"] == 1 and pool.stats["errors"] == 1
    assert pool.stats["max_latency_s"] <= 0.5 + 0.1
    assert time.perf_counter() - t0 < 60  # includes two replacement workers' start-up


def test_grader_argument_errors(monkeypatch):
    with pytest.raises(ValueError, match="grader"):
        V.math_reward("\\boxed{1}", "1", grader="nope")
    monkeypatch.setattr(V, "_dapo_path", lambda: None)
    with pytest.raises(ImportError, match="verl"):
        V.score_batch(["Answer: 1"], ["1"], grader="dapo")


def test_cli_scores_one_response():
    out = subprocess.run([sys.executable, str(ROOT / "verifier.py"), "--gold", "\\frac{1}{2}", "--response",
                          "so \\boxed{0.5}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "reward: 1.0" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, str(ROOT / "verifier.py"), "--grader", "nope"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "grader" in out.stderr
