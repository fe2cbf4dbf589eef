"""verifier.py -- the math-answer verifier: the 0/1 reward of RLVR on math (it executes no code).

In RLVR the verifier *is* the reward (paper Sec. 2: R(x, y) in {0, 1} from a rule-based checker; the
advantage A(x, y) of Eq. 8 is built from it). A wrong verdict trains the model toward wrong answers, a
hang stalls every rank, and a checker that evals model text lets the model run code on the trainer.
So this file is:

- correct: its own LaTeX/plain-math parser feeds exact rational arithmetic first, then a numeric
  identity test (mpmath, random points), then sympy to *prove* equality of symbolic answers; every
  rule and tolerance is listed in docs/verifier.md and tested in tests/test_verifier.py;
- safe by construction: model text is tokenised and parsed by a whitelist grammar into plain tuples;
  sympy only ever sees objects built from those tuples by explicit constructors (no eval, exec,
  sympify, parse_expr or lambdify anywhere in this file);
- bounded in time: every verdict runs in a persistent worker process (`python -I`, memory-capped)
  with a soft per-verdict timer inside the worker and a hard kill-and-replace by the parent, so the
  bound holds from any thread and any process (signal.alarm alone does not);
- fast: exact arithmetic with Python ints/Fractions decides the common answers (integers, fractions,
  decimals) in tens of microseconds; sympy is only reached for symbolic answers that agree numerically;
- comparable: other papers' numbers come from other graders, so score_batch can also grade with
  HuggingFace's math-verify or verl's DAPO scorer, in the same time-bounded workers.

Public API
    extract_answer(response) -> str | None          final answer of a response (last \\boxed{...}, fallbacks)
    math_equal(pred, gold, *, timeout=1.0) -> bool   equivalence of two answer strings (ours)
    math_reward(response, gold, *, timeout=1.0, grader="ours") -> float       1.0 / 0.0
    score_batch(responses, golds, *, workers=None, timeout=1.0, grader="ours") -> list[float]
    GRADERS = ("ours", "math-verify", "dapo"); DEFAULT_TIMEOUT; pool_stats() -> dict (kills, latency)

Commands
    python verifier.py --gold '\\frac{1}{2}' --response 'so the answer is \\boxed{0.5}'
    python verifier.py --grader dapo --gold 34 --response 'Answer: 34'
    python -m pytest -q tests/test_verifier.py
    python bench/verifier_speed.py            # throughput and worst-case latency (vs math-verify)
    (CPU only; there is nothing to run on a GPU, and with torchrun every rank has its own worker pool.)

Deliberately left out
    - running code: code rewards are sandbox.py's; the built-in tasks' rewards live with the tasks;
    - model-based (LLM-as-judge) verification and partial credit: rewards are 0/1;
    - solving equations or simplifying with assumptions (e.g. sqrt(x^2) = |x|): equivalence is
      identity of expressions, sets and relations, not "same solution set of an arbitrary equation";
    - unit conversion (1 m vs 100 cm) and physical-constant values (\\hbar is a name, not 1.05e-34).
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import json
import math
import os
import pickle
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import unicodedata
import zlib
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from common import cores_per_rank, parse_args


GRADERS = ("ours", "math-verify", "dapo")
"""Who judges a response (docs/verifier.md, "Graders"): this file's rules, HuggingFace's math-verify,
or the scorer of verl's DAPO recipe (verl.utils.reward_score.math_dapo)."""


@dataclass
class Args:
    """Command line of `python verifier.py`: score one response against one gold answer."""

    CHOICES = {"grader": list(GRADERS)}

    gold: str = "\\frac{1}{2}"
    """gold answer (an answer string, or a worked solution whose last box is the answer)"""
    response: str = "The answer is \\boxed{0.5}."
    """model response (full text; the final answer is extracted)"""
    grader: str = "ours"
    """who judges: ours | math-verify | dapo (docs/verifier.md, "Graders")"""
    timeout: float = 1.0
    """seconds per verdict (hard bound)"""


# ----------------------------------------------------------------------------------------------------
# Limits and tolerances (docs/verifier.md lists each with its reason)
# ----------------------------------------------------------------------------------------------------

DEFAULT_TIMEOUT = 1.0
"""Seconds per math verdict. The parent kills a worker at timeout + KILL_GRACE; the worker's own soft
timer fires at SOFT_FRACTION * timeout so that the common timeout costs no process restart."""
KILL_GRACE = 0.05
SOFT_FRACTION = 0.8
REL_TOL = 1e-6
"""Relative tolerance, used only when a side contains a decimal literal (an approximation): then
|a - b| <= REL_TOL * max(|a|, |b|). Exact answers (integers, fractions, radicals, pi) must be exactly
equal. There is no absolute tolerance: 1/2^99 != 1/2^98 and 1e-30 != 2e-30."""
NUMERIC_DPS = 40
"""Decimal digits of the numeric identity test (mpmath)."""
NUMERIC_REL = 1e-25
"""Two expressions agree numerically when |a - b| <= NUMERIC_REL * max(|a|, |b|) at every test point."""
N_POINTS = 3
"""Random points per numeric identity test (expressions with variables)."""
MAX_ANSWER_CHARS = 1000
"""Longer extracted answers are compared as normalised strings only (never parsed)."""
MAX_TOKENS = 400
MAX_DEPTH = 60
"""Parser limits: more tokens or deeper nesting than this is compared as a string."""
MAX_EXACT_BITS = 50_000
"""Exact integer/rational results larger than this (bits) are not computed exactly."""
MAX_LOG2_MAGNITUDE = 1e7
"""Numeric evaluation refuses values beyond 2^(+-1e7) (e.g. 9^{9^{9^9}})."""
MAX_FACTORIAL = 2000
"""Largest n for which n! / binomials are computed exactly (and handed to sympy)."""
MAX_EXPAND_POWER = 64
"""sympy.expand is skipped when a power has a larger integer exponent ((x+1)^{100000})."""
WORKER_MEMORY_BYTES = 4 << 30
"""Address-space limit of a math worker process (sympy on hostile input fails with MemoryError)."""
TAIL_CHARS = 4000
"""Fallback extraction (no \\boxed) only looks at the last TAIL_CHARS characters of a response."""


class _NotExact(Exception):
    """The exact (rational) evaluator cannot represent this value."""


class _TooBig(Exception):
    """A value or a computation exceeds the limits above."""


class _Undefined(Exception):
    """Division by zero, 0^negative, and the like."""


class _ParseError(Exception):
    pass


class _Symbolic(_NotExact):
    """A \\sum / \\prod with a symbolic bound: only sympy can decide it."""


class _SoftTimeout(BaseException):
    """Raised by the worker's interval timer; BaseException so that library code cannot swallow it."""


def _check_str(name, value):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")


_SURROGATES = re.compile("[\ud800-\udfff]")


def _sanitize(s: str) -> str:
    """Drop NUL bytes and lone surrogates (they cannot be encoded, and mean nothing in an answer)."""
    if "\x00" in s:
        s = s.replace("\x00", "")
    return _SURROGATES.sub("", s)


# ----------------------------------------------------------------------------------------------------
# Answer extraction
#
# Rule: the last complete \boxed{...} / \fbox{...} (balanced braces; "\boxed 5" too). Multi-part: boxes
# that immediately precede it, separated only by connectives (commas, semicolons, "and", "or", \quad,
# $, \( \), \[ \]), form one answer, joined with ", " (e.g. "\boxed{2} and \boxed{3}" -> "2, 3"). Any other text
# between two boxes (e.g. "wait, that is wrong") means the last box is a correction and wins alone.
# Without a box: the latest of "final answer is X" / "the answer is X" / a last line "Answer: X".
# ----------------------------------------------------------------------------------------------------

_BOX_NAMES = ("\\boxed", "\\fbox")
_GAP_RE = re.compile(r"(?:\s|,|;|\$|\.|&|\\[()\[\]]|\\quad|\\qquad|\\[,;:!]|\\text\{\s*(?:and|or|,)?\s*\}|\band\b|\bor\b)*")
_MAX_BOX_SCAN = 20_000
_MAX_BOXES = 16


def _box_at(text: str, start: int, name: str):
    """(content, end) of the box starting at `start`, or None when it is not complete."""
    j = start + len(name)
    n = len(text)
    if j < n and text[j].isalpha():  # e.g. \boxedfoo
        return None
    while j < n and text[j] in " \t":
        j += 1
    if j >= n:
        return None
    if text[j] != "{":
        m = re.compile(r"[^\s$]+").match(text, j)
        return (m.group(0), m.end()) if m else None
    depth = 0
    k = j
    stop = min(n, j + _MAX_BOX_SCAN)
    while k < stop:
        c = text[k]
        if c == "\\":
            k += 2  # \{ and \} are literal braces, not grouping
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[j + 1 : k], k + 1
        k += 1
    return None


def _last_box_start(text: str, end: int) -> tuple[int, str]:
    best, best_name = -1, ""
    for name in _BOX_NAMES:
        p = text.rfind(name, 0, end)
        if p > best:
            best, best_name = p, name
    return best, best_name


def _strip_answer(ans: str) -> str:
    """Markdown bold, $...$ / \\(...\\) delimiters and a sentence period around a fallback answer."""
    ans = ans.strip().strip("*").strip()
    ans = re.sub(r"^\\[(\[]|\\[)\]]$", "", ans).strip().strip("$").strip()
    return ans.rstrip(".").strip()


_FALLBACKS = (
    re.compile(r"final answer\s*(?:is|:|=)\s*[:：]?\s*(?=([^\n]{1,300}))", re.I),  # lookahead: overlapping
    re.compile(r"\bthe answer is\s*[:：]?\s*(?=([^\n]{1,300}))", re.I),
)
_ANSWER_LINE = re.compile(r"^[\s*#>_]*answer[\s*_]*[:：]\s*(.{1,300})$", re.I)
_SENTENCE_END = re.compile(r"\.(?=\s|$)")  # a decimal point is followed by a digit, never by a space


def _cut_sentence(s: str) -> str:
    m = _SENTENCE_END.search(s)
    return s[: m.start()] if m else s


def extract_answer(response: str) -> str | None:
    """The final answer stated in `response` (rules in the section comment above); None if none.

    Linear in len(response) and bounded: at most _MAX_BOXES boxes are examined, each scanned at most
    _MAX_BOX_SCAN characters; fallbacks only search the last TAIL_CHARS characters.
    """
    _check_str("response", response)
    text = _sanitize(response)
    end = len(text)
    tries = 0
    last = None
    while tries < _MAX_BOXES:
        tries += 1
        start, name = _last_box_start(text, end)
        if start < 0:
            break
        got = _box_at(text, start, name)
        if got is None:  # unclosed (truncated) box: look at the previous one
            end = start
            continue
        last = (start, got[0])
        break
    if last is not None:
        parts = [last[1].strip()]
        start = last[0]
        while tries < _MAX_BOXES:
            tries += 1
            prev, name = _last_box_start(text, start)
            if prev < 0:
                break
            got = _box_at(text, prev, name)
            if got is None or got[1] > start:
                break
            gap = text[got[1] : start]
            if len(gap) > 40 or _GAP_RE.fullmatch(gap) is None:
                break
            parts.append(got[0].strip())
            start = prev
        parts = [p for p in reversed(parts) if p]
        return ", ".join(parts) if parts else None
    # no box: the latest fallback wins (self-corrections come later in the text)
    tail = text[-TAIL_CHARS:]
    best_pos, best = -1, None
    for rx in _FALLBACKS:
        for m in rx.finditer(tail):
            if m.start() > best_pos:
                best_pos, best = m.start(), _cut_sentence(m.group(1))
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    if lines:
        m = _ANSWER_LINE.match(lines[-1])
        if m and len(tail) - len(lines[-1]) >= best_pos:
            best = m.group(1)
    if best is None:
        return None
    best = _strip_answer(best)
    return best or None


# ----------------------------------------------------------------------------------------------------
# Normalisation: LaTeX and plain-text answers -> one canonical character stream for the tokenizer
# ----------------------------------------------------------------------------------------------------

