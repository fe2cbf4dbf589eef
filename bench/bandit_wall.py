"""bench/bandit_wall.py -- wall time of the whole command `python bandit.py --seeds 1`.

SPEC "Numbers to meet": Bandit: all methods, 4000 steps, one seed: <= 10 s on 2 CPU cores (the whole command).

Runs the command --runs times as a fresh process (interpreter start, imports, workers, training loop,
both figures, exit: what a user waits for), each run's wall measured around the subprocess. With
--base REF it also runs bandit.py of git commit REF (its tree exported with `git archive` into a temporary
folder) in alternation with the working tree's (new, base, base, new, ...), so that a change in this noisy
machine's load hits both sides, and reports the ratio of the medians, new / base. Per run it also
reads the training loop's own wall (bandit.py's "... s wall" line) and the load average at the start.

Commands (CPU; the bandit has no GPU path)
    python bench/bandit_wall.py                            # 5 runs of the working tree
    python bench/bandit_wall.py --runs 6 --base 71fee02    # against an older commit, alternating

Deliberately left out: the 5-seed default (`python bandit.py`: add --bandit-args ""), per-phase
profiles of the loop (a profiler's job, not a wall clock's).
"""

from __future__ import annotations

import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import parse_args  # noqa: E402


@dataclass
class Args:
    """Wall time of `python bandit.py --seeds 1` (see the module docstring)."""

    runs: int = 5
    """runs per side"""
    base: str = ""
    """git commit to compare with, run in alternation (default: none, the working tree only)"""
    bandit_args: str = "--seeds 1"
    """arguments of bandit.py (the SPEC's command; --out goes to a temporary folder)"""


def one_run(root: Path, bandit_args: str, out: str) -> dict:
    """Run bandit.py in root once; its wall (s), the loop's wall as bandit.py prints it, load at start."""
    load = os.getloadavg()[0]
    cmd = [sys.executable, "bandit.py", *shlex.split(bandit_args), "--out", out]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"bandit_wall.py: {' '.join(cmd)} in {root} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    m = re.search(r"\): ([0-9.]+) s wall", p.stdout)
    return {"wall_s": wall, "loop_s": float(m.group(1)) if m else float("nan"), "load": load}


def summary(name: str, rows: list[dict]) -> str:
    w = [r["wall_s"] for r in rows]
    loops = ", ".join(f"{r['loop_s']:.2f}" for r in rows)
    loads = ", ".join(f"{r['load']:.2f}" for r in rows)
    return (f"{name}: wall " + ", ".join(f"{x:.2f}" for x in w) + f" s; median {statistics.median(w):.2f}, "
            f"min {min(w):.2f}, max {max(w):.2f}; runs <= 10 s: {sum(x <= 10 for x in w)}/{len(w)}\n"
            f"  loop (bandit.py's own): {loops} s; load at start: {loads}")


def main(argv=None):
    args = parse_args(Args, argv, prog="bench/bandit_wall.py")
    if args.runs < 1:
        sys.exit("bandit_wall.py: --runs must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"new": ROOT}
        if args.base:
            base = Path(tmp) / "base"
            base.mkdir()
            tree = subprocess.run(["git", "-C", str(ROOT), "archive", args.base], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=tree, check=True)
            sides["base"] = base
            if (ROOT.parent / "shared").exists():                          # ../shared, as beside the checkout
                os.symlink(ROOT.parent / "shared", Path(tmp) / "shared")
        res = {k: [] for k in sides}
        order = list(sides)
        print(f"{sys.executable} bandit.py {args.bandit_args}; {os.cpu_count()} cores; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
        for i in range(args.runs):
            for k in (order if i % 2 == 0 else order[::-1]):
                res[k].append(one_run(sides[k], args.bandit_args, os.path.join(tmp, "out")))
                print(f"  run {i + 1} {k}: {res[k][-1]['wall_s']:.2f} s (loop {res[k][-1]['loop_s']:.2f} s)",
                      flush=True)
        for k, rows in res.items():
            print(summary(k if k == "new" else f"base {args.base}", rows))
        if args.base:
            med = {k: statistics.median(r["wall_s"] for r in rows) for k, rows in res.items()}
            print(f"ratio of medians new / base: {med['new'] / med['base']:.3f}")


if __name__ == "__main__":
    main()
