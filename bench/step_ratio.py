"""bench/step_ratio.py -- the whole training step: LAD step time / GRPO step time, and every method's cost
relative to GRPO (the paper's Figure 5 at our scale), measured on lad.py's own training loop.

SPEC "Numbers to meet": LAD step time / GRPO step time <= 1.02 at equal batch and response lengths; every
method's update time per token relative to GRPO, measured in one run (Figure 5); LAD <= 1.02.

What runs: lad.py itself (`torchrun --nproc_per_node=2 lad.py ...`, the README's CPU command; or lad.main in
this process with --nproc-per-node 1), on bench/workload.py's workload: a random-init model of the shape
(tiny: tiny.py's 0.89M architecture; qwen2-512x8: 57M parameters, vocabulary 32,000, where the model, not
the loss, is nearly all of the step), a synthetic train file, --dynamic-sampling false, --eval-every 0,
responses of --max-new-tokens (a random model almost never samples EOS). Every reward is 0, so GRPO's
gradient is exactly 0 and LAD's 0 up to rounding: the weights stay put, and the LAD and GRPO runs of one
seed sample the same tokens, so they do the same work apart from the loss (checked: the response lengths
of both runs are printed and compared step by step). Each figure is lad.py's own per-phase timer from its
metrics.jsonl (perf/rollout_s, reward_s, logprob_s, update_s, sync_s, step_s; max over ranks), the first
--warmup steps of each run dropped.

Timing: rounds of one run per method, the order alternating (LAD/GRPO: LAD first on even rounds; --methods:
rotating), so that a drift in this shared machine's load hits every method alike; or, with --concurrent, the
two runs of a pair (LAD and GRPO; --methods: each method and a GRPO run of its own) at the same time, so that
both see the same load moment by moment (each then runs slower, alike). Per run the median of its steps, per
round the ratio to GRPO's run, the figure the median over rounds with a distribution-free 95% CI of that
median, its IQR, min and max. The rollout phase (sampling the same tokens from the same weights) and the
old-log-prob phase (the same forward) do identical work in both runs: their ratios are A/A controls of the
noise.

Commands (CPU; on this 2-core machine under a load of 10, tiny: 15-20 minutes, qwen2-512x8: about an hour)
    python bench/step_ratio.py                                         # LAD/GRPO: tiny, then qwen2-512x8
    python bench/step_ratio.py --models tiny --concurrent true --rounds 20 --steps 11   # recorded (RESULTS.md)
    python bench/step_ratio.py --models qwen2-512x8 --concurrent true                   # recorded
    python bench/step_ratio.py --methods all --models tiny --concurrent true           # recorded: Figure 5
    python bench/step_ratio.py --methods grpo,flowrl,lad-js --models tiny --rounds 2   # a quick look

--methods (Figure 5): for each method, lad.py's update phase per trained response token (perf/update_s over
the step's response tokens), its trainer time per token (old log-probs, including pi_ref's forward where
the method needs it (FlowRL), plus update) and its whole step per token, each as the median over rounds of
the ratio to GRPO's run in the same round. Methods: lad-<f> (--loss lad --divergence f) or a baseline name.

Deliberately left out: dynamic sampling (every group trains, so equal batches), evaluation and
checkpoints (outside the step), real rewards (with nonzero advantages the runs' weights, hence their
samples, would drift apart: unequal work), GPU figures (bench/gpu_step.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload  # noqa: E402  (puts the repository root on sys.path)

from common import parse_args  # noqa: E402


@dataclasses.dataclass
class Args:
    """LAD / GRPO step time on lad.py's own loop (SPEC <= 1.02); --methods: every method vs GRPO (Figure 5)."""

    DEPRECATED_FLAGS = {"prompts": "prompts_per_step", "response_len": "max_new_tokens"}

    models: str = "tiny,qwen2-512x8"
    """comma-separated model shapes (bench/workload.py: tiny, qwen2-512x8, 0.5b, ...), random init"""
    methods: str = ""
    """Figure 5: comma-separated methods to compare with GRPO (lad-<f> or a baseline), or all
    (grpo,flowrl,clip-cov,kl-cov,entadv,lad-js); empty = the LAD / GRPO step ratio"""
    rounds: int = 0
    """timed rounds (one run per method each); 0 = the shape's preset (tiny 10, qwen2-512x8 6; --methods: 5, 3)"""
    steps: int = 0
    """rollout steps per run, --warmup of them untimed; 0 = the shape's preset (tiny 6, qwen2-512x8 3)"""
    warmup: int = 1
    """first steps of every run left out of its figures (allocator growth, AdamW state, the verifier's workers)"""
    prompts_per_step: int = 0
    """prompts per step over all ranks (lad.py's flag); 0 = preset (tiny 16, qwen2-512x8 2)"""
    group_size: int = 8
    """responses per prompt (lad.py's flag and default)"""
    max_new_tokens: int = 0
    """response length in tokens (lad.py's cap; a random model reaches it); 0 = preset (tiny 12, qwen2-512x8 192)"""
    prompt_len: int = 0
    """prompt tokens of the synthetic rows; 0 = preset (tiny 8, qwen2-512x8 32)"""
    micro_batch: int = 0
    """responses per forward/backward on one rank (lad.py's flag); 0 = preset (tiny 64 as lad.py, qwen2-512x8 2)"""
    updates_per_rollout: int = 4
    """optimiser steps per rollout (lad.py's flag and default)"""
    logprob_chunk: int = 1024
    """response tokens per log-softmax chunk (lad.py's flag and default)"""
    divergence: str = "js"
    """LAD's f (lad.py's flag and default)"""
    inv_eta: float = 4.0
    """LAD's 1/eta (lad.py's flag and default)"""
    concurrent: bool = False
    """run each round's two runs (LAD and GRPO; --methods: each method and a GRPO run of its own) at the same
    time, so that both see the same machine load, instead of one after another"""
    nproc_per_node: int = 2
    """ranks: 2 = `torchrun --nproc_per_node=2 lad.py` (the README's CPU command, one torch thread per rank);
    1 = lad.main in this process (python lad.py: every core's threads in one process)"""
    seed: int = 0
    """seed of the runs (lad.py's flag) and of the random-init model"""