_UNICODE = {
    "−": "-", "–": "-", "—": "-", "×": "*", "·": "*", "⋅": "*", "÷": "/", "≤": "<=", "≥": ">=",
    "≠": "!=", "∞": "\\infty ", "π": "\\pi ", "√": "\\sqrt", "°": "°", "∪": "\\cup ", "∩": "\\cap ",
    "±": "\\pm ", "∓": "\\mp ", "∈": "\\in ", "∅": "\\emptyset ", "＝": "=", "，": ",", "：": ":",
    "≃": "≈", "′": "'", "″": "''", "‴": "'''", "ℏ": "\\hbar ", "ℓ": "\\ell ",
}
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda",
    "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega",
    "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega",
}
for _name in _GREEK:  # the Greek letters themselves: ω -> \omega (unicode spells lambda LAMDA)
    _case = "CAPITAL" if _name[0].isupper() else "SMALL"
    _UNICODE[unicodedata.lookup(f"GREEK {_case} LETTER {_name.upper().replace('LAMBDA', 'LAMDA')}")] = f"\\{_name} "
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_SIMPLE_CMDS = [
    (r"\\[dtc]frac", "\\frac"), (r"\\[dt]binom", "\\binom"),
    (r"\\(?:displaystyle|textstyle|scriptstyle|limits|nolimits|middle)(?![A-Za-z])", ""),
    (r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![A-Za-z])\s*\.?", ""),
    (r"\\(?:leqslant|leq|le)(?![A-Za-z])", "<="), (r"\\(?:geqslant|geq|ge)(?![A-Za-z])", ">="), (r"\\(?:neq|ne)(?![A-Za-z])", "!="),
    (r"\\lt(?![A-Za-z])", "<"), (r"\\gt(?![A-Za-z])", ">"), (r"\\(?:times|cdot|ast)(?![A-Za-z])", "*"), (r"\\div(?![A-Za-z])", "/"),
    (r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])|\^\s*\{\s*°\s*\}", "°"),
    (r"\\%|\\text\s*\{\s*%\s*\}", "%"), (r"\\(?:varnothing|emptyset)(?![A-Za-z])", "\\emptyset "),
    (r"\\mathbb\s*\{\s*R\s*\}|\\R(?![A-Za-z])", "(-\\infty,\\infty)"),
    (r"\\(?:dots|ldots|cdots)(?![A-Za-z])", "..."), (r"\\(?:lvert|rvert|vert)(?![A-Za-z])", "|"), (r"\\\|", "|"),
    (r"\\(?:lbrace)(?![A-Za-z])", "\\{"), (r"\\(?:rbrace)(?![A-Za-z])", "\\}"), (r"\\(?:langle)(?![A-Za-z])", "("), (r"\\(?:rangle)(?![A-Za-z])", ")"),
    # spacing: \quad, \, \; \: \! and the control space "\ " (also at the very end, where stripping
    # the answer took its space: \boxed{42\ }), \hspace{...}, \phantom{...}, ~
    (r"\\(?:quad|qquad)(?![A-Za-z])|(?<!\\)\\(?:[,;:! ]|$)|~|\\(?:hspace\*?|h?phantom)\s*\{[^{}]*\}", " "),
    (r"\\infin(?![A-Za-z])|\binfinity\b", "\\infty "),
    (r"\\(?:dollar|\$)|\bUSD\b|[€£¥]", " "), (r"\\(?:mathrm|textrm|rm)\s*\{\s*d\s*\}", "d"),
    (r"\\(?:var(epsilon|phi|theta|rho|sigma|kappa)|hslash)(?![A-Za-z])", lambda m: "\\" + (m.group(1) or "hbar ")),
    (r"\\(?:approx|thickapprox|approxeq|simeq)(?![A-Za-z])", "≈"), (r"\\equiv(?![A-Za-z])", "≡"),
    (r"\\(?:Rightarrow|implies|to|rightarrow|Longrightarrow)(?![A-Za-z])", " => "),
]
_SIMPLE_CMDS = [(re.compile(a), b if callable(b) else (lambda m, b=b: b)) for a, b in _SIMPLE_CMDS]
_PRIME = re.compile(r"\^\s*\{\s*((?:\\prime\s*|')+)\}|\^\s*\\prime(?![A-Za-z])|\\prime(?![A-Za-z])")
"""\omega^{\prime}, \omega^\prime, f^{\prime\prime}: primes, written as ' (\omega' = \omega^{\prime})."""
_CLOCK_AMPM = re.compile(r"(?<![\d.:])(?P<h>\d{1,2})(?::(?P<m>\d\d))?(?::(?P<s>\d\d))?\s*"
                         r"(?P<wrap>\\(?:text|mathrm|textrm|rm|mbox)\s*\{\s*)?"
                         r"(?:(?P<dotted>[AaPp])\.\s*[Mm]\.|(?P<plain>[AaPp])[Mm](?![A-Za-z]))(?(wrap)\s*\})")
"""5:30 pm, 5:30\text{ p.m.}, 5 p.m. (without minutes only with the dots: 5 pm may be picometres)."""
_TEXT_WRAP = re.compile(
    r"\\(?:text|textnormal|textrm|textbf|textit|textsf|texttt|mbox|hbox|mathrm|mathbf|mathit|mathsf|mathtt"
    r"|mathnormal|operatorname|boldsymbol|bm|emph|underline|overline|mathbb|mathcal)\s*\{([^{}]*)\}"
    r"(\s*\^\s*\{?\s*[23]\s*\}?)?")  # cm^2 after a unit
# Unit words stripped from the end of an answer with a number before them (a single letter such as
# "m" is only stripped from \text{...}/\mathrm{...}, where it cannot be a variable).
_UNITS = (
    "square|sq|cubic|cu|per|meters?|metres?|centimeters?|centimetres?|millimeters?|kilometers?|km|cm|mm|"
    "inches|inch|feet|foot|ft|yards?|yd|miles?|mph|kph|kg|grams?|g|mg|pounds?|lbs?|ounces?|oz|tons?|"
    "seconds?|secs?|minutes?|mins|hours?|hrs?|days?|weeks?|months?|years?|yrs?|liters?|litres?|ml|mL|"
    "gallons?|units?|dollars?|cents?|people|persons?|students?|ways|points?|times|items?|pieces?|"
    "apples?|marbles?|balls?|cookies?|books?|pages?|cars?|boxes|coins?|stamps?|tickets?|m/s|km/h|rad|radians?"
)
_UNIT_TAIL = re.compile(r"(?<=[\d)}\]%°\s])(?:\s*(?:" + _UNITS + r")(?:\^\{?\d\}?|²|³)?\.?)+\s*$")
_DEGREE_WORD = re.compile(r"\s*\b(?:degrees?|deg)\b\.?\s*$")
_PERCENT_WORDS = r"percent(?:age)?s?(?:\s+points?)?|per\s*cent|pct"
_PERCENT_WORD = re.compile(r"\s*(?:\b|(?<=\d))(?:" + _PERCENT_WORDS + r")\b\.?\s*$")
_FUNC_WORDS = {
    "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "asin", "acos", "atan",
    "sinh", "cosh", "tanh", "ln", "log", "exp", "sqrt", "pi", "max", "min", "gcd", "lcm", "abs", "det",
    "floor", "ceil", "mod", "or", "and", "oo", "infty", "inf", "frac", "binom",
}
_NAMED_SYMBOLS = {"hbar", "ell", "aleph", "beth", "imath", "jmath", "mho", "eth", "wp"}
"""Letter-like commands that name a quantity (\hbar, \ell): symbols, like a Greek letter; "hbar" also
without its backslash. Operators (\partial, \nabla) are not names and stay unparsed."""
_ACCENTS = {"vec": "vec", "overrightarrow": "vec", "hat": "hat", "widehat": "hat", "bar": "bar", "dot": "dot",
            "ddot": "ddot", "tilde": "tilde", "widetilde": "tilde", "check": "check", "breve": "breve",
            "acute": "acute", "grave": "grave", "mathring": "ring"}
"""Accents over a name make another name: \vec{v} (= \overrightarrow{v}) is neither v nor \hat{v}."""


def _unwrap_text(s: str) -> str:
    """\\text{...}-like wrappers: a unit/label after a number is dropped, anything else keeps its content."""

    def repl(m):
        content = m.group(1)
        core = content.replace("~", " ").strip()
        low = core.lower()
        if low in ("and", "or", ","):
            return f" {low} "
        if re.fullmatch(_PERCENT_WORDS, low):
            return "%"
        if low in ("degree", "degrees", "deg"):
            return "°"
        before = s[: m.start()].rstrip()
        letters = re.sub(r"[^A-Za-z]", "", core)
        if before and before[-1] in "0123456789)}]%" and letters and re.fullmatch(r"[A-Za-z\s./^\-0-9{}]+", core):
            if not (len(letters) == 1 and letters in "ie"):  # 3+4\mathrm{i} is a number, not a unit
                return " "
        power = m.group(2) or ""
        return (f" {content} " if len(letters) > 1 else content) + power

    for _ in range(8):
        new = _TEXT_WRAP.sub(repl, s)
        if new == s:
            break
        s = new
    return s


def _clock_24h(m) -> str:
    """A time with a.m./p.m. as h:mm:ss on the 24-hour clock (5:30 pm -> 17:30:00, 12 a.m. -> 0:00:00)."""
    half = m.group("dotted") or m.group("plain")
    if m.group("m") is None and m.group("dotted") is None or not 1 <= int(m.group("h")) <= 12:
        return m.group(0)
    h = int(m.group("h")) % 12 + (12 if half in "Pp" else 0)
    return f" {h}:{m.group('m') or '00'}:{m.group('s') or '00'} "


@lru_cache(maxsize=65536)
def _normalize(ans: str) -> str:
    s = _sanitize(ans).strip()
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)
    s = re.sub(r"\\boxed\s*\{(.*)\}", r"\1", s) if "\\boxed" in s else s
    s = s.replace("$", " ").replace("\\(", " ").replace("\\)", " ").replace("\\[", " ").replace("\\]", " ")
    for rx, rep in _SIMPLE_CMDS:
        s = rx.sub(rep, s)
    if "\\prime" in s or "^" in s and "'" in s:
        s = _PRIME.sub(lambda m: "'" * max(1, (m.group(1) or "").count("\\prime") + (m.group(1) or "").count("'")), s)
    if "m" in s or "M" in s:  # before _unwrap_text, which would drop \text{ p.m.} as a unit
        s = _CLOCK_AMPM.sub(_clock_24h, s)
    s = _unwrap_text(s)
    s = re.sub(r"^\s*(?:final\s+)?answer\s*[:=]\s*", "", s, flags=re.I)
    if "≈" in s:  # "\approx 3.14" alone: the value
        s = re.sub(r"^\s*≈", "", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"(?<!\d)\.+$|\.$", "", s).strip()  # trailing sentence period ("3." is 3 as well)
    if _DEGREE_WORD.search(s):
        s = _DEGREE_WORD.sub("°", s)
    if _PERCENT_WORD.search(s):
        s = _PERCENT_WORD.sub("%", s)
    for _ in range(4):
        new = _UNIT_TAIL.sub("", s).strip() if re.search(r"\d", s) else s
        if new == s or not new:
            break
        s = new
    if "{" in s:  # 1{,}000, 12{, }345, 3 {, }250: a {,} before a group of three digits separates thousands
        s = re.sub(r"(\d)\s*\{\s*,\s*\}\s*(?=\d{3}(?![\d]))", r"\1", s)
    s = re.sub(r"(?<=\d)_\{\s*([0-9A-Za-z]+)\s*\}", r"_\1", s)  # base subscripts: 101_{2} -> 101_2
    m = re.fullmatch(r"([+-]?)(\d+) (\d+)/(\d+)", s)  # mixed number written with a space: 2 1/3
    if m and 0 < int(m.group(3)) < int(m.group(4)):
        s = f"{m.group(1)}({m.group(2)}+{m.group(3)}/{m.group(4)})"
    if re.fullmatch(r"[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?", s.replace(" ", "")):  # never 0,250  # thousands separators
        s = s.replace(",", "").replace(" ", "")
    elif re.fullmatch(r"[+-]?[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?", s):  # 1\,000 -> "1 000"
        s = s.replace(" ", "")
    return s


def _text_key(s: str) -> str:
    return re.sub(r"[^0-9a-z]", "", s.lower())


_LABEL_WORDS = re.compile(r"\s*[A-Za-z](?:[A-Za-z\s']|_\w)*(?:=|≈|≡)")


def _is_text(norm: str) -> bool:
    """A prose answer (a word of 3+ letters that is no function, Greek letter or LaTeX command, and no
    label: the words before the first =, \\approx or \\equiv name the value, \\text{total} = 12)."""
    plain = re.sub(r"\\(?:begin|end)\s*\{[A-Za-z*]*\}|\\[A-Za-z]+|_\{[^{}]*\}", " ", norm)  # and subscripts
    labelled = "=" in plain  # S_{ABC}:S = 4:9, PQR = 5: capital runs before a value are point names
    if labelled or "≈" in plain or "≡" in plain:
        m = _LABEL_WORDS.match(plain)
        plain = plain[m.end():] if m else plain
    for w in re.findall(r"[A-Za-z]{3,}", plain):
        if labelled and w.isupper():
            continue
        if w not in _FUNC_WORDS and w not in _GREEK and w not in _NAMED_SYMBOLS and w.lower() not in _FUNC_WORDS:
            return True
    return False


_MC_GOLD = re.compile(r"\(?\s*([A-J])\s*\)?")
_MC_PRED = re.compile(r"\(\s*([A-J])\s*\)|([A-J])(?=$|[\s.:)])")


def _choice_letter(norm: str) -> str | None:
    m = _MC_GOLD.fullmatch(norm)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------------------------------
# Tokenizer and parser: a whitelist grammar producing plain tuples (the only thing sympy ever sees)
#
# node = ("num", Fraction, ulp)  ulp: False for an exact literal, else one unit in its last written digit
#      | ("sym", name) | ("const", "pi"|"e"|"i"|"oo") | ("time", seconds since midnight)
#      | ("add", [nodes]) | ("neg", x) | ("mul", [nodes]) | ("div", a, b) | ("pow", a, b)
#      | ("fn", name, [args]) | ("pct", x) | ("deg", x) | ("pm", a, b)       a +- b (a may be None)
#      | ("group", open, close, [items])  bracketed comma list: tuple, interval, or 1-item parenthesis
#      | ("set", [items]) | ("list", [items]) | ("matrix", [[rows]]) | ("rel", [operands], [ops])
#      | ("union", [items]) | ("inter", [items]) | ("empty",)
# ----------------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"\s*(?:"
    r"(?P<time>\d{1,2}:\d\d(?::\d\d)?(?![\d.]))|"
    r"(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+(?![\d.]))?)"
    r"|(?P<cmd>\\[A-Za-z]+|\\[{}])"
    r"|(?P<word>[A-Za-z]+)"
    r"|(?P<op><=|>=|!=|=>|\\\\|\.\.\.|[-+*/^_!%°'=<>(),;\[\]{}|&:≈≡])"
    r")"
)
_FUNCS = {
    "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
    "ln", "log", "exp", "max", "min", "gcd", "lcm", "det", "asin", "acos", "atan", "abs",
}
_FN_ALIASES = {"asin": "arcsin", "acos": "arccos", "atan": "arctan"}


