"""bench/verifier_speed.py -- verifier throughput and worst-case latency, per grader, and against an
older verifier.py in the same run.

Measures, in one run on the same inputs (SPEC "Numbers to meet": >= 1000 typical math verdicts per
second per core, every verdict <= timeout + 0.1 s; docs/verifier.md, "Throughput and latency"):

1. verdicts/s on a realistic mix of RL rollouts: groups of 8 sampled responses per problem (~1.5 KB
   of reasoning, then \\boxed{...}), answers mostly integers (AIME/AMC golds from ../shared/data/bench)
   and simple fractions/decimals, some symbolic (radicals, pi, expressions, intervals, tuples,
   percentages, scientific notation); about half of the responses are correct in a different form
   from the gold, half are wrong:
   - ours in-process (the verdict function a worker runs), with its parse caches on (the RL case:
     golds and many answers repeat within a group) and cleared before every verdict (cold);
   - ours end to end through score_batch with 1 worker (pickling + pipes included) and with all cores;
   - the other graders (math-verify, verl's DAPO scorer) through score_batch with 1 worker, when installed;
2. accuracy of each against the mix's labels, and a table of known hard cases, per grader;
3. worst-case latency over hostile inputs (9^{9^{9^9}}, (x+1)^{100000}, 100000!, deep nesting,
   2 MB responses, ...) through score_batch, per grader;
4. with --base COMMIT: the rows of 1 and 3 for ours, for this verifier.py and the one of COMMIT, in
   this one process, the two versions alternating every 100-200 responses within each of --rounds
   runs (the machine's load changes from second to second; both versions see the same load), each
   run's figures and the ratios.

Commands
    python bench/verifier_speed.py                          # all graders
    python bench/verifier_speed.py --base aeb3d88 --rounds 3 --graders ours   # A/B against a commit

Deliberately left out: GPU (the verifier is CPU work); graders run in-process outside our workers
(each grader's own timeouts differ; here every grader has the same bound).
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import json
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
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
    """per-verdict time bound (seconds)"""
    graders: list[str] = field(default_factory=lambda: list(V.GRADERS))
    """graders to measure (those not installed are skipped, and said so)"""
    base: str = ""
    """a git commit of verifier.py to compare ours with in this run (empty: no comparison)"""
    rounds: int = 3
    """with --base: alternating runs of each version"""
    data: str = str(ROOT.parent / "shared" / "data" / "bench")
    """folder of the benchmark files whose AIME/AMC golds the mix uses"""


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


HARD_CASES = [  # (gold, response, correct?) -- known failures of popular checkers
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
    ("34", "... so the total is 34.\nAnswer: 34", True),
    ("7:00", "$\\boxed{5:00}$", False),
]

HOSTILE = [
    ("9^{9^{9^9}}", "1"), ("(x+1)^{100000}", "(x+1)^{99999}(x+1)"), ("100000!", "100000!"), ("{" * 5000 + "1" + "}" * 5000, "1"),
    ("(" * 5000 + "1" + ")" * 5000, "1"), ("x" * 2_000_000, "x"), ("\x00\ud800 1", "1"), ("1/0", "1"), ("0/0", "0"),
    ("\\boxed{" * 100_000, "1"), ("10^{10^{10}}", "10^{10^{10}}+1"), ("\\sqrt{" * 3000, "1"), ("e^{e^{e^{100}}}", "1"),
    ("((x+1)^{60}+(y+2)^{60})^{60}", "((x+1)^{60}+(y+2)^{60})^{61}"), ("x^{x^{x^{x^{x^{x}}}}}", "x"),
]


# ----------------------------------------------------------------------------------------------------
# Runners (a module argument: this verifier.py, or the one of --base)
# ----------------------------------------------------------------------------------------------------


def score_batch(mod, responses, golds, grader, **kw):
    """score_batch of either version (the --base commit may predate the grader option)."""
    return mod.score_batch(responses, golds, **kw) if grader == "ours" else mod.score_batch(responses, golds, grader=grader, **kw)


def run_inprocess(mod, rows, cold):
    """Verdicts and the CPU seconds of this process they took (on a shared machine the other jobs'
    load moves wall time 2x between passes, this process's CPU time far less)."""
    kind = "reward" if hasattr(mod, "GRADERS") else "math"  # the verdict kind's name before the grader option
    out = []
    t0 = time.process_time()
    for response, gold, _ in rows:
        if cold:
            mod._normalize.cache_clear()
            mod._parse.cache_clear()
        out.append(mod._verdict(kind, response, gold))
    return out, time.process_time() - t0


def accuracy(verdicts, rows):
    return sum((v >= 1.0) == ok for v, (_, _, ok) in zip(verdicts, rows)) / len(rows)


def ours_rows(mod, rows, args):
    """{row label: (verdicts/s, accuracy)} of ours: in-process warm and cold, score_batch 1 and all workers."""
    n = len(rows)
    out = {}
    mod._normalize.cache_clear()
    mod._parse.cache_clear()
    got, dt = run_inprocess(mod, rows, cold=False)
    out["ours, in-process, caches on (1 core, CPU time)"] = (n / dt, accuracy(got, rows))
    got, dt = run_inprocess(mod, rows, cold=True)
    out["ours, in-process, caches cleared every verdict (1 core, CPU time)"] = (n / dt, accuracy(got, rows))
    for w in sorted({1, V._default_workers()}):
        # fresh workers (empty caches), started and importing before the clock starts; their caches
        # then fill during the timed pass, as in training
        mod._pool().close()
        mod.score_batch(["\\boxed{1}"] * (4 * w), ["1"] * (4 * w), workers=w)
        t0 = time.perf_counter()
        got = mod.score_batch([r for r, _, _ in rows], [g for _, g, _ in rows], workers=w, timeout=args.timeout)
        out[f"ours, score_batch, {w} worker{'s' if w > 1 else ''} (end to end)"] = (n / (time.perf_counter() - t0),
                                                                                   accuracy(got, rows))
    return out


def hostile_latency(mod, grader, args):
    """(worst verdict latency, its input, all inputs' total, workers killed) through score_batch."""
    score_batch(mod, ["\\boxed{1}"], ["1"], grader, workers=1)  # warm
    kills0 = mod.pool_stats()["kills"]
    lat = []
    for pred, gold in HOSTILE:
        resp = f"\\boxed{{{pred}}}" if len(pred) < 10_000 else pred
        t0 = time.perf_counter()
        score_batch(mod, [resp], [gold], grader, workers=1, timeout=args.timeout)
        lat.append((time.perf_counter() - t0, pred[:24]))
    worst = max(lat)
    return worst[0], worst[1], sum(x[0] for x in lat), mod.pool_stats()["kills"] - kills0


def load_base(commit):
    """verifier.py of `commit` as the module verifier_base (its workers run from a temporary folder)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:verifier.py"], capture_output=True, text=True,
                         check=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="verifier-base-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "verifier.py").write_text(src)
    spec = importlib.util.spec_from_file_location("verifier_base", folder / "verifier.py")
    mod = sys.modules["verifier_base"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compare_with_base(args, rows):
    """Ours, this verifier.py against the one of --base, in one process: the two versions alternate
    every 100 responses (in-process, CPU time) or every 200 (score_batch, wall time, each version's
    own fresh pool), and on every hostile input, so that both see the same load."""
    base = load_base(args.base)
    run_inprocess(base, rows[:200], cold=True)  # imports (sympy, mpmath) before any timing
    versions = (("this", V), (args.base, base))
    figures = {}  # (row label, version) -> [per-run values]

    def alternate(step, timed):
        secs = dict.fromkeys([name for name, _ in versions], 0.0)
        for j in range(0, len(rows), step):
            for name, mod in versions if (j // step) % 2 == 0 else versions[::-1]:
                secs[name] += timed(mod, rows[j : j + step])
        return secs

    for k in range(args.rounds):
        for cold in (False, True):
            for _, mod in versions:
                mod._normalize.cache_clear()
                mod._parse.cache_clear()
            secs = alternate(100, lambda mod, part: run_inprocess(mod, part, cold)[1])
            label = f"ours, in-process, caches {'cleared every verdict' if cold else 'on'} (1 core, CPU time)"
            for name, t in secs.items():
                figures.setdefault((label, name), []).append(len(rows) / t)
        for w in sorted({1, V._default_workers()}):
            for _, mod in versions:
                mod._pool().close()
                mod.score_batch(["\\boxed{1}"] * (4 * w), ["1"] * (4 * w), workers=w)

            def timed(mod, part, w=w):
                t0 = time.perf_counter()
                mod.score_batch([r for r, _, _ in part], [g for _, g, _ in part], workers=w, timeout=args.timeout)
                return time.perf_counter() - t0

            secs = alternate(200, timed)
            for name, t in secs.items():
                figures.setdefault((f"ours, score_batch, {w} worker{'s' if w > 1 else ''} (end to end)", name),
                                   []).append(len(rows) / t)
        # hostile inputs: each input 5 times per version, alternating; the worst of the per-input medians
        lat = {name: [] for name, _ in versions}
        for _, mod in versions:
            mod._pool().close()
            mod.score_batch(["\\boxed{1}"], ["1"], workers=1)
        for pred, gold in HOSTILE:
            resp = f"\\boxed{{{pred}}}" if len(pred) < 10_000 else pred
            per = {name: [] for name, _ in versions}
            for rep in range(5):
                for name, mod in versions if rep % 2 == 0 else versions[::-1]:
                    t0 = time.perf_counter()
                    mod.score_batch([resp], [gold], workers=1, timeout=args.timeout)
                    per[name].append(time.perf_counter() - t0)
            for name, times in per.items():
                lat[name].append(statistics.median(times))
        for name, times in lat.items():
            figures.setdefault(("worst hostile verdict latency, median of 5 (s)", name), []).append(max(times))
        for _, mod in versions:
            mod._pool().close()
    print(f"\nthis verifier.py vs {args.base}, {args.rounds} runs each, alternating within every run (per-run "
          "figures; ratios this/base of the medians and of the best runs, the least disturbed by other jobs)")
    print(f"| row | this | {args.base} | ratio of medians | ratio of best |")
    print("| --- | --- | --- | ---: | ---: |")
    for label in dict.fromkeys(lbl for lbl, _ in figures):
        a, b = figures[(label, "this")], figures[(label, args.base)]
        latency = "latency" in label
        fmt = (lambda x: f"{x:.3f}") if latency else (lambda x: f"{x:,.0f}")
        best = min if latency else max
        print(f"| {label} | {', '.join(map(fmt, a))} | {', '.join(map(fmt, b))} | "
              f"{statistics.median(a) / statistics.median(b):.3f} | {best(a) / best(b):.3f} |")


def main(args):
    print(json.dumps({"args": dataclasses.asdict(args), "python": platform.python_version(),
                      "machine": platform.machine(), "cpus": V._default_workers()}))
    graders = []
    for g in args.graders:
        try:
            V._check_grader(g)
            graders.append(g)
        except (ValueError, ImportError) as e:
            print(f"grader {g!r} skipped: {e}")
    rows = realistic_mix(args, Path(args.data))
    n = len(rows)
    print(f"realistic mix: {n} responses ({args.problems} problems x {args.group}), "
          f"mean length {sum(len(r) for r, _, _ in rows) / n:.0f} chars, {sum(ok for *_, ok in rows)} correct")
    run_inprocess(V, rows[:200], cold=True)  # imports (sympy, mpmath) happen here, not in the timing

    if args.base:
        compare_with_base(args, rows)
        return
    results = ours_rows(V, rows, args) if "ours" in graders else {}
    for g in graders:
        if g != "ours":
            score_batch(V, ["\\boxed{1}"] * 4, ["1"] * 4, g, workers=1)  # start its worker
            t0 = time.perf_counter()
            got = score_batch(V, [r for r, _, _ in rows], [g_ for _, g_, _ in rows], g, workers=1, timeout=args.timeout)
            results[f"{g}, score_batch, 1 worker (end to end)"] = (n / (time.perf_counter() - t0), accuracy(got, rows))
    print("\n| grader | verdicts/s | accuracy on the mix's labels |")
    print("| --- | ---: | ---: |")
    for k, (rate, acc) in results.items():
        print(f"| {k} | {rate:,.0f} | {acc:.4f} |")
    if "ours" in graders:
        t0 = time.perf_counter()
        reps = 50
        for k in range(reps):
            part = rows[k * 16 : (k + 1) * 16]
            V.score_batch([r for r, _, _ in part], [g for _, g, _ in part], timeout=args.timeout)
        print(f"\nscore_batch of 16 responses (a small training step), mean over {reps} calls: "
              f"{(time.perf_counter() - t0) / reps * 1000:.1f} ms")

    print("\nknown hard cases:")
    print("| gold | response (end) | correct | " + " | ".join(graders) + " |")
    print("| --- | --- | --- |" + " --- |" * len(graders))
    verdicts = {g: score_batch(V, [r for _, r, _ in HARD_CASES], [g_ for g_, _, _ in HARD_CASES], g, timeout=args.timeout)
                for g in graders}
    for k, (gold, response, ok) in enumerate(HARD_CASES):
        print(f"| `{gold}` | `{response[-45:]!r}` | {ok} | " + " | ".join(str(verdicts[g][k]) for g in graders) + " |")

    print(f"\nhostile inputs ({len(HOSTILE)}, timeout {args.timeout} s, through score_batch):")
    for g in graders:
        worst, what, total, kills = hostile_latency(V, g, args)
        print(f"{g}: worst verdict latency {worst:.3f} s ({what!r}), all in {total:.2f} s, workers killed: {kills}")


if __name__ == "__main__":
    from common import parse_args  # the one Args -> argparse helper of every script

    main(parse_args(Args))