PRESETS = {
    "tiny": dict(rounds=10, steps=6, prompts_per_step=16, max_new_tokens=12, prompt_len=8, micro_batch=64),
    "qwen2-512x8": dict(rounds=6, steps=3, prompts_per_step=2, max_new_tokens=192, prompt_len=32, micro_batch=2),
}
PHASES = ("rollout", "reward", "logprob", "update", "sync", "step")
ALL_METHODS = "grpo,flowrl,clip-cov,kl-cov,entadv,lad-js"


def method_flags(m, a):
    """lad.py flags of a method: lad (this script's --divergence), lad-<f>, or a baseline's --loss."""
    if m == "lad" or m.startswith("lad-"):
        return dict(loss="lad", divergence=m[4:] or a.divergence, inv_eta=a.inv_eta)
    return dict(loss=m)


def settings(name, a):
    """The run geometry of one model shape: the preset, overridden by the flags given."""
    g = dict(PRESETS.get(name, PRESETS["qwen2-512x8"]))
    for k in g:
        if getattr(a, k):
            g[k] = getattr(a, k)
    if a.methods and not a.rounds:
        g["rounds"] = {"tiny": 5}.get(name, 3)
    if g["steps"] <= a.warmup:
        sys.exit(f"step_ratio.py: error: --steps {g['steps']} leaves no timed step after --warmup {a.warmup}")
    return g


def run_args(m, model, data, g, a):
    """lad.Args of one run of method m on the workload."""
    return workload.lad_args(model, data, **method_flags(m, a), steps=g["steps"], seed=a.seed,
                             prompts_per_step=g["prompts_per_step"], group_size=a.group_size,
                             max_new_tokens=g["max_new_tokens"], micro_batch=g["micro_batch"],
                             updates_per_rollout=a.updates_per_rollout, logprob_chunk=a.logprob_chunk)


def figures(rows, g, a):
    """Per timed step of one run: each phase's seconds, the step's response tokens, the mean response length."""
    rows = rows[a.warmup:]
    n_resp = g["prompts_per_step"] * a.group_size
    out = {p: [r[f"perf/{p}_s"] for r in rows] for p in PHASES}
    out["tokens"] = [workload.step_tokens(r, g["prompt_len"], n_resp)[1] for r in rows]
    out["len"] = [r["rollout/response_len_mean"] for r in rows]
    return out