def _tokenize(s: str) -> list[tuple[str, str]]:
    toks = []
    pos, n = 0, len(s)
    while pos < n:
        m = _TOKEN_RE.match(s, pos)
        if m is None or m.end() == pos:
            if s[pos:].strip() == "":
                break
            raise _ParseError(f"unexpected character {s[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        val = m.group(kind)
        if kind == "time":
            parts = val.split(":")
            # a clock time when it has seconds or its minutes are written with a leading zero (5:00,
            # 12:05: ratio terms have no leading zeros); 3:10 stays a ratio (the clock-time rule reads
            # it as a time only against a time)
            if (len(parts) == 3 or parts[1][0] == "0") and int(parts[0]) <= 24 and all(int(x) < 60 for x in parts[1:]):
                toks.append(("time", val))
            else:
                for k, x in enumerate(parts):
                    toks.extend([("op", ":"), ("num", x)] if k else [("num", x)])
        elif kind == "word":
            if val in _FUNCS or val in ("sqrt", "pi", "oo", "or", "and", "infty", "inf", "hbar") or val in _GREEK:
                toks.append(("word", val))
            else:  # a run of letters is a product of one-letter symbols (xy = x*y)
                toks.extend(("word", c) for c in val)
        else:
            toks.append((kind, val))
        if len(toks) > MAX_TOKENS:
            raise _ParseError("too many tokens")
    return toks


_REL_OPS = {"=", "<", ">", "<=", ">=", "!=", "\\in", "≈", "≡"}
_NAME_OPS = ("=", "≈", "≡")
"""The relations after which a name is a label (or an assignment's variable): =, \\approx, \\equiv."""
_CMD_FUNCS = {
    "\\sin", "\\cos", "\\tan", "\\cot", "\\sec", "\\csc", "\\arcsin", "\\arccos", "\\arctan", "\\sinh",
    "\\cosh", "\\tanh", "\\ln", "\\log", "\\exp", "\\max", "\\min", "\\gcd", "\\lcm", "\\det",
}


class _Parser:
    def __init__(self, toks):
        self.t = toks
        self.i = 0
        self.depth = 0

    def peek(self, k=0):
        j = self.i + k
        return self.t[j] if j < len(self.t) else ("eof", "")

    def next(self):
        tok = self.peek()
        self.i += 1
        return tok

    def accept(self, val):
        if self.peek()[1] == val and self.peek()[0] != "eof":
            self.i += 1
            return True
        return False

    def expect(self, val):
        if not self.accept(val):
            raise _ParseError(f"expected {val!r}, got {self.peek()[1]!r}")

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _ParseError("nesting too deep")

    # top: comma / semicolon / "or" / "and" separated list
    def parse_top(self):
        items = self.parse_list(("eof",))
        if self.peek()[0] != "eof":
            raise _ParseError(f"trailing {self.peek()[1]!r}")
        return items[0] if len(items) == 1 else ("list", items)

    def parse_list(self, closers):
        items = []
        while True:
            if self.peek()[1] in closers or self.peek()[0] in closers:
                break
            part = [self.parse_rel()]
            while self.peek()[1] == "and":
                self.next()
                part.append(self.parse_rel())
            if len(part) > 1 and all(x[0] == "rel" and set(x[2]) <= _INEQ for x in part):  # x > 1 and x < 3
                items.append(("inter", part))
            else:  # "2 and 3", "x = 1 and x = 3": a list
                items.extend(part)
            if self.peek()[1] in (",", ";", "or"):
                self.next()
                if self.peek()[1] in ("and", "or"):  # Oxford comma: "2, 5, and 9"
                    self.next()
                continue
            break
        return items

    def parse_rel(self):
        self.enter()
        operands = [self.parse_ratio()]
        ops = []
        while self.peek()[1] in _REL_OPS:
            ops.append(self.next()[1])
            operands.append(self.parse_ratio())
        self.depth -= 1
        return operands[0] if not ops else ("rel", operands, ops)

    def parse_ratio(self):
        """a : b (: c ...), a ratio (AB:BC = 2:5)."""
        items = [self.parse_union()]
        while self.peek()[1] == ":" and self.peek()[0] == "op":
            self.next()
            items.append(self.parse_union())
        return items[0] if len(items) == 1 else ("ratio", items)

    def parse_union(self):
        items = [self.parse_sum()]
        while self.peek()[1] in ("\\cup", "U") and self.peek()[0] != "eof":
            if self.peek()[1] == "U" and self.peek(1)[1] not in ("(", "["):
                break
            self.next()
            items.append(self.parse_sum())
        return items[0] if len(items) == 1 else ("union", items)

    def parse_sum(self):
        self.enter()
        if self.peek()[1] in ("\\pm", "\\mp"):
            self.next()
            first = ("pm", None, self.parse_term())
        else:
            first = self.parse_term()
        terms = [first]
        while True:
            op = self.peek()[1]
            if op == "+":
                self.next()
                terms.append(self.parse_term())
            elif op == "-":
                self.next()
                terms.append(("neg", self.parse_term()))
            elif op in ("\\pm", "\\mp"):
                self.next()
                rest = self.parse_term()
                left = terms[0] if len(terms) == 1 else ("add", terms)
                terms = [("pm", left, rest)]
            else:
                break
        self.depth -= 1
        return terms[0] if len(terms) == 1 else ("add", terms)

    def starts_atom(self):
        kind, val = self.peek()
        if kind in ("num", "word"):
            return val not in ("or", "and")
        if kind == "cmd":
            return val not in _REL_OPS and val not in ("\\cup", "\\cap", "\\pm", "\\mp", "\\}", "\\end", "\\rfloor",
                                                       "\\rceil")
        return val in ("(", "[", "{")

    def parse_term(self):
        self.enter()
        if self.peek()[1] in ("-", "+"):
            neg = self.next()[1] == "-"
            inner = self.parse_term()
            self.depth -= 1
            return ("neg", inner) if neg else inner
        factors = [self.parse_power()]
        divs = []
        while True:
            op = self.peek()[1]
            if op == "*" and self.peek()[0] == "op":
                self.next()
                factors.append(self.parse_power())
            elif op == "/" and self.peek()[0] == "op":
                self.next()
                divs.append(len(factors))
                factors.append(self.parse_power())
            elif self.starts_atom():
                is_frac = self.peek()[1] == "\\frac"
                nxt = self.parse_power()
                prev = factors[-1]
                # mixed number: an integer literal directly followed by \frac{int}{int} (3\frac{1}{2} = 7/2)
                if (len(factors) == 1 and not divs and prev[0] == "num" and not prev[2] and prev[1].denominator == 1
                        and is_frac and nxt[0] == "div" and nxt[1][0] == "num" and nxt[2][0] == "num"):
                    factors[-1] = ("add", [prev, nxt])
                else:
                    factors.append(nxt)
            else:
                break
        node = factors[0]
        for k in range(1, len(factors)):
            node = ("div", node, factors[k]) if k in divs else ("mul", [node, factors[k]])
        self.depth -= 1
        return _flatten(node)

    def parse_power(self):
        self.enter()
        base = self.parse_postfix(self.parse_primary())
        if self.peek()[1] == "^":
            self.next()
            if self.peek()[1] == "{":
                exp = self.parse_group_arg()
            elif self.peek()[1] in ("-", "+"):
                neg = self.next()[1] == "-"
                exp = self.parse_power()
                exp = ("neg", exp) if neg else exp
            else:
                exp = self.parse_power()
            base = self.parse_postfix(("pow", base, exp))
        self.depth -= 1
        return base

    def parse_postfix(self, node):
        while True:
            v = self.peek()[1]
            if v == "!" and self.peek()[0] == "op":
                self.next()
                node = ("fn", "factorial", [node])
            elif v == "%":
                self.next()
                node = ("pct", node)
            elif v == "°":
                self.next()
                node = ("deg", node)
            elif v == "_" and node[0] == "num" and not node[2] and self.peek(1)[0] in ("num", "word"):
                self.next()  # a numeral in base b: 101_2 (a name, compared as written)
                node = ("sym", "base:" + str(node[1]) + "_" + self.next()[1])
            elif v == "'" and node[0] == "sym" and self.peek()[0] == "op":  # a prime: f', \omega'' are names
                self.next()
                node = ("sym", node[1] + "'")
            elif v == "_" and node[0] == "sym":  # subscript: x_1, a_{n+1}
                self.next()
                start = self.i
                if self.peek()[1] == "{":  # the subscript is a name, not math: take its tokens as they are
                    depth = 0
                    while True:
                        kind, v = self.next()
                        if kind == "eof":
                            raise _ParseError("unbalanced subscript")
                        depth += (v == "{") - (v == "}")
                        if depth == 0:
                            break
                else:
                    self.next()
                sub = "".join(v for _, v in self.t[start : self.i])
                base = node[1].rstrip("'")  # x'_1 and x_1' are one name
                node = ("sym", base + "_" + re.sub(r"[^A-Za-z0-9]", "", sub) + node[1][len(base):])
            else:
                return node

    def parse_group_arg(self):
        """A LaTeX argument: {...} or a single token (\\frac12 -> 1, 2)."""
        self.enter()
        if self.accept("{"):
            inner = self.parse_rel()
            self.expect("}")
        else:
            kind, val = self.peek()
            if kind == "num" and len(val) > 1 and val.isdigit():
                self.t[self.i] = ("num", val[1:])
                self.t.insert(self.i, ("num", val[0]))
            inner = self.parse_primary()
        self.depth -= 1
        return inner

    def parse_primary(self):
        self.enter()
        kind, val = self.next()
        try:
            if kind == "num":
                if "e" in val or "E" in val:
                    mant, ex = re.split("[eE]", val)
                    f = Fraction(mant) * Fraction(10) ** int(ex) if abs(int(ex)) <= 400 else None
                    if f is None:
                        raise _ParseError("exponent too large")
                    return ("num", f, Fraction(10) ** (int(ex) - len(mant.partition(".")[2])))
                ulp = Fraction(1, 10 ** len(val.partition(".")[2])) if "." in val and not val.endswith(".") else False
                return ("num", Fraction(val.rstrip(".")) if val != "." else Fraction(0), ulp)
            if kind == "time":
                h, m, *sec = (int(x) for x in val.split(":"))
                return ("time", 3600 * h + 60 * m + (sec[0] if sec else 0))
            if kind == "word":
                if val in ("pi",):
                    return ("const", "pi")
                if val in ("oo", "infty", "inf"):
                    return ("const", "oo")
                if val == "sqrt":
                    return ("fn", "sqrt", [self.parse_group_arg()])
                if val in _FUNCS:
                    return self.parse_func(_FN_ALIASES.get(val, val))
                if val in _GREEK or val == "hbar":
                    return ("sym", val)
                if val == "i":
                    return ("const", "i")
                if val == "e":
                    return ("const", "e")
                return ("sym", val)
            if kind == "cmd":
                name = val[1:]
                if val == "\\frac":
                    a = self.parse_group_arg()
                    b = self.parse_group_arg()
                    return ("div", a, b)
                if val == "\\sqrt":
                    idx = None
                    if self.accept("["):
                        idx = self.parse_sum()
                        self.expect("]")
                    arg = self.parse_group_arg()
                    return ("fn", "sqrt", [arg]) if idx is None else ("fn", "root", [arg, idx])
                if val in ("\\sum", "\\prod"):  # \sum_{k=lo}^{hi} body
                    self.expect("_")
                    self.expect("{")
                    var = self.next()
                    if var[0] not in ("word", "cmd") or var[1] == "eof":
                        raise _ParseError("sum index")
                    var = var[1].lstrip("\\")
                    self.expect("=")
                    lo = self.parse_sum()
                    self.expect("}")
                    self.expect("^")
                    hi = self.parse_group_arg()
                    body = self.parse_term()
                    if var in ("i", "e"):  # the index, not the constant
                        body = _subst(body, var, ("sym", var), ("const", var))
                    return ("fn", name, [body, ("sym", var), lo, hi])
                if val == "\\binom":
                    return ("fn", "binom", [self.parse_group_arg(), self.parse_group_arg()])
                if val == "\\pi":
                    return ("const", "pi")
                if val == "\\infty":
                    return ("const", "oo")
                if val == "\\emptyset":
                    return ("empty",)
                if val in _CMD_FUNCS:
                    return self.parse_func(name)
                if val == "\\{":
                    items = self.parse_list(("\\}",))
                    self.expect("\\}")
                    return ("set", items)
                if val in ("\\lfloor", "\\lceil"):
                    inner = self.parse_sum()
                    self.expect("\\rfloor" if val == "\\lfloor" else "\\rceil")
                    return ("fn", "floor" if val == "\\lfloor" else "ceiling", [inner])
                if val == "\\begin":
                    return self.parse_matrix()
                if name in _GREEK or name in _NAMED_SYMBOLS:
                    return ("sym", name)
                if name in _ACCENTS:  # \vec{v}, \hat\theta, \vec{AB}: a new name
                    arg = self.parse_group_arg()
                    names = arg[1] if arg[0] == "mul" else [arg]
                    if not all(x[0] == "sym" for x in names):
                        raise _ParseError("accent over a non-name")
                    return ("sym", f"{_ACCENTS[name]}({''.join(x[1] for x in names)})")
                if name in ("mathrm", "mathbf", "text", "operatorname"):  # leftovers with nested braces
                    return self.parse_group_arg()
                raise _ParseError(f"unknown command {val}")
            if val == "(" or val == "[":
                items = self.parse_list((")", "]"))
                close = self.next()[1]
                if close not in (")", "]"):
                    raise _ParseError("unbalanced bracket")
                if len(items) == 1 and val == "(" and close == ")":
                    return items[0] if items[0][0] != "group" else ("group", "(", ")", [items[0]])
                if len(items) == 1 and val == "[" and close == "]":
                    return items[0]
                return ("group", val, close, items)
            if val == "{":
                items = self.parse_list(("}",))
                self.expect("}")
                return items[0] if len(items) == 1 else ("set", items)
            if val == "|":
                inner = self.parse_sum()
                self.expect("|")
                return ("fn", "abs", [inner])
            raise _ParseError(f"unexpected {val!r}")
        finally:
            self.depth -= 1

    def parse_func(self, name):
        power = None
        base = None
        if name == "log" and self.accept("_"):
            base = self.parse_group_arg()
        if self.accept("^"):
            power = self.parse_group_arg()
        if self.peek()[1] in ("(", "{") and name in ("max", "min", "gcd", "lcm"):
            self.next()
            args = self.parse_list((")", "}"))
            self.next()
        elif self.peek()[1] == "(":
            self.next()
            args = [self.parse_rel()]
            self.expect(")")
        else:
            args = [self.parse_power()]
        if name == "log" and base is not None:
            node = ("fn", "logb", [args[0], base])
        else:
            node = ("fn", name, args)
        return ("pow", node, power) if power is not None else node

    def parse_matrix(self):
        self.expect("{")
        env = []
        while self.peek()[1] != "}" and self.peek()[0] != "eof":
            env.append(self.next()[1])
        self.expect("}")
        env = "".join(env)
        if env == "cases":
            return self.parse_cases()
        if env not in ("pmatrix", "bmatrix", "matrix", "Bmatrix", "smallmatrix", "array"):
            raise _ParseError(f"environment {env}")
        if env == "array":  # column spec {cc}
            self.parse_group_arg_raw()
        rows = [[]]
        while True:
            if self.peek()[1] == "\\end":
                self.next()
                self.expect("{")
                while self.peek()[1] != "}" and self.peek()[0] != "eof":
                    self.next()
                self.expect("}")
                break
            if self.peek()[0] == "eof":
                raise _ParseError("unterminated matrix")
            rows[-1].append(self.parse_sum())
            if self.accept("&"):
                continue
            if self.accept("\\\\"):
                rows.append([])
                continue
        rows = [r for r in rows if r]
        if not rows or len({len(r) for r in rows}) != 1:
            raise _ParseError("ragged matrix")
        return ("matrix", rows)

    def parse_cases(self):
        """\\begin{cases} rows \\end{cases}: a system (one cell per row: a list) or a piecewise table."""
        rows = [[]]
        while True:
            if self.peek()[1] == "\\end":
                self.next()
                self.parse_group_arg_raw()
                break
            if self.peek()[0] == "eof":
                raise _ParseError("unterminated cases")
            rows[-1].append(self.parse_rel())
            self.accept(",")
            if self.accept("&"):
                continue
            if self.accept("\\\\"):
                rows.append([])
                continue
        rows = [r for r in rows if r]
        if not rows:
            raise _ParseError("empty cases")
        if all(len(r) == 1 for r in rows):
            return ("list", [r[0] for r in rows])
        return ("cases", rows)

    def parse_group_arg_raw(self):
        self.expect("{")
        while self.peek()[1] != "}" and self.peek()[0] != "eof":
            self.next()
        self.expect("}")


def _flatten(node):
    if node[0] == "mul":
        out = []
        for f in node[1]:
            out.extend(f[1] if f[0] == "mul" else [f])
        return ("mul", out)
    return node


@lru_cache(maxsize=65536)
def _parse(norm: str):
    """Parsed tuple tree of a normalised answer, or None (too long, not parseable)."""
    if len(norm) > MAX_ANSWER_CHARS or not norm:
        return None
    try:
        return _Parser(_tokenize(norm)).parse_top()
    except (_ParseError, RecursionError, ValueError, ZeroDivisionError, IndexError):
        return None


# ----------------------------------------------------------------------------------------------------
# Evaluation: exact (Fractions) and numeric (mpmath), both with size guards
# ----------------------------------------------------------------------------------------------------


def _has(node, pred) -> bool:
    if not isinstance(node, tuple):
        return False
    if pred(node):
        return True
    for part in node[1:]:
        if isinstance(part, tuple) and _has(part, pred):
            return True
        if isinstance(part, list):
            for x in part:
                if isinstance(x, list):
                    if any(_has(y, pred) for y in x):
                        return True
                elif _has(x, pred):
                    return True
    return False


def _is_approx(node) -> bool:
    """Contains a decimal literal with a fractional part (an approximation, so REL_TOL applies)."""
    return _has(node, lambda n: n[0] == "num" and n[2] and n[1].denominator != 1)


def _symbols(node, acc=None) -> set:
    acc = set() if acc is None else acc
    _has(node, lambda n: n[0] == "sym" and (acc.add(n[1]) or False))
    return acc


def _bits(f: Fraction) -> int:
    return max(f.numerator.bit_length(), f.denominator.bit_length())


def _exact_root(x: Fraction, q: int):
    """x^(1/q) as a Fraction when it is rational, else None."""
    if x < 0:
        if q % 2 == 0:
            return None
        r = _exact_root(-x, q)
        return -r if r is not None else None

    def iroot(n):
        if n < 2:
            return n
        r = math.isqrt(n) if q == 2 else int(round(n ** (1.0 / q))) if n.bit_length() < 1000 else None
        if r is None:
            return None
        for c in (r - 1, r, r + 1):
            if c >= 0 and c**q == n:
                return c
        return None

    a, b = iroot(x.numerator), iroot(x.denominator)
    return Fraction(a, b) if a is not None and b is not None else None


MAX_SUM_TERMS = 1000
"""\\sum / \\prod with numeric bounds are expanded when they have at most this many terms."""


def _subst(node, name, value, target=None):
    """node with the symbol `name` (or the node `target`) replaced by the node `value`."""
    if not isinstance(node, tuple):
        return node
    if node == (target or ("sym", name)):
        return value
    out = [node[0]]
    for part in node[1:]:
        if isinstance(part, tuple):
            out.append(_subst(part, name, value, target))
        elif isinstance(part, list):
            out.append([[_subst(y, name, value, target) for y in x] if isinstance(x, list)
                        else _subst(x, name, value, target) for x in part])
        else:
            out.append(part)
    return tuple(out)


def _sum_range(args, ev):
    """Integer bounds (lo, hi) of a \\sum/\\prod node through the evaluator `ev`, or _NotExact."""
    lo, hi = ev(args[2]), ev(args[3])
    if lo != int(lo) or hi != int(hi):
        raise _NotExact("sum bounds")
    lo, hi = int(lo), int(hi)
    if hi - lo + 1 > MAX_SUM_TERMS:
        raise _TooBig("sum")
    return lo, hi


def _exact(node, pct=True, deg_rad=False) -> Fraction:
    """Exact rational value of a node, or _NotExact / _TooBig / _Undefined."""
    t = node[0]
    if t == "num":
        return node[1]
    if t == "neg":
        return -_exact(node[1], pct, deg_rad)
    if t == "add":
        return sum((_exact(x, pct, deg_rad) for x in node[1]), Fraction(0))
    if t == "mul":
        out = Fraction(1)
        for x in node[1]:
            out *= _exact(x, pct, deg_rad)
            if _bits(out) > MAX_EXACT_BITS:
                raise _TooBig("product")
        return out
    if t == "div":
        a, b = _exact(node[1], pct, deg_rad), _exact(node[2], pct, deg_rad)
        if b == 0:
            raise _Undefined("division by zero")
        return a / b
    if t == "pow":
        b, e = _exact(node[1], pct, deg_rad), _exact(node[2], pct, deg_rad)
        if e.denominator == 1:
            if b == 0 and e < 0:
                raise _Undefined("0^negative")
            if b in (0, 1) or e == 0:
                return b ** int(e) if e != 0 else Fraction(1)
            if b == -1:
                return Fraction(-1) if e.numerator % 2 else Fraction(1)
            if abs(e.numerator) * _bits(b) > MAX_EXACT_BITS:
                raise _TooBig("power")
            return b ** int(e)
        if e.denominator <= 12 and abs(e.numerator) <= 64 and b > 0:
            r = _exact_root(b, e.denominator)
            if r is not None:
                if r == 0 and e < 0:
                    raise _Undefined("0^negative")
                return r ** e.numerator
        raise _NotExact("irrational power")
    if t == "pct":
        v = _exact(node[1], pct, deg_rad)
        return v / 100 if pct else v
    if t == "deg":
        if deg_rad:
            raise _NotExact("radians")
        return _exact(node[1], pct, deg_rad)
    if t == "fn":
        name, args = node[1], node[2]
        if name == "sqrt":
            v = _exact(args[0], pct, deg_rad)
            r = _exact_root(v, 2) if v >= 0 else None
            if r is None:
                raise _NotExact("sqrt")
            return r
        if name == "root":
            v, k = _exact(args[0], pct, deg_rad), _exact(args[1], pct, deg_rad)
            if k.denominator != 1 or not 1 <= k <= 64:
                raise _NotExact("root")
            r = _exact_root(v, int(k))
            if r is None:
                raise _NotExact("root")
            return r
        if name == "factorial":
            v = _exact(args[0], pct, deg_rad)
            if v.denominator != 1 or v < 0:
                raise _NotExact("factorial")
            if v > MAX_FACTORIAL:
                raise _TooBig("factorial")
            return Fraction(math.factorial(int(v)))
        if name == "binom":
            n, k = _exact(args[0], pct, deg_rad), _exact(args[1], pct, deg_rad)
            if n.denominator != 1 or k.denominator != 1 or n < 0:
                raise _NotExact("binom")
            if n > MAX_FACTORIAL:
                raise _TooBig("binom")
            return Fraction(math.comb(int(n), int(k)) if k >= 0 else 0)
        if name == "abs":
            return abs(_exact(args[0], pct, deg_rad))
        if name in ("floor", "ceiling"):
            v = _exact(args[0], pct, deg_rad)
            return Fraction(math.floor(v) if name == "floor" else math.ceil(v))
        if name in ("max", "min") and args:
            vals = [_exact(a, pct, deg_rad) for a in args]
            return max(vals) if name == "max" else min(vals)
        if name in ("sum", "prod"):
            lo, hi = _sum_range(args, lambda n: _exact(n, pct, deg_rad))
            out = Fraction(0 if name == "sum" else 1)
            for k in range(lo, hi + 1):
                v = _exact(_subst(args[0], args[1][1], ("num", Fraction(k), False)), pct, deg_rad)
                out = out + v if name == "sum" else out * v
                if _bits(out) > MAX_EXACT_BITS:
                    raise _TooBig("sum")
            return out
        if name in ("gcd", "lcm") and args:
            vals = [_exact(a, pct, deg_rad) for a in args]
            if any(v.denominator != 1 for v in vals):
                raise _NotExact(name)
            ints = [int(v) for v in vals]
            return Fraction(math.gcd(*ints) if name == "gcd" else math.lcm(*ints))
        raise _NotExact(name)
    raise _NotExact(t)


_MP = None


def _mp():
    global _MP
    if _MP is None:
        import mpmath

        _MP = mpmath.MPContext()
        _MP.dps = NUMERIC_DPS
    return _MP


def _point(sym: str, k: int):
    """Deterministic pseudo-random value of symbol `sym` at test point k.

    Magnitude in (0.44, 2.04); point 0 positive real, point 1 negative real, the others complex
    (second, then first quadrant), so that |x| != x and sqrt(x^2) != x are caught (identity as
    functions on the whole domain, not only for positive x).
    """
    mp = _mp()
    h = zlib.crc32(f"{sym}:{k}".encode())
    r = mp.mpf(3 + (h % 16000)) / 10000 + mp.mpf(1) / 7
    if k == 0:
        return r
    if k == 1:
        return -r
    return r * mp.expj(mp.mpf(2) if k == 2 else mp.mpf("0.7"))


_MAGS = None  # when a list: _numeric records |log10 |v|| of every subexpression it evaluates


def _numeric(node, env, pct=True, deg_rad=False):
    """Complex mpmath value of a node at the point `env` (symbol -> value)."""
    v = _numeric_node(node, env, pct, deg_rad)
    if _MAGS is not None and v != 0:
        mp = _mp()
        try:
            _MAGS.append(abs(float(mp.log10(abs(v)))))
        except (ValueError, OverflowError, TypeError):
            _MAGS.append(float("inf"))
    return v


def _numeric_node(node, env, pct, deg_rad):
    mp = _mp()
    t = node[0]
    if t == "num":
        f = node[1]
        return mp.mpf(f.numerator) / f.denominator
    if t == "sym":
        v = env.get(node[1])
        if v is None:
            raise _NotExact("free symbol")  # e.g. a symbolic interval endpoint
        return v
    if t == "const":
        return {"pi": mp.pi, "e": mp.e, "i": mp.mpc(0, 1), "oo": mp.inf}[node[1]] + 0
    if t == "neg":
        return -_numeric(node[1], env, pct, deg_rad)
    if t == "add":
        return mp.fsum(_numeric(x, env, pct, deg_rad) for x in node[1])
    if t == "mul":
        out = mp.mpf(1)
        for x in node[1]:
            out = out * _numeric(x, env, pct, deg_rad)
        return out
    if t == "div":
        a, b = _numeric(node[1], env, pct, deg_rad), _numeric(node[2], env, pct, deg_rad)
        if b == 0:
            raise _Undefined("division by zero")
        return a / b
    if t == "pow":
        b, e = _numeric(node[1], env, pct, deg_rad), _numeric(node[2], env, pct, deg_rad)
        if b == 0:
            if mp.re(e) <= 0:
                raise _Undefined("0^nonpositive")
            return mp.mpf(0)
        if mp.isinf(b) or mp.isinf(e):
            raise _TooBig("infinite power")
        if abs(e * mp.log(b)) / mp.log(2) > MAX_LOG2_MAGNITUDE:
            raise _TooBig("power")
        if mp.im(e) == 0 and mp.re(e) == int(mp.re(e)) and abs(mp.re(e)) < 10**6:
            return b ** int(mp.re(e))
        return mp.power(b, e)
    if t == "pct":
        v = _numeric(node[1], env, pct, deg_rad)
        return v / 100 if pct else v
    if t == "deg":
        v = _numeric(node[1], env, pct, deg_rad)
        return v * mp.pi / 180 if deg_rad else v
    if t == "fn":
        name = node[1]
        if name in ("sum", "prod"):
            a = node[2]
            lo, hi = _sum_range(a, lambda n: _real_int(_numeric(n, env, pct, deg_rad)))
            out = mp.mpf(0 if name == "sum" else 1)
            for k in range(lo, hi + 1):
                v = _numeric(a[0], {**env, a[1][1]: mp.mpf(k)}, pct, deg_rad)
                out = out + v if name == "sum" else out * v
            return out
        args = [_numeric(a, env, pct, deg_rad) for a in node[2]]
        x = args[0] if args else None
        if name == "factorial":  # Gamma(x + 1): also defined at the complex test points
            if abs(x) > 10**12:
                raise _TooBig("factorial")
            if mp.im(x) == 0 and mp.re(x) == int(mp.re(x)) and mp.re(x) < 0:
                raise _Undefined("factorial of a negative integer")
            return mp.gamma(x + 1)
        if name == "binom":
            return mp.binomial(args[0], args[1])
        if name in ("max", "min"):
            reals = [mp.re(a) for a in args]
            return max(reals) if name == "max" else min(reals)
        if name in ("gcd", "lcm", "det", "floor", "ceiling"):
            if name in ("floor", "ceiling"):
                return mp.floor(mp.re(x)) if name == "floor" else mp.ceil(mp.re(x))
            raise _NotExact(name)  # no numeric meaning for symbolic gcd/det: compare structurally
        if name == "logb":
            if args[1] == 1 or args[0] == 0 or args[1] == 0:
                raise _Undefined("log base")
            return mp.log(args[0]) / mp.log(args[1])
        if name in ("log", "ln") and x == 0:
            raise _Undefined("log 0")
        fn = {
            "sqrt": mp.sqrt, "sin": mp.sin, "cos": mp.cos, "tan": mp.tan, "cot": mp.cot, "sec": mp.sec,
            "csc": mp.csc, "arcsin": mp.asin, "arccos": mp.acos, "arctan": mp.atan, "sinh": mp.sinh,
            "cosh": mp.cosh, "tanh": mp.tanh, "ln": mp.log, "log": mp.log, "exp": mp.exp, "abs": abs,
        }.get(name)
        if name == "root":
            return mp.root(args[0], int(mp.re(args[1]))) if mp.re(args[1]) == int(mp.re(args[1])) else mp.power(args[0], 1 / args[1])
        if name == "exp" and abs(x) > MAX_LOG2_MAGNITUDE:
            raise _TooBig("exp")
        if fn is None:
            raise _NotExact(name)
        return fn(x)
    raise _NotExact(t)


def _real_int(v):
    """An mpmath value that is a real integer, as a Fraction (else _NotExact: e.g. a symbolic bound)."""
    mp = _mp()
    if mp.im(v) != 0 or mp.re(v) != int(mp.re(v)):
        raise _Symbolic("not an integer")
    return Fraction(int(mp.re(v)))


def _close(a, b, rel) -> bool:
    mp = _mp()
    if mp.isnan(a) or mp.isnan(b):
        return False
    scale = max(abs(a), abs(b))
    return abs(a - b) <= rel * scale


# ----------------------------------------------------------------------------------------------------
# sympy: building expressions from the tuple tree (explicit constructors, never sympify)
# ----------------------------------------------------------------------------------------------------

_SP = None


def _sympy():
    global _SP
    if _SP is None:
        import sympy

        _SP = sympy
    return _SP


def _to_sympy(node):
    sp = _sympy()
    t = node[0]
    if t == "num":
        f = node[1]
        return sp.Rational(f.numerator, f.denominator)
    if t == "sym":
        return sp.Symbol(node[1])
    if t == "const":
        return {"pi": sp.pi, "e": sp.E, "i": sp.I, "oo": sp.oo}[node[1]]
    if t == "neg":
        return -_to_sympy(node[1])
    if t == "add":
        return sp.Add(*[_to_sympy(x) for x in node[1]])
    if t == "mul":
        return sp.Mul(*[_to_sympy(x) for x in node[1]])
    if t == "div":
        b = _to_sympy(node[2])
        if b == 0:
            raise _Undefined("division by zero")
        return _to_sympy(node[1]) / b
    if t == "pow":
        b, e = _to_sympy(node[1]), _to_sympy(node[2])
        if e.is_Number and b.is_number and abs(e) > 4096:
            raise _TooBig("power")
        return sp.Pow(b, e)
    if t == "pct":
        return _to_sympy(node[1]) / 100
    if t == "deg":
        return _to_sympy(node[1])
    if t == "fn" and node[1] in ("sum", "prod"):
        body, var, lo, hi = (_to_sympy(a) for a in node[2])
        return (sp.Sum if node[1] == "sum" else sp.Product)(body, (var, lo, hi)).doit()
    if t == "fn":
        name = node[1]
        args = [_to_sympy(a) for a in node[2]]
        if name in ("factorial", "binom") and any(a.is_Number and abs(a) > MAX_FACTORIAL for a in args):
            raise _TooBig(name)
        table = {
            "sqrt": sp.sqrt, "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "cot": sp.cot, "sec": sp.sec,
            "csc": sp.csc, "arcsin": sp.asin, "arccos": sp.acos, "arctan": sp.atan, "sinh": sp.sinh,
            "cosh": sp.cosh, "tanh": sp.tanh, "ln": sp.log, "log": sp.log, "exp": sp.exp, "abs": sp.Abs,
            "factorial": sp.factorial, "floor": sp.floor, "ceiling": sp.ceiling,
        }
        if name in table:
            return table[name](args[0])
        if name == "root":
            return sp.root(args[0], args[1])
        if name == "logb":
            return sp.log(args[0], args[1])
        if name == "binom":
            return sp.binomial(args[0], args[1])
        if name in ("max", "min"):
            return (sp.Max if name == "max" else sp.Min)(*args)
        raise _NotExact(name)
    raise _NotExact(t)


def _max_int_exponent(node) -> int:
    best = [0]

    def visit(n):
        if n[0] == "pow" and n[2][0] == "num":
            best[0] = max(best[0], abs(int(n[2][1])))
        return False

    _has(node, visit)
    return best[0]


def _sympy_equal(a, b):
    """True / False when sympy decides a == b exactly, None when it cannot (or runs out of time)."""
    sp = _sympy()
    try:
        d = _to_sympy(a) - _to_sympy(b)
        if d == 0:
            return True
        if d.is_Number:
            return False
        if sp.factor_terms(d) == 0:  # common powers taken out: (x+1)^{100000}-(x+1)^{99999} = x(x+1)^{99999}
            return True
        if max(_max_int_exponent(a), _max_int_exponent(b)) <= MAX_EXPAND_POWER:
            e = sp.expand(d)
            if e == 0:
                return True
            if e.is_Number:
                return False
            s = sp.simplify(e)
            if s == 0:
                return True
            if s.is_Number and s != 0:
                return False
            if s.is_number and s.is_zero is False:
                return False
        return None
    except _SoftTimeout:
        return None
    except (_TooBig, _NotExact, _Undefined):
        return None
    except Exception:  # sympy raising on an odd but parsed input: undecided, never a crash
        return None


# ----------------------------------------------------------------------------------------------------
# Equivalence
# ----------------------------------------------------------------------------------------------------


def _scalar_equal(a, b) -> bool:
    """Equality of two scalar expressions (rules in the README, "Verifier")."""
    if a == b:
        return True
    ha_p, hb_p = _has(a, lambda n: n[0] == "pct"), _has(b, lambda n: n[0] == "pct")
    ha_d, hb_d = _has(a, lambda n: n[0] == "deg"), _has(b, lambda n: n[0] == "deg")
    # When only one side has a percent sign, 50% also reads as 50 (a percentage question answered
    # without the sign); when only one side has a degree sign, 30° also reads as pi/6 (radians).
    a_modes = [(True, False)] + ([(False, False)] if ha_p and not hb_p else []) + ([(True, True)] if ha_d and not hb_d else [])
    b_modes = [(True, False)] + ([(False, False)] if hb_p and not ha_p else []) + ([(True, True)] if hb_d and not ha_d else [])
    for ma in a_modes:
        for mb in b_modes:
            if _scalar_equal_mode(a, b, ma, mb):
                return True
    return False


def _scalar_equal_mode(a, b, ma, mb) -> bool:
    approx = _is_approx(a) or _is_approx(b)
    try:
        ea = _exact(a, *ma)
        eb = _exact(b, *mb)
        if ea == eb:
            return True
        if not approx:
            return False
        return abs(ea - eb) <= Fraction(REL_TOL) * max(abs(ea), abs(eb))
    except (_NotExact, _TooBig):
        pass
    except _Undefined:
        return False
    # numeric identity test at N_POINTS points (one point when there are no variables)
    syms = sorted(_symbols(a) | _symbols(b))
    if any(_has(x, lambda n: n[0] == "const" and n[1] == "oo") for x in (a, b)):
        return False  # infinities only make sense as interval endpoints (handled there) or identically
    points = range(N_POINTS) if syms else range(1)
    try:
        for k in points:
            env = {s: _point(s, k) for s in syms}
            va, vb = _numeric(a, env, *ma), _numeric(b, env, *mb)
            if not _close(va, vb, REL_TOL if approx else NUMERIC_REL):
                return False
    except _Symbolic:  # \sum_{k=1}^{n}: only a proof counts
        return _sympy_equal(a, b) is True
    except (_NotExact, _TooBig, _Undefined, ValueError, ZeroDivisionError, OverflowError):
        return False
    if approx:
        return True
    if ma != (True, False) or mb != (True, False):
        return True  # alternative readings (percent / degrees) are numeric by nature
    # exact answers that agree numerically: let sympy prove or refute; undecided -> adaptive precision
    verdict = _sympy_equal(a, b)
    return _agree_adaptive(a, b, syms, points) if verdict is None else verdict


MAX_DECIDE_DPS = 1000
"""Most digits of the adaptive-precision check (exact answers sympy could not decide)."""


def _agree_adaptive(a, b, syms, points) -> bool:
    """Exact answers sympy could not decide: equal only when they agree at the precision their size
    needs. M = the largest |log10| of any subexpression's value (2^{2^{-90}} has 2^{-90}, M = 27);
    a difference hidden by 40 digits shows at 2M + 60 digits. Values too small or large for
    MAX_DECIDE_DPS digits (M > (MAX_DECIDE_DPS - 60) / 2) are refused: not proved, not equal."""
    global _MAGS
    mp = _mp()
    envs = [{s: _point(s, k) for s in syms} for k in points]
    _MAGS = []
    try:
        for env in envs:
            _numeric(a, env), _numeric(b, env)
        need = max(_MAGS, default=0.0)
    except (_NotExact, _TooBig, _Undefined, ValueError, ZeroDivisionError, OverflowError):
        return False
    finally:
        _MAGS = None
    if not need * 2 + 60 <= MAX_DECIDE_DPS:
        return False
    dps = int(need * 2) + 60
    try:
        with mp.workdps(dps):
            tol = mp.mpf(10) ** (15 - dps)
            for k in points:
                env = {s: _point(s, k) for s in syms}
                if not _close(_numeric(a, env), _numeric(b, env), tol):
                    return False
    except (_NotExact, _TooBig, _Undefined, ValueError, ZeroDivisionError, OverflowError):
        return False
    return True


def _pm_expand(node, limit=8):
    """All sign choices of a node containing +- (1 \\pm \\sqrt 2 -> [1+sqrt2, 1-sqrt2])."""
    if not _has(node, lambda n: n[0] == "pm"):
        return [node]

    def sub(n):
        if not isinstance(n, tuple):
            return [n]
        if n[0] == "pm":
            lefts = sub(n[1]) if n[1] is not None else [None]
            rights = sub(n[2])
            res = []
            for l in lefts:
                for r in rights:
                    res.append(r if l is None else ("add", [l, r]))
                    res.append(("neg", r) if l is None else ("add", [l, ("neg", r)]))
            return res
        variants = [[]]
        for part in n[1:]:
            if isinstance(part, tuple):
                opts = sub(part)
            elif isinstance(part, list):
                opts = [list(c) for c in _product([sub(x) if isinstance(x, tuple) else [x] for x in part])]
            else:
                opts = [part]
            variants = [v + [o] for v in variants for o in opts]
            if len(variants) > limit:
                raise _TooBig("pm")
        return [(n[0], *v) for v in variants]

    return sub(node)


def _product(lists):
    res = [[]]
    for lst in lists:
        res = [r + [x] for r in res for x in lst]
        if len(res) > 64:
            raise _TooBig("product")
    return res


def _is_var_head(node) -> bool:
    """Left side of an assignment: x, f(x), a_1, or a tuple of symbols ((x, y) = (1, 2))."""
    if node[0] == "sym":
        return True
    if node[0] == "mul" and len(node[1]) == 2 and node[1][0][0] == "sym":  # f(x) parses as f*x
        arg = node[1][1]
        return arg[0] == "sym" or (arg[0] == "group" and all(x[0] == "sym" for x in arg[3]))
    if node[0] == "group" and node[1] == "(" and all(x[0] == "sym" for x in node[3]):
        return True
    return False


def _strip_assignment(node):
    if node[0] == "rel" and len(node[2]) == 1 and node[2][0] in _NAME_OPS and _is_var_head(node[1][0]):
        return node[1][1]
    return node


_INEQ = {"<", ">", "<=", ">="}


def _to_intervals(node):
    """A set of reals as a list of (lo, hi, lo_closed, hi_closed) with node endpoints, or None."""
    t = node[0]
    oo = ("const", "oo")
    if t == "group" and len(node[3]) == 2:
        return [(node[3][0], node[3][1], node[1] == "[", node[2] == "]")]
    if t in ("union", "list"):           # a union, or a comma list of intervals read as one
        out = []
        for x in node[1]:
            iv = _to_intervals(x)
            if iv is None:
                return None
            out += iv
        return out
    if t == "inter":
        parts = [_to_intervals(x) for x in node[1]]
        if any(p is None or len(p) != 1 for p in parts):
            return None
        lo, hi, lc, hc = parts[0][0]
        try:  # intersection: the larger lower end, the smaller upper end (strict wins a tie)
            for ((plo, phi, plc, phc),) in parts[1:]:
                a, b = _endpoint_value(plo), _endpoint_value(lo)
                if a > b or (a == b and not plc):
                    lo, lc = plo, plc if a > b else False
                a, b = _endpoint_value(phi), _endpoint_value(hi)
                if a < b or (a == b and not phc):
                    hi, hc = phi, phc if a < b else False
        except (_NotExact, _TooBig, _Undefined, ValueError, TypeError):
            return None
        return [(lo, hi, lc, hc)]
    if t == "empty":
        return []
    if t == "rel":
        ops, xs = node[2], node[1]
        if ops == ["\\in"] and _is_var_head(xs[0]):
            return _to_intervals(xs[1])
        if not all(o in _INEQ for o in ops):
            return None
        # one variable, or a function value (0 < g(t) < 2), against constant bounds
        var_pos = [k for k, x in enumerate(xs) if _symbols(x)]
        if len(var_pos) != 1 or not _is_var_head(xs[var_pos[0]]):
            return None
        v = var_pos[0]
        lo, hi, lc, hc = ("neg", oo), oo, False, False
        for k, op in enumerate(ops):
            left, right = xs[k], xs[k + 1]
            if k + 1 == v:  # bound < var  or  bound > var
                if op in ("<", "<="):
                    lo, lc = left, op == "<="
                else:
                    hi, hc = left, op == ">="
            elif k == v:  # var < bound  or var > bound
                if op in ("<", "<="):
                    hi, hc = right, op == "<="
                else:
                    lo, lc = right, op == ">="
            else:
                return None
        return [(lo, hi, lc, hc)]
    return None


def _endpoint_value(node):
    mp = _mp()
    if node == ("const", "oo"):
        return mp.inf
    if node == ("neg", ("const", "oo")):
        return -mp.inf
    v = _numeric(node, {})
    if mp.im(v) != 0:
        raise _NotExact("complex endpoint")
    return mp.re(v)


def _intervals_equal(a, b) -> bool:
    def canon(ivs):
        rows = sorted(((_endpoint_value(lo), _endpoint_value(hi), lo, hi, lc, hc) for lo, hi, lc, hc in ivs),
                      key=lambda r: (r[0], r[1]))
        merged = []
        for r in rows:
            if merged and (r[0] < merged[-1][1] or (r[0] == merged[-1][1] and (r[4] or merged[-1][5]))):
                last = merged[-1]
                if r[1] > last[1] or (r[1] == last[1] and r[5]):
                    merged[-1] = (last[0], r[1], last[2], r[3], last[4], r[5])
            else:
                merged.append(r)
        return merged

    try:
        ca, cb = canon(a), canon(b)
    except (_NotExact, _TooBig, _Undefined, ValueError, TypeError):
        # symbolic endpoints ((a, b], [0, 2\pi k)): no order to sort by; compare as written, in order
        return len(a) == len(b) and all(
            x[2] == y[2] and x[3] == y[3] and _equiv(x[0], y[0]) and _equiv(x[1], y[1]) for x, y in zip(a, b))
    if len(ca) != len(cb):
        return False
    mp = _mp()
    for ra, rb in zip(ca, cb):
        for end in (0, 1):
            va, vb = ra[end], rb[end]
            if mp.isinf(va) or mp.isinf(vb):
                if va != vb:
                    return False
                continue
            if ra[4 + end] != rb[4 + end]:
                return False
            if not _scalar_equal(ra[2 + end], rb[2 + end]):
                return False
    return True


def _unordered_equal(xs, ys) -> bool:
    if len(xs) != len(ys):
        return False
    left = list(ys)
    for x in xs:
        for k, y in enumerate(left):
            if _equiv(x, y):
                del left[k]
                break
        else:
            return False
    return True


def _dedupe(xs):
    out = []
    for x in xs:
        if not any(_equiv(x, y) for y in out):
            out.append(x)
    return out


def _equation_equal(a, b) -> bool:
    """L1 = R1 vs L2 = R2: L1 - R1 = c (L2 - R2) for a constant c != 0 (2x+2y=4 is x+y=2)."""
    d1 = ("add", [a[1][0], ("neg", a[1][1])])
    d2 = ("add", [b[1][0], ("neg", b[1][1])])
    syms = sorted(_symbols(d1) | _symbols(d2))
    ratio = None
    try:
        for k in range(N_POINTS + 1):
            env = {s: _point(s, k) for s in syms}
            v1, v2 = _numeric(d1, env), _numeric(d2, env)
            if v2 == 0 or v1 == 0:
                if v1 == v2:
                    continue
                return False
            r = v1 / v2
            if ratio is None:
                ratio = r
            elif not _close(r, ratio, 1e-20):
                return False
    except (_NotExact, _TooBig, _Undefined, ValueError, ZeroDivisionError):
        return False
    return ratio is not None or a == b


# The equivalence stage is an ordered table of named rules, _RULES below. Each rule looks at the two
# parse trees (prediction p, gold g) and returns True / False when it decides, None to pass them on;
# the first rule that decides wins. Every name is a row of the README's rule table ("Verifier") and a
# group of the equivalence table in tests/test_verifier.py (rows decided before parsing -- units,
# percent and degree signs, number forms -- are in _normalize and in the "scalars" rule's readings).


def _is_const(node) -> bool:
    return not _symbols(node)


def _is_label(node) -> bool:
    """A name that is not a plain variable: |PQ|, AB:BC, \\frac{PQ}{QR}, S_{ABC}:S (symbols combined by
    products, quotients, ratios, absolute values; no numbers, sums or powers, so x + y is no label)."""
    t = node[0]
    if t == "sym":
        return True
    if t in ("mul", "ratio"):
        return all(_is_label(x) for x in node[1])
    if t == "div":
        return _is_label(node[1]) and _is_label(node[2])
    if t == "fn" and node[1] == "abs":
        return _is_label(node[2][0])
    return False


def _rule_identical(p, g):
    return True if p == g else None


def _reduce_chain(node, approx: bool):
    """A true chain ends in its value. approx=False: chains of "=" (3 \\cdot 4 = 12 -> 12, x = 3+4 = 7 ->
    x = 7). approx=True: chains with "\\approx" (\\frac13 \\approx 0.333 -> \\frac13, x = 2\\pi \\approx 6.28
    -> x = 2\\pi): a "\\approx" step holds when its right side is the left side rounded or truncated at its
    last written digit (_rounds_to), and the value stays the last side before the first "\\approx". A
    chain with a false step (3 \\cdot 4 = 13, \\frac13 \\approx 0.9) is returned unchanged, and matches
    no value."""
    if node[0] != "rel" or not (("≈" in node[2] and set(node[2]) <= {"=", "≈"}) if approx else set(node[2]) == {"="}):
        return node
    xs, ops = node[1], node[2]
    head = 0 if _is_const(xs[0]) else 1  # x = 3 + 4 = 7: the one non-constant side is the head
    consts = xs[head:]
    if len(consts) < 2 or not all(_is_const(x) for x in consts):
        return node
    if not approx:
        if not all(_scalar_equal(consts[0], c) for c in consts[1:]):
            return node
        value = consts[-1]
    else:
        value, exact = consts[0], True
        for k in range(1, len(consts)):
            a, b, op = consts[k - 1], consts[k], ops[head + k - 1]
            if not (_scalar_equal(a, b) if op == "=" else _rounds_to(a, b)):
                return node
            exact = exact and op == "="
            value = b if exact else value
    return value if head == 0 else ("rel", [xs[0], value], [ops[0]])


def _rounds_to(x_node, d_node) -> bool:
    """d_node, written with decimals, is x_node's value rounded (|x - d| <= half a unit in d's last
    written digit) or truncated toward zero at that digit: \\frac23 \\approx 0.667 or 0.666, not 0.668.
    A unit: the literal's last digit when d is one literal (-0.33: 0.01), else the coarsest literal's
    relative unit times |d| (6.02 \\times 10^{23}: 10^{21})."""
    lits = []
    _has(d_node, lambda n: n[0] == "num" and n[2] and lits.append(n))
    try:
        d = _exact(d_node)
        if d_node[0] == "num" or d_node[0] == "neg" and d_node[1][0] == "num":
            unit = d_node[2] if d_node[0] == "num" else d_node[1][2]
        else:
            rel = [n[2] / abs(n[1]) for n in lits if n[1] != 0]
            unit = max(rel) * abs(d) if rel else 0
        if not unit:
            return False
        try:
            x = _exact(x_node)
        except _NotExact:
            mp = _mp()
            v = _numeric(x_node, {})
            if mp.im(v) != 0:
                return False
            x, d, unit = mp.re(v), mp.mpf(d.numerator) / d.denominator, mp.mpf(unit.numerator) / unit.denominator
        return 2 * abs(x - d) <= unit or ((x >= 0) == (d >= 0) and abs(d) <= abs(x) < abs(d) + unit)
    except (_NotExact, _TooBig, _Undefined, ValueError, ZeroDivisionError, OverflowError, TypeError):
        return False


def _rule_chain(p, g):
    """equality chains"""
    rp, rg = _reduce_chain(p, False), _reduce_chain(g, False)
    if rp is not p or rg is not g:
        return _equiv(rp, rg)
    return None


def _rule_approx_chain(p, g):
    """approximation chains: an exact value followed by \\approx and its decimal is the exact value"""
    rp, rg = _reduce_chain(p, True), _reduce_chain(g, True)
    if rp is not p or rg is not g:
        return _equiv(rp, rg)
    return None


def _is_name_rel(node) -> bool:
    """name = value, name \\approx value, name \\equiv value: one relation whose left side is a name."""
    return (node[0] == "rel" and len(node[2]) == 1 and node[2][0] in _NAME_OPS
            and (_is_var_head(node[1][0]) or _is_label(node[1][0])))


def _strip_label(node):
    if _is_name_rel(node) and not _is_var_head(node[1][0]) and _is_const(node[1][1]):
        return node[1][1]
    return node


def _rule_label(p, g):
    """labels before the value: |PQ| = 3 vs 3 (never x + y = 2 vs 2)"""
    if (p[0] == "rel") != (g[0] == "rel"):
        q, h = _strip_label(p), _strip_label(g)
        if q is not p or h is not g:
            return _equiv(q, h)
    return None


def _rule_assignment(p, g):
    """equations: an assignment on one side only ("x = 11" vs "11", "(x, y) = (1, 2)" vs "(1, 2)")"""
    if p[0] == "rel" and g[0] != "rel":
        q = _strip_assignment(p)
        if q is not p:
            return _equiv(q, g)
    if g[0] == "rel" and p[0] != "rel":
        q = _strip_assignment(g)
        if q is not g:
            return _equiv(p, q)
    return None


def _pm_items(node):
    """The values of a node with +-; in a list or set, of each item (\\{1 \\pm \\sqrt 2, 4\\} -> 3 values)."""
    if node[0] in ("list", "set"):
        return [y for x in node[1] for y in _pm_expand(x)]
    return _pm_expand(node)


def _rule_pm(p, g):
    """+-: expands to the set of its values"""
    if not (_has(p, lambda n: n[0] == "pm") or _has(g, lambda n: n[0] == "pm")):
        return None
    try:
        ps, gs = _pm_items(p), _pm_items(g)
    except _TooBig:
        return False
    return _unordered_equal(_dedupe(ps), _dedupe(gs))


def _setlike(n) -> bool:
    return n[0] in ("union", "inter") or (n[0] == "rel" and (set(n[2]) <= _INEQ or n[2] == ["\\in"])) or (
        n[0] == "group" and len(n[3]) == 2 and n[1] + n[2] != "()") or (n[0] == "list" and any(
            x[0] == "rel" and set(x[2]) <= _INEQ for x in n[1]))


def _rule_intervals(p, g):
    """intervals, unions (and inequalities, read as the set they describe)"""
    if _setlike(p) or _setlike(g):
        ip, ig = _to_intervals(p), _to_intervals(g)
        if ip is not None and ig is not None:
            return _intervals_equal(ip, ig)
        if p[0] == "group" and g[0] == "group" and p[1] + p[2] != g[1] + g[2]:
            return False
    return None


def _rule_equations(p, g):
    """equations: two relations"""
    if p[0] != "rel" or g[0] != "rel":
        return None
    if _is_name_rel(p) and _is_name_rel(g) and p[1][0] == g[1][0]:  # the same name: compare the values
        return _equiv(p[1][1], g[1][1])
    if p[2] == ["="] and g[2] == ["="]:
        return _equation_equal(p, g)
    if p[2] == g[2] and len(p[1]) == len(g[1]):
        return all(_equiv(x, y) for x, y in zip(p[1], g[1]))
    return False


_ZERO = ("num", Fraction(0), False)


def _rule_ratios(p, g):
    """ratios: a:b = c:d when proportional (2:5 = 4:10); a two-term ratio also matches a/b"""
    if p[0] != "ratio" and g[0] != "ratio":
        return None
    if p[0] == "ratio" and g[0] == "ratio":
        xs, ys = p[1], g[1]
        if len(xs) != len(ys):
            return False
        if any(_scalar_equal(x, _ZERO) for x in xs + ys):  # no rescaling with a zero term: 5:0 is not 7:0
            return all(_scalar_equal(x, y) for x, y in zip(xs, ys))
        # x_k / x_0 == y_k / y_0 for every k, as cross products
        return all(_scalar_equal(("mul", [xs[k], ys[0]]), ("mul", [ys[k], xs[0]])) for k in range(1, len(xs)))
    r, other = (p, g) if p[0] == "ratio" else (g, p)
    if len(r[1]) == 2 and other[0] not in ("rel", "list", "set", "group", "matrix", "union", "inter", "cases", "time"):
        return _scalar_equal(("div", r[1][0], r[1][1]), other)
    return False


def _clock_seconds(node):
    """Seconds since midnight of a time, or of a ratio of integers that reads as one (17:30, 3:10:15)."""
    if node[0] == "time":
        return node[1]
    if node[0] == "ratio" and len(node[1]) in (2, 3) and all(
            x[0] == "num" and not x[2] and x[1].denominator == 1 for x in node[1]):
        h, m, sec = ([int(x[1]) for x in node[1]] + [0])[:3]
        if 0 <= h <= 24 and 0 <= m < 60 and 0 <= sec < 60:
            return 3600 * h + 60 * m + sec
    return None


def _rule_clock(p, g):
    """clock times: 5:00 (minutes with a leading zero), 17:30:00, 5:30 p.m. are times of day, equal when
    they are the same time (5:00 != 7:00, 5:30 pm = 17:30); against a time, h:mm reads as a time"""
    if p[0] != "time" and g[0] != "time":
        return None
    a, b = _clock_seconds(p), _clock_seconds(g)
    return a is not None and a == b


def _rule_tuples(p, g):
    """tuples: ordered (a bare list also matches a tuple in order; a column/row matrix too)"""
    tp, tg = p[0], g[0]
    if tg != "group" and tp != "group":
        return None
    if tg == "group" and tp == "group":
        if len(p[3]) != len(g[3]) or p[1] + p[2] != g[1] + g[2]:
            return False
        return all(_equiv(x, y) for x, y in zip(p[3], g[3]))
    other, grp = (p, g) if tg == "group" else (g, p)
    if other[0] == "list" and grp[1] == "(":
        return len(other[1]) == len(grp[3]) and all(_equiv(x, y) for x, y in zip(other[1], grp[3]))
    if other[0] == "matrix":
        flat = _flat_vector(other)
        return flat is not None and len(flat) == len(grp[3]) and all(_equiv(x, y) for x, y in zip(flat, grp[3]))
    return False


def _rule_matrices(p, g):
    """matrices: same shape, entries equal"""
    if p[0] != "matrix" and g[0] != "matrix":
        return None
    if p[0] != g[0]:
        return False
    rp, rg = p[1], g[1]
    if len(rp) != len(rg) or len(rp[0]) != len(rg[0]):
        return False
    return all(_equiv(x, y) for rx, ry in zip(rp, rg) for x, y in zip(rx, ry))


def _rule_cases(p, g):
    """systems (cases): a system of one-cell rows is a list of equations (see "sets, lists"); a
    piecewise table matches another with the same rows in any order, cells in order"""
    if p[0] != "cases" and g[0] != "cases":
        return None
    if p[0] != g[0] or len(p[1]) != len(g[1]):
        return False
    left = list(g[1])
    for row in p[1]:
        for k, other in enumerate(left):
            if len(row) == len(other) and all(_equiv(x, y) for x, y in zip(row, other)):
                del left[k]
                break
        else:
            return False
    return True


def _rule_sets(p, g):
    """sets, lists: unordered (solution lists, \\{...\\}); sets ignore repeats"""
    tp, tg = p[0], g[0]
    if tp not in ("list", "set", "empty") and tg not in ("list", "set", "empty"):
        return None
    xs = p[1] if tp in ("list", "set") else ([] if tp == "empty" else [p])
    ys = g[1] if tg in ("list", "set") else ([] if tg == "empty" else [g])
    if tp == "set" or tg == "set" or tp == "empty" or tg == "empty":
        xs, ys = _dedupe(xs), _dedupe(ys)
    if tp == "list" and tg == "list" or len(xs) != len(ys) or len(xs) != 1:
        # a list of assignments "x = 1, x = 2" vs "1, 2"
        # (only against values: two systems "x = 1, y = 2" vs "y = 1, x = 2" compare equation by equation)
        rel_x, rel_y = all(x[0] == "rel" for x in xs), all(y[0] == "rel" for y in ys)
        if not (rel_x and rel_y):
            xs = [_strip_assignment(x) if x[0] == "rel" else x for x in xs]
            ys = [_strip_assignment(y) if y[0] == "rel" else y for y in ys]
    return _unordered_equal(xs, ys)


def _rule_relations(p, g):
    """a relation or set of reals against a value: not equal (x + y = 2 is not 2)"""
    kinds = ("rel", "union", "inter")
    return False if p[0] in kinds or g[0] in kinds else None


_RULES = (
    ("identical", _rule_identical),
    ("equality chains", _rule_chain),
    ("approximation chains", _rule_approx_chain),
    ("labels before the value", _rule_label),
    ("equations", _rule_assignment),
    ("+-", _rule_pm),
    ("intervals, unions", _rule_intervals),
    ("equations", _rule_equations),
    ("clock times", _rule_clock),
    ("ratios", _rule_ratios),
    ("tuples", _rule_tuples),
    ("matrices", _rule_matrices),
    ("systems (cases)", _rule_cases),
    ("sets, lists", _rule_sets),
    ("equations", _rule_relations),
    ("scalars", _scalar_equal),
)
"""The equivalence stage, in order: (README row / test group, rule). "scalars" decides every other
pair of single values (numbers, radicals, expressions...: exact, then numeric, then sympy)."""


def _equiv(p, g) -> bool:
    """Equivalence of two parse trees: the first rule of _RULES that decides."""
    for _name, rule in _RULES:
        verdict = rule(p, g)
        if verdict is not None:
            return verdict
    return False


def _flat_vector(m):
    rows = m[1]
    if len(rows) == 1:
        return rows[0]
    if all(len(r) == 1 for r in rows):
        return [r[0] for r in rows]
    return None


def _equal_core(pred: str, gold: str) -> bool:
    """math_equal without the time bound (runs inside a worker, or behind the soft timer)."""
    if len(pred) > 4 * MAX_ANSWER_CHARS or len(gold) > 4 * MAX_ANSWER_CHARS:  # never parsed
        return re.sub(r"\s", "", _sanitize(pred)) == re.sub(r"\s", "", _sanitize(gold)) != ""
    np_, ng = _normalize(pred), _normalize(gold)
    if not np_ or not ng:
        return False
    if np_ == ng:
        return True
    # multiple-choice letters: "(B)", "B", "\text{(B)} 42"
    lg, lp = _choice_letter(ng), _choice_letter(np_)
    if lg or lp:
        if lg and lp:
            return lg == lp
        letter, other = (lg, np_) if lg else (lp, ng)
        m = _MC_PRED.match(other)  # the other side may be "(B) 42" or "B. 42"
        return m is not None and (m.group(1) or m.group(2)) == letter
    tp, tg = _is_text(np_), _is_text(ng)
    if tp or tg:
        return _text_key(np_) == _text_key(ng) and _text_key(ng) != ""
    p, g = _parse(np_), _parse(ng)
    if p is None or g is None:
        return re.sub(r"\s", "", np_) == re.sub(r"\s", "", ng)
    return _equiv(p, g)


# ----------------------------------------------------------------------------------------------------
# Graders: ours (everything above), or another project's, for numbers comparable with other papers
#
# "math-verify" is HuggingFace's math-verify package, called as its README shows (verify(parse(gold),
# parse(response))), with its own signal.alarm timeouts off: they would cancel the worker's timer, and
# the worker bounds every verdict anyway. "dapo" is verl's verl/utils/reward_score/math_dapo.py, the
# scorer verl's DAPO recipe reaches (data_source "math_dapo" or "aime*"): compute_score(response, gold)
# reads the last "Answer:" line of the response's last 300 characters (else its last \boxed{}),
# normalises both strings (Minerva's normalize_final_answer) and compares them exactly; it returns
# +-1 as "score" and a bool "acc", which is this reward. That file imports only re and typing, but
# `import verl...` runs verl/__init__.py, which imports torch, transformers, tensordict and ray (7 s,
# 3000 modules); so the worker loads the installed file itself, unchanged, by its path.
# ----------------------------------------------------------------------------------------------------


def _gold_answer(gold: str) -> str:
    """A gold given as a worked solution (e.g. Minerva) is reduced to its last box."""
    if "\\boxed" in gold or "\\fbox" in gold:
        ans = extract_answer(gold)
        return ans if ans is not None else gold
    return gold


def _reward_ours(response: str, gold: str) -> float:
    ans = extract_answer(response)
    return 1.0 if ans is not None and _equal_core(ans, _gold_answer(gold)) else 0.0


def _reward_math_verify(response: str, gold: str) -> float:
    from math_verify import parse, verify  # imported by _load_grader at worker start-up

    g = parse(gold if "\\boxed" in gold else f"${gold}$", parsing_timeout=None)
    return 1.0 if verify(g, parse(response, parsing_timeout=None), timeout_seconds=None) else 0.0


_DAPO = None  # verl's math_dapo module, once _load_grader("dapo") ran


def _reward_dapo(response: str, gold: str) -> float:
    return 1.0 if _DAPO.compute_score(response, gold)["acc"] else 0.0


_GRADERS = dict(zip(GRADERS, (_reward_ours, _reward_math_verify, _reward_dapo)))


def _dapo_path() -> str | None:
    spec = importlib.util.find_spec("verl")  # locates the package without running its __init__
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "utils", "reward_score", "math_dapo.py")
    return path if os.path.isfile(path) else None


