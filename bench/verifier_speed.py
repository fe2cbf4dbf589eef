"""bench/verifier_speed.py -- verifier throughput and worst-case latency, side by side with math-verify.

Measures, in one run on the same inputs (issue 4; SPEC "Numbers to meet": >= 1000 typical math
verdicts per second per core, every verdict <= timeout + 0.1 s):

1. verdicts/s on one core for a realistic mix of RL rollouts: groups of 8 sampled responses per
   problem (~1.5 KB of reasoning, then \\boxed{...}), answers mostly integers (AIME/AMC golds from
   ../shared/data/bench) and simple fractions/decimals, some symbolic (radicals, pi, expressions,
   intervals, tuples, percentages, scientific notation); about half of the responses are correct
   in a different form from the gold, half are wrong;
   - ours in-process (the verdict function a worker runs), with its parse caches on (the RL case:
     golds and many answers repeat within a group) and cleared before every verdict (cold);
   - ours end to end through score_batch with 1 worker (pickling + pipes included) and with all cores;
   - math-verify (`verify(parse("$" + gold + "$"), parse(response))`, its documented usage),
     in-process on one core, when it is installed;
2. accuracy of each against the mix's labels, and a table of known hard cases;
3. worst-case latency over hostile inputs (9^{9^{9^9}}, (x+1)^{100000}, 100000!, deep nesting,
   2 MB responses, ...) through score_batch, and math-verify's on the same inputs (each in a child
   process with a 60 s cap, so that a hang cannot stall the benchmark).

Commands
    python bench/verifier_speed.py                  # project venv: ours only (says math-verify is absent)
    (or `pip install math-verify` into the project venv: how bench/RESULTS.md's 2026-12-02 rows were run)
    .venv-bench/bin/python bench/verifier_speed.py  # bench venv (requirements.txt + math-verify)
    (make the bench venv: python3 -m venv .venv-bench && .venv-bench/bin/pip install -r requirements.txt math-verify)

Deliberately left out: GPU (the verifier is CPU work), other checkers than math-verify.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import verifier as V  # noqa: E402


@dataclass
class Args:
    """Verifier benchmark settings."""

    problems: int = 250
    """problems in the realistic mix (8 responses each)"""
    group: int = 8
    """responses per problem (the RL group size)"""
    seed: int = 0
    """seed of the mix"""
    timeout: float = 1.0
    """per-verdict time bound of our verifier (seconds)"""
    hostile_cap: float = 60.0
    """hard cap per math-verify hostile verdict, in a child process (seconds)"""
    skip_math_verify: bool = False
    """do not run math-verify even when installed"""


# ----------------------------------------------------------------------------------------------------
# The realistic mix
# ----------------------------------------------------------------------------------------------------

FILLER = ("Let us set up the problem carefully. We denote the unknown quantity by $x$ and translate each "
          "condition into an equation. From the first condition we get $3x + 2 = 17$, so $x = 5$. "
          "Substituting into the second condition, $x^2 - 4x + 4 = (x-2)^2$, which equals $9$. "
          "We check the boundary cases separately, since $\\frac{a}{b}$ is undefined for $b = 0$. ")


def _int_case(rng, golds):
    g = rng.choice(golds)
    ok = rng.random() < 0.5
    v = int(g)
    pred = str(v) if ok else str(v + rng.choice([-10, -2, -1, 1, 3, 100]))
    if ok and rng.random() < 0.2:
        pred = rng.choice([f"{v}.0", f"{v}\\text{{ ways}}", f"x = {v}", f"{v:,}"])
    return str(g), pred, ok


def _frac_case(rng):
    p, q = rng.randint(1, 40), rng.randint(2, 40)
    while p % q == 0:
        q += 1
    from fractions import Fraction

    f = Fraction(p, q)
    gold = f"\\frac{{{f.numerator}}}{{{f.denominator}}}"
    ok = rng.random() < 0.5
    if ok:
        forms = [gold, f"{f.numerator}/{f.denominator}", f"\\dfrac{{{2 * f.numerator}}}{{{2 * f.denominator}}}"]
        if 10**6 % f.denominator == 0:
            forms.append(str(float(f)))
        pred = rng.choice(forms)
    else:
        pred = rng.choice([f"\\frac{{{f.denominator}}}{{{f.numerator}}}", f"\\frac{{{f.numerator + 1}}}{{{f.denominator}}}",
                           str(round(float(f), 2))])
    if not ok and "." in pred and Fraction(pred) == f:  # 7/4 rounded to 2 decimals is still 7/4
        ok = True
    return gold, pred, ok


SYMBOLIC = [  # (gold, correct forms, wrong forms)
    ("3\\sqrt{13}", ["\\sqrt{117}", "3 \\sqrt{13}"], ["\\sqrt{39}", "13\\sqrt{3}"]),
    ("2\\pi", ["2 \\pi", "6.28318530718"], ["\\pi", "6.28"]),
    ("\\frac{\\sqrt{3}}{2}", ["\\frac{1}{2}\\sqrt{3}", "\\frac{\\sqrt3}{2}"], ["\\frac{\\sqrt{2}}{2}", "\\sqrt{3}"]),
    ("\\frac{n(n+1)}{2}", ["\\frac{n^2+n}{2}", "\\frac{1}{2}n(n+1)"], ["\\frac{n(n-1)}{2}", "n^2"]),
    ("(1,3]", ["1 < x \\le 3", "(1, 3]"], ["[1,3]", "(1,3)"]),
    ("(2,-1)", ["(2, -1)", "(x,y) = (2,-1)"], ["(-1,2)", "(2,1)"]),
    ("\\{1,2,4\\}", ["\\{4,2,1\\}", "1, 2, 4"], ["\\{1,2\\}", "\\{1,2,3\\}"]),
    ("25\\%", ["25", "0.25"], ["2.5", "0.025"]),
    ("4.5\\times 10^{6}", ["4500000", "4.5e6"], ["4.5e5", "45000"]),
    ("1+2i", ["2i+1"], ["1-2i", "2+i"]),
    ("x^2+2x+1", ["(x+1)^2"], ["(x-1)^2", "x^2+1"]),
    ("\\frac{1\\pm\\sqrt{5}}{2}", ["\\frac{1+\\sqrt5}{2}, \\frac{1-\\sqrt5}{2}"], ["\\frac{1+\\sqrt5}{2}"]),
    ("y = 2x + 3", ["2x - y + 3 = 0"], ["y = 3x + 2"]),
    ("\\begin{pmatrix}1 & 2\\\\ 3 & 4\\end{pmatrix}", ["\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"],
     ["\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}"]),
]


def realistic_mix(args, bench_dir):
    rng = random.Random(args.seed)
    golds = []
    for name in ("aime24.jsonl", "amc23.jsonl"):
        with open(bench_dir / name) as f:
            golds += [int(float(json.loads(line)["answer"])) for line in f]
    rows = []  # (response, gold, label)
    for _ in range(args.problems):
        u = rng.random()
        for _ in range(args.group):
            if u < 0.6:
                gold, pred, ok = _int_case(rng, golds)
            elif u < 0.85:
                gold, pred, ok = _frac_case(rng)
            else:
                gold, forms_ok, forms_bad = SYMBOLIC[int((u - 0.85) / 0.15 * len(SYMBOLIC)) % len(SYMBOLIC)]
                ok = rng.random() < 0.5
                pred = rng.choice(forms_ok if ok else forms_bad)
            response = FILLER * rng.randint(2, 5) + f"Therefore the answer is $\\boxed{{{pred}}}$."
            rows.append((response, gold, ok))
    return rows


HARD_CASES = [  # (gold, response, correct?) -- the list of known failures of popular checkers
    ("4.5e33", "The answer is $\\boxed{4.5 \\times 10^{33}}$.", True),
    ("\\frac{1}{2^{99}}", "The answer is $\\boxed{\\frac{1}{2^{98}}}$.", False),
    ("3\\sqrt{13}", "The answer is $\\boxed{\\sqrt{117}}$.", True),
    ("7", "So the answer is $\\boxed{5}$. Wait, that is wrong: I dropped a term. Redoing it: $\\boxed{7}$.", True),
    ("5", "So the answer is $\\boxed{5}$. Wait, that is wrong: I dropped a term. Redoing it: $\\boxed{7}$.", False),
    ("2\\pi", "$\\boxed{6.28318530718}$", True),
    ("(0,1]", "$\\boxed{0 < x \\le 1}$", True),
    ("[0,1]", "$\\boxed{(0,1)}$", False),
    ("x + y = 2", "$\\boxed{2x + 2y = 4}$", True),
    ("\\text{(B)}", "$\\boxed{B}$", True),
    ("1e-30", "$\\boxed{2 \\times 10^{-30}}$", False),
    ("50\\%", "$\\boxed{0.5}$", True),
]

HOSTILE = [
    ("9^{9^{9^9}}", "1"), ("(x+1)^{100000}", "(x+1)^{99999}(x+1)"), ("100000!", "100000!"), ("{" * 5000 + "1" + "}" * 5000, "1"),
    ("(" * 5000 + "1" + ")" * 5000, "1"), ("x" * 2_000_000, "x"), ("\x00\ud800 1", "1"), ("1/0", "1"), ("0/0", "0"),
    ("\\boxed{" * 100_000, "1"), ("10^{10^{10}}", "10^{10^{10}}+1"), ("\\sqrt{" * 3000, "1"), ("e^{e^{e^{100}}}", "1"),
    ("((x+1)^{60}+(y+2)^{60})^{60}", "((x+1)^{60}+(y+2)^{60})^{61}"), ("x^{x^{x^{x^{x^{x}}}}}", "x"),
]


# ----------------------------------------------------------------------------------------------------
# Runners
# ----------------------------------------------------------------------------------------------------


def clear_caches():
    V._normalize.cache_clear()
    V._parse.cache_clear()


def run_ours_inprocess(rows, cold):
    out = []
    t0 = time.perf_counter()
    for response, gold, _ in rows:
        if cold:
            clear_caches()
        out.append(V._verdict("reward", response, gold))
    return out, time.perf_counter() - t0


def mv_verdict(gold, response):
    from math_verify import parse, verify

    try:
        return 1.0 if verify(parse(f"${gold}$"), parse(response)) else 0.0
    except Exception:  # noqa: BLE001 -- count a crash as a 0 verdict, as a training loop would
        return 0.0


def run_math_verify(rows):
    out = []
    t0 = time.perf_counter()
    for response, gold, _ in rows:
        out.append(mv_verdict(gold, response))
    return out, time.perf_counter() - t0


def _mv_child(q, gold, response):
    devnull = os.open(os.devnull, os.O_WRONLY)  # math-verify prints the whole input on a timeout
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    t0 = time.perf_counter()
    v = mv_verdict(gold, response)
    q.put((v, time.perf_counter() - t0))


def mv_hostile(pred, gold, cap):
    """math-verify on one hostile input in a child process; (verdict, seconds) or (None, cap) when killed."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_mv_child, args=(q, gold, f"$\\boxed{{{pred}}}$" if len(pred) < 10_000 else pred))
    t0 = time.perf_counter()
    p.start()
    p.join(cap)
    if p.is_alive():
        p.kill()
        p.join()
        return None, time.perf_counter() - t0
    try:
        return q.get(timeout=5)
    except Exception:  # noqa: BLE001 -- the child died (e.g. out of memory)
        return None, time.perf_counter() - t0