def run_round(methods, model, data, g, a, loads):
    """One run of each method, one after another in the given order or (--concurrent) all at the same time;
    returns {method: figures}."""
    loads.append(os.getloadavg()[0])
    if a.concurrent:
        started = {m: workload.launch_lad(run_args(m, model, data, g, a), a.nproc_per_node) for m in methods}
        return {m: figures(workload.wait_lad(h), g, a) for m, h in started.items()}
    return {m: figures(workload.run_lad(run_args(m, model, data, g, a), a.nproc_per_node), g, a) for m in methods}


def median_ci(x, conf=0.95):
    """Distribution-free CI of the median: order statistics k and n+1-k, k from Binomial(n, 1/2)."""
    x, n, cdf, k = sorted(x), len(x), 0.0, 0
    for j in range(n + 1):
        cdf += math.comb(n, j) / 2 ** n
        if cdf > (1 - conf) / 2:
            break
        k = j + 1
    return (x[k - 1], x[n - k]) if k else (x[0], x[-1])


def describe(label, r):
    q = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else [r[0], r[0], r[0]]
    med, (lo, hi) = statistics.median(r), median_ci(r)
    print(f"{label}: median {med:.4f}, 95% CI of the median [{lo:.4f}, {hi:.4f}], IQR [{q[0]:.4f}, {q[2]:.4f}], "
          f"min {min(r):.4f}, max {max(r):.4f} ({len(r)} rounds)")
    return med, lo, hi


def prepare(name, a, tmp):
    g = settings(name, a)
    model = workload.model_dir(name, seed=a.seed)
    data = workload.train_file(Path(tmp) / f"train-{name}.jsonl", g["prompt_len"], a.seed)
    cfg = workload.make_config(name)
    print(f"\n## model {name}: {workload.count_params(cfg) / 1e6:.2f}M params, vocab {cfg.vocab_size}; "
          f"{g['prompts_per_step']} prompts x {a.group_size} responses per step over {a.nproc_per_node} rank(s), "
          f"prompts of {g['prompt_len']} + responses of <= {g['max_new_tokens']} tokens; micro-batch "
          f"{g['micro_batch']}, {a.updates_per_rollout} AdamW steps per rollout, logprob chunk {a.logprob_chunk}; "
          f"{g['rounds']} rounds of {g['steps']}-step runs ({g['steps'] - a.warmup} timed)", flush=True)
    return g, model, data


def step_ratio(name, a, loads, tmp):
    g, model, data = prepare(name, a, tmp)
    runs = {"lad": [], "grpo": []}
    for rnd in range(g["rounds"]):
        res = run_round(("lad", "grpo") if rnd % 2 == 0 else ("grpo", "lad"), model, data, g, a, loads)
        for m in runs:
            runs[m].append(res[m])
        x, y = runs["lad"][-1], runs["grpo"][-1]
        print(f"  round {rnd + 1}: step LAD {statistics.median(x['step']):.3f} s, GRPO "
              f"{statistics.median(y['step']):.3f} s, ratio {statistics.median(x['step']) / statistics.median(y['step']):.4f}"
              f"; same response lengths: {'yes' if x['len'] == y['len'] else 'NO'}; load {loads[-1]:.1f}", flush=True)
    med = {m: [{p: statistics.median(r[p]) for p in PHASES} for r in rs] for m, rs in runs.items()}
    print(f"{'phase':10s} {'LAD ms':>10s} {'GRPO ms':>10s} {'LAD/GRPO':>10s}   (medians over runs of each run's "
          f"median; ratio = median of per-round ratios)")
    for p in PHASES:
        r = [x[p] / y[p] for x, y in zip(med["lad"], med["grpo"]) if y[p] > 0]
        print(f"{p:10s} {1e3 * statistics.median(t[p] for t in med['lad']):10.2f} "
              f"{1e3 * statistics.median(t[p] for t in med['grpo']):10.2f} "
              f"{statistics.median(r) if r else float('nan'):10.4f}")
    same = sum(x["len"] == y["len"] for x, y in zip(runs["lad"], runs["grpo"]))
    print(f"A/A controls: rollout and logprob do identical work in both runs (ratio 1 up to noise); "
          f"response lengths identical step by step in {same}/{g['rounds']} rounds")
    med_r, lo, hi = describe("step ratio LAD/GRPO (perf/step_s)",
                             [x["step"] / y["step"] for x, y in zip(med["lad"], med["grpo"])])
    describe("update ratio LAD/GRPO (perf/update_s)", [x["update"] / y["update"] for x, y in zip(med["lad"], med["grpo"])])
    verdict = ("met" if hi <= 1.02 else "MISSED" if lo > 1.02 else
               f"not resolved: the 95% CI [{lo:.4f}, {hi:.4f}] contains 1.02 (median {med_r:.4f})")
    print(f"target LAD/GRPO step time <= 1.02: {verdict}", flush=True)