def _check_grader(grader):
    """A bad grader name or a grader whose package is missing fails here, in the caller, at once."""
    if grader not in _GRADERS:
        raise ValueError(f"unknown grader {grader!r} (expected one of {', '.join(GRADERS)})")
    if grader == "math-verify" and importlib.util.find_spec("math_verify") is None:
        raise ImportError("grader 'math-verify' needs the math-verify package (requirements.txt pins it)")
    if grader == "dapo" and _dapo_path() is None:
        raise ImportError("grader 'dapo' needs verl's verl/utils/reward_score/math_dapo.py "
                          "(pip install --no-deps verl==0.9.1)")


def _load_grader(grader):
    """Imports of a grader, done by a worker before it reports ready (not inside a verdict's time)."""
    global _DAPO
    if grader == "ours":
        _sympy(), _mp()
    elif grader == "math-verify":
        import logging

        import math_verify  # noqa: F401

        logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs whole inputs on errors
        _reward_math_verify("\\boxed{1}", "1")  # it builds its regexes on first use: not in a verdict's time
    elif grader == "dapo":
        spec = importlib.util.spec_from_file_location("verl_math_dapo", _dapo_path())
        _DAPO = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_DAPO)


# ----------------------------------------------------------------------------------------------------
# Worker processes: every verdict is time-bounded
#
# A worker is `python -I -c "...verifier._serve(grader)"`: it caps its address space, imports its
# grader once, and answers length-prefixed pickled batches from its parent over pipes, one result per
# verdict as soon as it is done. Inside, an interval timer (the worker's main thread, so signals work)
# stops a verdict at SOFT_FRACTION * timeout: our symbolic stage then falls back to the numeric
# verdict, anything else scores 0. Outside, the parent tracks when each verdict started and kills the
# whole worker (SIGKILL) at timeout + KILL_GRACE -- the hard bound, which holds even inside a C
# extension -- records 0, and starts a replacement. Only the parent's own trusted messages are
# unpickled. Each grader has its own workers (a pool per grader), so a worker imports one grader.
# ----------------------------------------------------------------------------------------------------