def accuracy(verdicts, rows):
    return sum((v >= 1.0) == ok for v, (_, _, ok) in zip(verdicts, rows)) / len(rows)


def main(args):
    print(json.dumps({"args": dataclasses.asdict(args), "python": platform.python_version(),
                      "machine": platform.machine(), "cpus": V._default_workers()}))
    try:
        import math_verify  # noqa: F401

        have_mv = not args.skip_math_verify
        mv_note = "installed" if have_mv else "installed, skipped (--skip-math-verify)"
    except ImportError:
        have_mv = False
        mv_note = "NOT INSTALLED: math-verify columns are skipped (use the bench venv, see the docstring)"
    print(f"math-verify: {mv_note}")
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs whole inputs on timeouts

    rows = realistic_mix(args, ROOT / ".." / "shared" / "data" / "bench")
    n = len(rows)
    print(f"realistic mix: {n} responses ({args.problems} problems x {args.group}), "
          f"mean length {sum(len(r) for r, _, _ in rows) / n:.0f} chars, {sum(ok for *_, ok in rows)} correct")

    V.score_batch(["\\boxed{1}"] * 4, ["1"] * 4, workers=V._default_workers())  # start the worker pool
    results = {}
    run_ours_inprocess(rows[:200], cold=True)  # imports (sympy, mpmath) happen here, not in the timing
    clear_caches()
    ours_warm, t_warm = run_ours_inprocess(rows, cold=False)
    ours_cold, t_cold = run_ours_inprocess(rows, cold=True)
    results["ours, in-process, caches on (1 core)"] = (n / t_warm, accuracy(ours_warm, rows))
    results["ours, in-process, caches cleared every verdict (1 core)"] = (n / t_cold, accuracy(ours_cold, rows))
    for w in sorted({1, V._default_workers()}):
        # fresh workers (empty caches), started and importing before the clock starts; their caches
        # then fill during the timed pass, as in training
        V._pool().close()
        V.score_batch(["\\boxed{1}"] * (4 * w), ["1"] * (4 * w), workers=w)
        t0 = time.perf_counter()
        got = V.score_batch([r for r, _, _ in rows], [g for _, g, _ in rows], workers=w, timeout=args.timeout)
        dt = time.perf_counter() - t0
        label = f"ours, score_batch, {w} worker{'s' if w > 1 else ''} (end to end)"
        results[label] = (n / dt, accuracy(got, rows))
    # small batches, as a training step with few samples per rank sends them
    t0 = time.perf_counter()
    reps = 50
    for k in range(reps):
        part = rows[k * 16 : (k + 1) * 16]
        V.score_batch([r for r, _, _ in part], [g for _, g, _ in part], timeout=args.timeout)
    small_ms = (time.perf_counter() - t0) / reps * 1000
    if have_mv:
        mv, t_mv = run_math_verify(rows)
        results["math-verify, in-process (1 core)"] = (n / t_mv, accuracy(mv, rows))
        disagree = [(g, r[-50:], ok, a, b) for (r, g, ok), a, b in zip(rows, ours_warm, mv) if a != b]
    print()
    print("| checker | verdicts/s | accuracy on the mix's labels |")
    print("| --- | ---: | ---: |")
    for k, (rate, acc) in results.items():
        print(f"| {k} | {rate:,.0f} | {acc:.4f} |")
    print(f"\nscore_batch of 16 responses (a small training step), mean over {reps} calls: {small_ms:.1f} ms")
    if have_mv:
        print(f"\nverdicts where ours and math-verify disagree: {len(disagree)} of {n}")
        seen = set()
        for g, r, ok, a, b in disagree:
            key = (g, r)
            if key in seen:
                continue
            seen.add(key)
            print(f"    gold {g!r:32} response ...{r!r}: label {ok}, ours {a}, math-verify {b}")
            if len(seen) >= 12:
                break

    print("\nknown hard cases (issue 4):")
    print("| gold | response (end) | correct | ours | math-verify |")
    print("| --- | --- | --- | --- | --- |")
    for gold, response, ok in HARD_CASES:
        ours = V.math_reward(response, gold, timeout=args.timeout)
        mvv = mv_verdict(gold, response) if have_mv else "n/a"
        print(f"| `{gold}` | `{response[-45:]}` | {ok} | {ours} | {mvv} |")

    print(f"\nhostile inputs (timeout {args.timeout} s):")
    lat = []
    kills0 = V.pool_stats()["kills"]
    for pred, gold in HOSTILE:
        resp = f"\\boxed{{{pred}}}" if len(pred) < 10_000 else pred
        t0 = time.perf_counter()
        v = V.score_batch([resp], [gold], workers=1, timeout=args.timeout)[0]
        lat.append((time.perf_counter() - t0, pred[:24], v))
    worst = max(lat)
    print(f"ours: worst verdict latency {worst[0]:.3f} s ({worst[1]!r}), all {len(lat)} verdicts in "
          f"{sum(x[0] for x in lat):.2f} s, workers killed: {V.pool_stats()['kills'] - kills0}, "
          f"pool max latency {V.pool_stats()['max_latency_s']:.3f} s")
    if have_mv:
        mv_lat = []
        for pred, gold in HOSTILE:
            v, dt = mv_hostile(pred, gold, args.hostile_cap)
            mv_lat.append((dt, pred[:24], v))
        worst = max(mv_lat)
        print(f"math-verify: worst verdict latency {worst[0]:.3f} s ({worst[1]!r}"
              f"{', killed at the cap' if worst[2] is None else ''}), all in {sum(x[0] for x in mv_lat):.2f} s")
        for (d1, p, v1), (d2, _, v2) in zip(lat, mv_lat):
            print(f"    {p!r:28} ours {d1:7.3f} s -> {v1}   math-verify {d2:7.3f} s -> {v2}")


if __name__ == "__main__":
    from common import parse_args  # the one Args -> argparse helper of every script

    main(parse_args(Args))
