"""GRPO vs LAD (several divergences) on the embedded default, same budget, several seeds.

Runs `torchrun --nproc_per_node=2 lad.py` (the default command, all defaults) once per (method, seed),
one run at a time, into runs/compare/<method>-s<seed>/, then prints a markdown table of the final
held-out evaluation (Avg@16 = accuracy, Pass@k, distinct correct answers per prompt, entropy) as
mean +- std over seeds, plus wall time. Already finished runs are reused (delete the folder to redo).

    python bench/train_compare.py                                  # grpo, lad js/hd/kl, seeds 0 1 2
    python bench/train_compare.py --methods grpo lad-js --seeds 0 1 2 3 4
    python bench/train_compare.py --table-only                      # just re-read the runs

Left out: hyper-parameter search per method (every method gets lad.py's defaults; GRPO its DAPO clips).
"""

import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import parse_args  # noqa: E402


@dataclasses.dataclass
class Args:
    """GRPO vs LAD on the embedded default: one lad.py run per (method, seed), then one table."""

    methods: list[str] = dataclasses.field(default_factory=lambda: ["grpo", "lad-js", "lad-hd", "lad-kl"])
    """methods: grpo, or lad-<divergence> (lad.py --loss lad --divergence <divergence>)"""
    seeds: list[str] = dataclasses.field(default_factory=lambda: ["0", "1", "2"])
    """seeds of the runs (lad.py --seed)"""
    table_only: bool = False
    """only re-read finished runs and print the table"""
    extra: list[str] = dataclasses.field(default_factory=lambda: [""])
    """extra lad.py flags, as one quoted string each (e.g. --extra "--steps 50")"""
METRICS = [("eval/avg@n", "Avg@16"), ("eval/pass@1", "Pass@1"), ("eval/pass@4", "Pass@4"),
           ("eval/pass@16", "Pass@16"), ("eval/distinct_answers", "distinct correct / prompt"),
           ("train/entropy", "entropy"), ("train/reward_last20", "train reward (last 20 steps)")]


def flags(method):
    if method == "grpo":
        return ["--loss", "grpo"]
    loss, div = method.split("-")
    return ["--loss", loss, "--divergence", div]


def run(method, seed, extra):
    out = ROOT / "runs" / "compare" / f"{method}-s{seed}"
    if (out / "done.json").is_file():
        return json.loads((out / "done.json").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "lad.py", *flags(method), "--seed", str(seed), "--out", str(out), *extra]
    print(" ".join(cmd[1:]), flush=True)
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"{method} seed {seed} failed:\n{r.stderr[-3000:]}")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    final = lines[-1]
    res = {k: final[k] for k, _ in METRICS if k in final}
    res["train/reward_last20"] = statistics.mean(x["train/reward_mean"] for x in lines[-20:])
    res["train/reward_first5"] = statistics.mean(x["train/reward_mean"] for x in lines[1:6])
    res["eval0/avg_at_k"] = lines[0].get("eval/avg@n")
    res["eval0/distinct_correct"] = lines[0].get("eval/distinct_answers")
    res["wall_s"] = wall
    (out / "done.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"  {wall:.0f}s  avg@16 {res['eval/avg@n']:.3f}  distinct {res['eval/distinct_answers']:.2f}", flush=True)
    return res


def ms(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.3f} +- {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def main():
    a = parse_args(Args)
    a.seeds = [int(x) for x in a.seeds]
    a.extra = [w for x in a.extra for w in x.split()]
    os.chdir(ROOT)
    results = {m: [] for m in a.methods}
    for s in a.seeds:                  # seed-major: an interrupted sweep still has every method
        for m in a.methods:
            done = ROOT / "runs" / "compare" / f"{m}-s{s}" / "done.json"
            if a.table_only:
                if done.is_file():
                    results[m].append(json.loads(done.read_text()))
            else:
                results[m].append(run(m, s, a.extra))
    results = {m: rs for m, rs in results.items() if rs}
    if not results:
        sys.exit("train_compare.py: no finished runs under runs/compare/ (run without --table-only first)")
    first = next(iter(results.values()))[0]
    print(f"\nwarm start (before RL, held-out): Avg@16 {first['eval0/avg_at_k']:.3f}, "
          f"distinct correct / prompt {first['eval0/distinct_correct']:.2f}\n")
    print("| method | seeds | " + " | ".join(n for _, n in METRICS) + " | wall s |")
    print("|---" * (len(METRICS) + 3) + "|")
    for m, rs in results.items():
        print(f"| {m} | {len(rs)} | " + " | ".join(ms([r.get(k) for r in rs]) for k, _ in METRICS) +
              f" | {statistics.mean(r['wall_s'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