_HDR = struct.Struct(">I")


def _verdict(kind: str, a: str, b: str, grader: str = "ours") -> float:
    """One verdict: kind "equal" is math_equal(a, b) (ours), kind "reward" scores response a against
    gold b with `grader`."""
    if kind == "equal":
        return 1.0 if _equal_core(a, b) else 0.0
    return _GRADERS[grader](a, b)


def _serve(grader: str = "ours"):
    """Worker main loop (started by _Worker; reads batches on stdin, writes results on stdout)."""
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ValueError, OSError):
        pass
    sys.setrecursionlimit(4000)
    # the results travel on a copy of stdout; fd 1 itself goes to /dev/null, so that a grader library
    # that prints (from Python or C) cannot corrupt them
    wfd = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    _load_grader(grader)

    def on_alarm(signum, frame):
        raise _SoftTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    rfd = sys.stdin.buffer

    def send(obj):
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        wfd.write(_HDR.pack(len(data)) + data)
        wfd.flush()

    send(("ready", os.getpid()))
    while True:
        hdr = rfd.read(_HDR.size)
        if len(hdr) < _HDR.size:
            return  # parent gone
        (n,) = _HDR.unpack(hdr)
        timeout, items = pickle.loads(rfd.read(n))
        for idx, kind, a, b in items:
            t0 = time.perf_counter()
            note = ""
            try:
                signal.setitimer(signal.ITIMER_REAL, max(1e-3, SOFT_FRACTION * timeout))
                score = _verdict(kind, a, b, grader)
            except _SoftTimeout:
                score, note = 0.0, "soft timeout"
            except (Exception, RecursionError) as e:  # noqa: B014 -- a verdict never takes the worker down
                score, note = 0.0, f"error: {type(e).__name__}"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            send((idx, score, time.perf_counter() - t0, note))


