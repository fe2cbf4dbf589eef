"""Loss cost: forward+backward time of lad_loss (each divergence) / grpo_loss's, same tensors.

Issue 2's figure. Both losses see the same random (B, T) float32 tensors (default 64 x 4096, CPU),
measured interleaved in one run (method order shuffled every round so that machine noise hits all
alike); the figure is the median over rounds of the per-round ratio.

    python bench/loss_cost.py                       # 64 x 4096, float32, CPU
    python bench/loss_cost.py --rounds 50 --device cuda
"""

import dataclasses
import os
import platform
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import lad  # noqa: E402



@dataclasses.dataclass
class Args:
    """Loss cost: forward+backward of lad_loss (each divergence) / grpo_loss's, same tensors, interleaved."""

    batch: int = 64
    """responses B of the (B, T) tensors (SPEC: 64 x 4096)"""
    tokens: int = 4096
    """tokens T per response"""
    rounds: int = 30
    """timed rounds; the figure is the median of the per-round ratios"""
    device: str = "cpu"
    """torch device (cpu, cuda)"""
    threads: int = 0
    """torch CPU threads (0 = torch default)"""


a = lad.parse_args(Args)
if a.threads:
    torch.set_num_threads(a.threads)

g = torch.Generator().manual_seed(0)
shape = (a.batch, a.tokens)
base = (torch.randn(shape, generator=g) * 0.1 - 1.0).to(a.device)       # logp
old = (base + torch.randn(shape, generator=g).to(a.device) * 0.05)
adv = torch.randn(a.batch, generator=g).to(a.device)
mask = (torch.rand(shape, generator=g) > 0.1).float().to(a.device)


def step(fn):
    logp = base.clone().requires_grad_()
    loss, _ = fn(logp, old, adv, mask)
    loss.backward()
    return logp.grad


methods = {"grpo": lambda *t: lad.grpo_loss(*t)}
for d in lad.DIVERGENCES:
    methods[f"lad-{d}"] = (lambda d: lambda *t: lad.lad_loss(*t, divergence=d, eta=0.25))(d)

sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
for fn in methods.values():          # warm-up
    for _ in range(3):
        step(fn)
times = {k: [] for k in methods}
for _ in range(a.rounds):
    order = list(methods)
    random.shuffle(order)
    for k in order:
        sync()
        t0 = time.perf_counter()
        step(methods[k])
        sync()
        times[k].append(time.perf_counter() - t0)

print(f"# loss cost, {a.batch} x {a.tokens} float32 on {a.device} ({platform.processor() or platform.machine()}, "
      f"{torch.get_num_threads()} threads, torch {torch.__version__}), {a.rounds} rounds")
print(f"{'method':10s} {'median ms':>10s} {'ratio to grpo (median of per-round ratios)':>45s}")
for k in methods:
    ratio = statistics.median(t / g for t, g in zip(times[k], times["grpo"]))
    print(f"{k:10s} {1e3 * statistics.median(times[k]):10.2f} {ratio:45.3f}")