def figure5(name, a, loads, tmp):
    g, model, data = prepare(name, a, tmp)
    methods = [m.strip() for m in (ALL_METHODS if a.methods == "all" else a.methods).split(",") if m.strip()]
    if "grpo" not in methods:
        methods.insert(0, "grpo")
    def per_token(r):
        tok = r["tokens"]
        return {"update_ms": 1e3 * statistics.median(r["update"]),
                "update": statistics.median(u / t for u, t in zip(r["update"], tok)),
                "trainer": statistics.median((lp + u) / t for lp, u, t in zip(r["logprob"], r["update"], tok)),
                "step": statistics.median(s / t for s, t in zip(r["step"], tok)), "tokens": statistics.median(tok)}

    per = {m: [] for m in methods}          # per round: (the method's per-token medians, its GRPO run's)
    for rnd in range(g["rounds"]):
        order = methods[rnd % len(methods):] + methods[:rnd % len(methods)]
        if a.concurrent:                    # each method at the same time as a GRPO run of its own
            for m in (x for x in order if x != "grpo"):
                res = run_round((m, "grpo") if rnd % 2 == 0 else ("grpo", m), model, data, g, a, loads)
                per[m].append((per_token(res[m]), per_token(res["grpo"])))
                per["grpo"].append((per_token(res["grpo"]),) * 2)
        else:
            res = run_round(order, model, data, g, a, loads)
            for m in methods:
                per[m].append((per_token(res[m]), per_token(res["grpo"])))
        print(f"  round {rnd + 1}/{g['rounds']} done; load {loads[-1]:.1f}", flush=True)
    print(f"{'method':10s} {'update ms':>10s} {'us/token':>10s} {'/ GRPO':>8s}  {'95% CI':>16s}  "
          f"{'trainer / GRPO':>14s}  {'step / GRPO':>11s}  {'tokens/step':>11s}")
    for m in methods:
        ratio = {k: [x[k] / y[k] for x, y in per[m]] for k in ("update", "trainer", "step")}
        lo, hi = median_ci(ratio["update"])
        print(f"{m:10s} {statistics.median(x['update_ms'] for x, _ in per[m]):10.2f} "
              f"{1e6 * statistics.median(x['update'] for x, _ in per[m]):10.1f} {statistics.median(ratio['update']):8.3f}  "
              f"[{lo:.3f}, {hi:.3f}]  {statistics.median(ratio['trainer']):14.3f}  {statistics.median(ratio['step']):11.3f}"
              f"  {statistics.median(x['tokens'] for x, _ in per[m]):11.0f}", flush=True)
    print("(update = perf/update_s per response token; trainer = perf/logprob_s + perf/update_s per token, which "
          "holds FlowRL's pi_ref forward; step = perf/step_s per token; each the median over rounds of the "
          "per-round ratio to GRPO)")


def main(a):
    loads = [os.getloadavg()[0]]
    print(f"# step ratio on lad.py's loop; machine {platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {a.nproc_per_node} rank(s); LAD {a.divergence} 1/eta {a.inv_eta:g}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            (figure5 if a.methods else step_ratio)(name.strip(), a, loads, tmp)
    print(f"\n1-minute load average over the run: min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
          f"max {max(loads):.2f}")


if __name__ == "__main__":
    main(parse_args(Args))