def _worker_argv(grader: str) -> list[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import verifier; verifier._serve({grader!r})"
    return [sys.executable, "-I", "-c", code]


class _Worker:
    def __init__(self, grader: str):
        self.proc = subprocess.Popen(_worker_argv(grader), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True, bufsize=0)
        self.buf = b""
        self.ready = False
        self.started = time.monotonic()
        self.items = deque()      # items of the batch in flight, in order
        self.item_start = 0.0     # when the item at items[0] started (parent's clock)
        self.timeout = DEFAULT_TIMEOUT

    def fileno(self):
        return self.proc.stdout.fileno()

    def send(self, timeout, items):
        data = pickle.dumps((timeout, items), protocol=pickle.HIGHEST_PROTOCOL)
        self.items = deque(items)
        self.timeout = timeout
        self.proc.stdin.write(_HDR.pack(len(data)) + data)
        self.proc.stdin.flush()
        self.item_start = time.monotonic()

    def messages(self):
        """Read what is available; return complete messages (None at EOF)."""
        chunk = os.read(self.fileno(), 1 << 20)
        if not chunk:
            return None
        self.buf += chunk
        out = []
        while len(self.buf) >= _HDR.size:
            (n,) = _HDR.unpack(self.buf[: _HDR.size])
            if len(self.buf) < _HDR.size + n:
                break
            out.append(pickle.loads(self.buf[_HDR.size : _HDR.size + n]))
            self.buf = self.buf[_HDR.size + n :]
        return out

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.proc.wait()


class _Pool:
    """Persistent worker processes of one grader, shared by math_equal, math_reward and score_batch in
    this process."""

    STARTUP_TIMEOUT = 120.0

    def __init__(self, grader: str = "ours"):
        self.grader = grader
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()
        self.stats = {"kills": 0, "max_latency_s": 0.0, "soft_timeouts": 0, "errors": 0, "error_reasons": {}}

    def _grow(self, n):
        self.workers = [w for w in self.workers if w.proc.poll() is None]
        while len(self.workers) < n:
            self.workers.append(_Worker(self.grader))

    def run(self, items, timeout, n_workers):
        """Scores of items [(idx, kind, a, b)], each bounded by timeout (+ KILL_GRACE)."""
        results = {}
        with self.lock:
            n_workers = max(1, min(n_workers, len(items)))
            self._grow(n_workers)
            pool = self.workers[:n_workers]
            chunk = max(1, min(64, -(-len(items) // (4 * n_workers))))
            queue = deque(items)
            busy: list[_Worker] = []
            idle = [w for w in pool if w.ready]
            starting = [w for w in pool if not w.ready]
            while queue or busy:
                for w in list(idle):
                    if not queue:
                        break
                    batch = [queue.popleft() for _ in range(min(chunk, len(queue)))]
                    try:
                        w.send(timeout, batch)
                    except (BrokenPipeError, OSError):
                        queue.extendleft(reversed(batch))
                        idle.remove(w)
                        self._replace(w, pool, starting)
                        continue
                    idle.remove(w)
                    busy.append(w)
                now = time.monotonic()
                deadlines = [w.item_start + w.timeout + KILL_GRACE for w in busy]
                deadlines += [w.started + self.STARTUP_TIMEOUT for w in starting]
                wait = max(0.0, min(deadlines) - now) if deadlines else 0.0
                ready, _, _ = select.select(busy + starting, [], [], wait)
                for w in ready:
                    msgs = w.messages()
                    if msgs is None:  # died (e.g. killed by the kernel): current item scores 0
                        if w in busy:
                            busy.remove(w)
                            self._fail(w, queue, results, "worker died")
                        else:  # died before "ready": a broken install, not a hostile input
                            code = w.proc.wait()
                            raise RuntimeError(
                                f"verifier worker exited during start-up (exit code {code}); see `{sys.executable} "
                                f"-c 'import verifier; verifier._serve({self.grader!r})'` for the error")
                        self._replace(w, pool, starting)
                        continue
                    for msg in msgs:
                        if msg[0] == "ready":
                            w.ready = True
                            starting.remove(w)
                            idle.append(w)
                            continue
                        idx, score, elapsed, note = msg
                        results[idx] = score
                        lat = time.monotonic() - w.item_start
                        self.stats["max_latency_s"] = max(self.stats["max_latency_s"], lat)
                        self.stats["soft_timeouts"] += note == "soft timeout"
                        if note.startswith("error"):  # a verdict that raised inside: 0, counted by reason
                            self.stats["errors"] += 1
                            reasons = self.stats["error_reasons"]
                            reasons[note] = reasons.get(note, 0) + 1
                        w.items.popleft()
                        w.item_start = time.monotonic()
                    if w in busy and not w.items:
                        busy.remove(w)
                        idle.append(w)
                now = time.monotonic()
                for w in list(busy):
                    if now >= w.item_start + w.timeout + KILL_GRACE:
                        busy.remove(w)
                        self.stats["max_latency_s"] = max(self.stats["max_latency_s"], now - w.item_start)
                        self._fail(w, queue, results, "timeout")
                        self._replace(w, pool, starting)
                for w in list(starting):
                    if now >= w.started + self.STARTUP_TIMEOUT:
                        raise RuntimeError("verifier worker did not start within "
                                           f"{self.STARTUP_TIMEOUT:.0f}s")
        return [results[idx] for idx, *_ in items]

    def _fail(self, w, queue, results, why):
        """The item in flight on w scores 0; the rest of w's batch goes back to the queue."""
        self.stats["kills"] += 1
        if w.items:
            idx = w.items.popleft()[0]
            results[idx] = 0.0
        queue.extendleft(reversed(list(w.items)))
        w.items.clear()
        w.kill()

    def _replace(self, w, pool, starting):
        w.kill()
        new = _Worker(self.grader)
        pool[pool.index(w)] = new
        self.workers[self.workers.index(w)] = new
        starting.append(new)

    def close(self):
        for w in self.workers:
            w.kill()
        self.workers = []


_POOLS: dict[str, _Pool] = {}
_POOLS_PID = None


def _pool(grader: str = "ours") -> _Pool:
    global _POOLS, _POOLS_PID
    if _POOLS_PID != os.getpid():  # a forked child gets its own workers
        _POOLS, _POOLS_PID = {}, os.getpid()
    if grader not in _POOLS:
        _POOLS[grader] = _Pool(grader)
    return _POOLS[grader]


@atexit.register
def _shutdown():
    if _POOLS_PID == os.getpid():
        for pool in _POOLS.values():
            pool.close()


MAX_DEFAULT_WORKERS = 16
"""Cap of the default pool size (each worker holds sympy, ~100 MB)."""


def _default_workers() -> int:
    """Usable cores / local ranks (common.cores_per_rank), at most MAX_DEFAULT_WORKERS."""
    return min(MAX_DEFAULT_WORKERS, cores_per_rank())


def _check_timeout(timeout):
    if not isinstance(timeout, (int, float)) or not timeout > 0 or not math.isfinite(timeout):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def math_equal(pred: str, gold: str, *, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether answer strings `pred` and `gold` are equivalent (docs/verifier.md: rules, tolerances).

    Never raises on str input; returns within `timeout` + KILL_GRACE seconds (False on timeout),
    from any thread or process: the work runs in a worker process that is killed when it overruns.
    """
    _check_str("pred", pred)
    _check_str("gold", gold)
    _check_timeout(timeout)
    return _pool().run([(0, "equal", pred, gold)], timeout, 1)[0] > 0


def math_reward(response: str, gold: str, *, timeout: float = DEFAULT_TIMEOUT, grader: str = "ours") -> float:
    """1.0 if `grader` judges `response` correct against `gold`, else 0.0. grader "ours": the final
    answer of `response` (extract_answer) is equivalent to `gold` (math_equal); "math-verify", "dapo":
    those projects' own scoring of the whole response (docs/verifier.md, "Graders")."""
    _check_str("response", response)
    _check_str("gold", gold)
    _check_timeout(timeout)
    _check_grader(grader)
    return _pool(grader).run([(0, "reward", response, gold)], timeout, 1)[0]


def score_batch(responses, golds, *, workers: int | None = None, timeout: float = DEFAULT_TIMEOUT,
                grader: str = "ours") -> list[float]:
    """math_reward of many (response, gold) pairs; the training loop calls this every step.

    Runs on the grader's persistent worker pool (`workers` processes, default: usable cores / torchrun's
    LOCAL_WORLD_SIZE, at most MAX_DEFAULT_WORKERS), each verdict bounded by `timeout` (+ KILL_GRACE):
    a verdict that overruns, raises or kills its worker scores 0.
    """
    if isinstance(responses, str) or isinstance(golds, str):
        raise TypeError("score_batch takes sequences of strings, not a single string")
    responses, golds = list(responses), list(golds)
    if len(responses) != len(golds):
        raise ValueError(f"score_batch: {len(responses)} responses but {len(golds)} golds")
    for name, seq in (("responses", responses), ("golds", golds)):
        for k, x in enumerate(seq):
            if not isinstance(x, str):
                raise TypeError(f"{name}[{k}] must be str, got {type(x).__name__}")
    n = workers if workers is not None else _default_workers()
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    _check_timeout(timeout)
    _check_grader(grader)
    if not responses:
        return []
    items = [(k, "reward", r, g) for k, (r, g) in enumerate(zip(responses, golds))]
    return _pool(grader).run(items, timeout, n)


def pool_stats() -> dict:
    """Counters of this process's worker pools (all graders together): kills, soft timeouts, errors
    (verdicts that raised inside a worker and scored 0) with their reasons ("error: KeyError": n), and
    the largest verdict latency (s)."""
    out = {"kills": 0, "max_latency_s": 0.0, "soft_timeouts": 0, "errors": 0, "error_reasons": {}}
    for pool in (_POOLS.values() if _POOLS_PID == os.getpid() else ()):
        for key in ("kills", "soft_timeouts", "errors"):
            out[key] += pool.stats[key]
        out["max_latency_s"] = max(out["max_latency_s"], pool.stats["max_latency_s"])
        for reason, count in pool.stats["error_reasons"].items():
            out["error_reasons"][reason] = out["error_reasons"].get(reason, 0) + count
    return out


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------


if __name__ == "__main__":
    args = parse_args(Args)
    print(json.dumps(dataclasses.asdict(args)))
    try:
        if args.grader == "ours":
            print(f"extracted: {extract_answer(args.response)!r}")
        print(f"reward: {math_reward(args.response, args.gold, timeout=args.timeout, grader=args.grader)}")
    except (ValueError, TypeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
