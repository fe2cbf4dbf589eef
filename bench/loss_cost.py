"""bench/loss_cost.py -- the loss alone: forward + backward time of lad.lad_loss (each divergence) / GRPO's, on the
same tensors, each called as lad.main's update calls it.

SPEC "Numbers to meet": LAD forward+backward time / GRPO's on the same tensors (e.g. 64 x 4096 tokens) <= 1.05
(bench/step_ratio.py measures the whole step).

Both losses get the same random (B, T) float32 tensors (log-probs near -1, old log-probs a little off, one
advantage per response, 10 % padding) and lad.main's arguments: lad.lad_loss(..., divergence=f,
eta=1/--inv-eta, denom=valid tokens) and baselines.baseline_loss(lad.Args(loss="grpo"), ..., denom=...)
(GRPO/DAPO with lad.py's default knobs: clip-higher 0.2/0.28, dual-clip 10). One call = loss and stats
forward, then backward into the log-probs. Rounds of one call each, the order shuffled every round so
that machine noise hits all alike; the figure is the median over rounds of the per-round time ratio to GRPO.

Commands
    python bench/loss_cost.py --rounds 60              # 64 x 4096, float32, CPU (the recorded figure)
    python bench/loss_cost.py --rounds 50 --device cuda

Deliberately left out: the model (its forward and backward are the same for every loss: bench/step_ratio.py),
the other baselines (their step cost: bench/step_ratio.py --methods all), bf16 (lad.py computes losses in float32).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import lad  # noqa: E402
from baselines import baseline_loss  # noqa: E402
from common import parse_args  # noqa: E402


@dataclasses.dataclass
class Args:
    """Loss cost: forward+backward of lad_loss (each divergence) / GRPO's, same tensors, interleaved (SPEC <= 1.05)."""

    batch: int = 64
    """responses B of the (B, T) tensors (SPEC: 64 x 4096)"""
    tokens: int = 4096
    """tokens T per response"""
    rounds: int = 30
    """timed rounds; the figure is the median of the per-round ratios"""
    inv_eta: float = 4.0
    """LAD's 1/eta (lad.py's flag and default)"""
    device: str = "cpu"
    """torch device (cpu, cuda)"""
    threads: int = 1
    """torch CPU threads (1: as each rank of the README's `torchrun --nproc_per_node=2`; 0 = torch's default)"""
    seed: int = 0
    """seed of the tensors and of the order of each round"""


def main(a):
    if a.threads:
        torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(a.seed)
    shape = (a.batch, a.tokens)
    base = (torch.randn(shape, generator=g) * 0.1 - 1.0).to(a.device)       # logp
    old = base + (torch.randn(shape, generator=g) * 0.05).to(a.device)
    adv = torch.randn(a.batch, generator=g).to(a.device)
    mask = (torch.rand(shape, generator=g) > 0.1).float().to(a.device)
    denom = float(mask.sum())                                               # lad.main: the global token count
    grpo = lad.Args(loss="grpo")

    def step(fn):
        logp = base.clone().requires_grad_()
        loss, _ = fn(logp)
        loss.backward()
        return logp.grad

    methods = {"grpo": lambda lp: baseline_loss(grpo, lp, old, adv, mask, denom=denom)}
    for d in lad.DIVERGENCES:
        methods[f"lad-{d}"] = (lambda d: lambda lp: lad.lad_loss(lp, old, adv, mask, divergence=d,
                                                                  eta=1.0 / a.inv_eta, denom=denom))(d)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    for fn in methods.values():          # warm-up
        for _ in range(3):
            step(fn)
    rng = random.Random(a.seed)
    times = {k: [] for k in methods}
    load0 = os.getloadavg()[0]
    for _ in range(a.rounds):
        order = list(methods)
        rng.shuffle(order)
        for k in order:
            sync()
            t0 = time.perf_counter()
            step(methods[k])
            sync()
            times[k].append(time.perf_counter() - t0)

    print(f"# loss cost, {a.batch} x {a.tokens} float32 on {a.device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}), {a.rounds} rounds, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"{'method':10s} {'median ms':>10s} {'ratio to grpo (median of per-round ratios)':>45s}")
    for k in methods:
        ratio = statistics.median(t / g for t, g in zip(times[k], times["grpo"]))
        print(f"{k:10s} {1e3 * statistics.median(times[k]):10.2f} {ratio:45.3f}")


if __name__ == "__main__":
    main(parse_args(Args))
