"""bench/code_speed.py -- sandbox.py vs EvalPlus's own untrusted_check on all 164 HumanEval+ problems.

Both sides check the canonical solution of every problem on its base + plus inputs against the same
expected outputs (sandbox.py's cached canonical run), with the same number of worker threads, in one
run: the two sides alternate for --rounds rounds (ours, EvalPlus, ours, EvalPlus, ...) so that a change
in the machine's load hits both. Reported per side and round: total seconds, programs per second,
passes, the worst single program. Then where our time goes (--profile true): the start of one
sandboxed interpreter (bwrap + python -I -S + harness) on a one-test problem, the same without bwrap,
and the cost per test (a trivial function on 1000 inputs).
Isolation: sandbox.py = bubblewrap namespaces (pid/net/ipc/uts/mount; a host uid of the sandbox's own
when this process is root, else a user namespace), a seccomp filter (no fork/exec of processes,
namespaces, keyrings, memfd, ...), read-only root, tmpfs /tmp, a fresh interpreter per program, rlimits,
audit hook, parent-side comparison with EvalPlus's own oracles; EvalPlus = a forked copy of the checking
process with rlimits and monkey-patched os/shutil functions ("reliability guard"), comparison inside the
child (a program can forge a pass there).

Commands
    pip install --no-deps evalplus==0.3.1            # EvalPlus 0.3.1 (its checker needs no further packages)
    python bench/code_speed.py                       # 2 rounds, workers = usable cores
    python bench/code_speed.py --workers 3 --rounds 1 --profile false

Deliberately left out: MBPP+ (no copy in ../shared/data), EvalPlus's own expected-output computation
(both sides use ours, computed once before the timed rounds).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sandbox  # noqa: E402
from common import parse_args  # noqa: E402


@dataclass
class Args:
    """sandbox.py vs EvalPlus on HumanEval+ (see the module docstring)."""

    workers: int = 0
    """worker threads on each side (0: sandbox.py's default, usable cores per rank)"""
    data: str = str(ROOT.parent / "shared" / "data" / "bench" / "humanevalplus.jsonl")
    """the HumanEval+ file (EvalPlus format)"""
    rounds: int = 2
    """alternating rounds of the two sides"""
    profile: bool = True
    """also measure the start cost and the per-test cost of one sandboxed program"""
    out: str = ""
    """write the JSON result here too (default: print only)"""


def timed_map(fn, n: int, workers: int):
    """(total seconds, [fn(i)]) over range(n) on a thread pool."""
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        res = list(ex.map(fn, range(n)))
    return time.perf_counter() - t, res


def side_stats(total: float, res: list, n: int) -> dict:
    return {"total_s": round(total, 2), "programs_per_s": round(n / total, 2),
            "passed": sum(ok for ok, _ in res), "worst_program_s": round(max(d for _, d in res), 3)}


def profile() -> dict:
    """Median wall times of one program's pieces (serial, 20 repeats each)."""
    one = sandbox.parse_code_row({"problem": "f", "inputs": [[1]], "outputs": [1], "fn_name": "f"}, "profile:1")
    many = sandbox.parse_code_row({"problem": "f", "inputs": [[i] for i in range(1000)],
                                   "outputs": list(range(1000)), "fn_name": "f"}, "profile:2")
    prog = "```python\ndef f(x):\n    return x\n```"

    def med(fn, reps=20):
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            v = fn()
            ts.append(time.perf_counter() - t)
            assert v.reward == 1.0, v
        return sorted(ts)[reps // 2]

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = med(lambda: sandbox.run_problem(prog, one))
        start_weak = med(lambda: sandbox.run_problem(prog, one, weak_sandbox=True))
    thousand = med(lambda: sandbox.run_problem(prog, many), 10)
    return {"program_1_test_ms": round(1000 * start, 1),
            "program_1_test_without_bwrap_ms": round(1000 * start_weak, 1),
            "per_test_us": round(1e6 * (thousand - start) / 999, 1)}


def main(argv=None) -> int:
    a = parse_args(Args, argv)
    workers = a.workers or sandbox._default_workers()
    rows = [json.loads(ln) for ln in open(a.data)]
    probs = [sandbox.parse_code_row(r, f"{a.data}:{i + 1}") for i, r in enumerate(rows)]
    resp = ["```python\n" + r["prompt"] + r["canonical_solution"] + "\n```" for r in rows]
    load0 = os.getloadavg()
    t_exp, exps = timed_map(lambda i: sandbox._expected(probs[i], sandbox.PER_TEST_S, sandbox.TOTAL_S,
                                                        sandbox.MEMORY_MB, False)[0], len(rows), workers)
    try:
        import evalplus
        from evalplus.eval import PASS, untrusted_check
    except ImportError as e:
        untrusted_check = None
        why = f"evalplus not importable ({e}); pip install --no-deps evalplus==0.3.1"

    def ours(i):
        t0 = time.perf_counter()
        v = sandbox.run_problem(resp[i], probs[i])
        return v.reward == 1.0 and v.base_reward == 1.0, time.perf_counter() - t0

    def theirs(i):
        r, t0 = rows[i], time.perf_counter()
        inputs = r["base_input"] + (r["plus_input"] or [])
        stat, _ = untrusted_check("humaneval", r["prompt"] + r["canonical_solution"], inputs,
                                  r["entry_point"], exps[i], float(r["atol"] or 0), [1.0] * len(inputs))
        return stat == PASS, time.perf_counter() - t0

    out = {"problems": len(rows), "workers": workers, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "sandbox_mode": sandbox.sandbox_mode(),
           "python": platform.python_version(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "load_average_start": [round(x, 2) for x in load0], "expected_outputs_s": round(t_exp, 2),
           "evalplus": evalplus.__version__ if untrusted_check else why, "rounds": []}
    for k in range(a.rounds):
        rnd = {"ours": side_stats(*timed_map(ours, len(rows), workers), len(rows))}
        if untrusted_check:
            rnd["evalplus"] = side_stats(*timed_map(theirs, len(rows), workers), len(rows))
            rnd["speed_ratio_ours_over_evalplus"] = round(rnd["evalplus"]["total_s"] / rnd["ours"]["total_s"], 3)
        out["rounds"].append(rnd)
        print(f"round {k + 1}: {json.dumps(rnd)}", file=sys.stderr, flush=True)
    if untrusted_check:
        tot = [sum(r[s]["total_s"] for r in out["rounds"]) for s in ("ours", "evalplus")]
        out["speed_ratio_all_rounds"] = round(tot[1] / tot[0], 3)
    if a.profile:
        out["profile"] = profile()
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
