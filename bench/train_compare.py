"""The paper's comparison (Tables 1 and 4) at small scale: LAD against its baselines on the embedded default.

Runs `torchrun --nproc_per_node=2 lad.py --loss <method>` (the default command, all other flags at their
defaults: same lr, steps, batch and eval for every method) once per (method, seed), one run at a time,
into runs/compare/<method>-s<seed>/, then writes runs/compare/table.md: the final held-out evaluation
(Avg@16 = accuracy, Pass@1/4/16, distinct correct answers per prompt, final training entropy) as mean +-
std over seeds, with the warm start (before RL) as a row; and runs/compare/compare.png: Pass@k per method
(k = 1..16, mean over seeds) and training entropy over steps per method. Finished runs are reused
(delete a folder to redo it).

    python bench/train_compare.py          # grpo flowrl clip-cov kl-cov entadv lad-js lad-hd, seeds 0 1 2
    python bench/train_compare.py --methods grpo lad-js lad-kl --seeds 0 1 2 3 4
    python bench/train_compare.py --table-only                      # just re-read the runs

Left out: hyper-parameter search per method (every method gets lad.py's defaults and its own flags'
defaults, which come from its authors' scripts; see README "The paper's baselines").
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

    methods: list[str] = dataclasses.field(default_factory=lambda: ["grpo", "flowrl", "clip-cov", "kl-cov", "entadv",
                                                                  "lad-js", "lad-hd"])
    """methods: a lad.py --loss other than lad, or lad-<divergence> (--loss lad --divergence <divergence>)"""
    seeds: list[str] = dataclasses.field(default_factory=lambda: ["0", "1", "2"])
    """seeds of the runs (lad.py --seed)"""
    table_only: bool = False
    """only re-read finished runs and print the table"""
    extra: list[str] = dataclasses.field(default_factory=lambda: [""])
    """extra lad.py flags, as one quoted string each (e.g. --extra "--steps 50")"""
    out_dir: str = "runs/compare"
    """the runs go to OUT_DIR/<method>-s<seed>/; table.md and compare.png to OUT_DIR"""
METRICS = [("eval/avg@n", "Avg@16"), ("eval/pass@1", "Pass@1"), ("eval/pass@4", "Pass@4"),
           ("eval/pass@16", "Pass@16"), ("eval/distinct_answers", "distinct correct / prompt"),
           ("train/entropy", "entropy"), ("train/reward_last20", "train reward (last 20 steps)")]


def flags(method):
    if method.startswith("lad-"):
        return ["--loss", "lad", "--divergence", method[4:]]
    return ["--loss", method]


def run(method, seed, extra, out_dir):
    out = out_dir / f"{method}-s{seed}"
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
    steps = [x for x in lines if "train/reward_mean" in x]     # lines[0] is the step-0 evaluation alone
    res["train/reward_last20"] = statistics.mean(x["train/reward_mean"] for x in steps[-20:])
    res["train/reward_first5"] = statistics.mean(x["train/reward_mean"] for x in steps[:5])
    res["eval0"] = {k: v for k, v in lines[0].items() if k.startswith("eval/")}    # the warm start, step 0
    res["passk"] = {k: v for k, v in final.items() if k.startswith("eval/pass@")}
    res["entropy_steps"] = [[x["step"], x["train/entropy"]] for x in lines if "train/entropy" in x]
    res["wall_s"] = wall
    (out / "done.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"  {wall:.0f}s  avg@16 {res['eval/avg@n']:.3f}  distinct {res['eval/distinct_answers']:.2f}", flush=True)
    return res


def ms(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.3f} +- {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def write_table(results, path):
    """Markdown: the warm start row, then mean +- std over seeds per method."""
    first = next(iter(results.values()))[0]["eval0"]
    rows = ["| method | seeds | " + " | ".join(n for _, n in METRICS) + " | wall s |", "|---" * (len(METRICS) + 3) + "|",
            "| warm start (step 0) | - | " + " | ".join(ms([first.get(k)]) for k, _ in METRICS) + " | - |"]
    for m, rs in results.items():
        rows.append(f"| {m} | {len(rs)} | " + " | ".join(ms([r.get(k) for r in rs]) for k, _ in METRICS) +
                    f" | {statistics.mean(r['wall_s'] for r in rs):.0f} |")
    text = "\n".join(rows) + "\n"
    path.write_text(text)
    return text


def plot(results, path):
    """Pass@k per method (mean over seeds; the warm start dashed) and training entropy over steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    warm = next(iter(results.values()))[0]["eval0"]
    ks = sorted(int(k.split("@")[1]) for k in warm if k.startswith("eval/pass@"))
    ax1.plot(ks, [warm[f"eval/pass@{k}"] for k in ks], "k--", label="warm start")
    for m, rs in results.items():
        ax1.plot(ks, [statistics.mean(r["passk"][f"eval/pass@{k}"] for r in rs) for k in ks], "o-", label=m)
        by_step = {}                   # a step that trained on no token logs entropy NaN (null): left out
        for r in rs:
            for step, e in r["entropy_steps"]:
                if e is not None:
                    by_step.setdefault(step, []).append(e)
        steps = sorted(by_step)
        ax2.plot(steps, [statistics.mean(by_step[t]) for t in steps], label=m)
    ax1.set(xscale="log", xlabel="k", ylabel="held-out Pass@k", title="Pass@k after RL (mean over seeds)")
    ax1.set_xticks(ks, [str(k) for k in ks])
    ax2.set(xlabel="step", ylabel="train/entropy (nats / token)", title="policy entropy during RL")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    a = parse_args(Args)
    a.seeds = [int(x) for x in a.seeds]
    a.extra = [w for x in a.extra for w in x.split()]
    os.chdir(ROOT)
    out_dir = ROOT / a.out_dir
    results = {m: [] for m in a.methods}
    for s in a.seeds:                  # seed-major: an interrupted sweep still has every method
        for m in a.methods:
            done = out_dir / f"{m}-s{s}" / "done.json"
            if a.table_only:
                if done.is_file():
                    results[m].append(json.loads(done.read_text()))
            else:
                results[m].append(run(m, s, a.extra, out_dir))
    results = {m: rs for m, rs in results.items() if rs}
    if not results:
        sys.exit(f"train_compare.py: no finished runs under {out_dir} (run without --table-only first)")
    print("\n" + write_table(results, out_dir / "table.md"))
    plot(results, out_dir / "compare.png")
    print(f"wrote {out_dir / 'table.md'} and {out_dir / 'compare.png'}")


if __name__ == "__main__":
    main()
