"""Our training step against TRL's on the same job: lad.py vs TRL's GRPOTrainer with our loss (examples/trl_lad.py).

The job, the same for both: the embedded default's model (the tiny Qwen2 warm-started on builtin-sum) and
builtin-sum's 85 training prompts, --prompts-per-step prompts x --group-size responses per step, at most
--max-new-tokens new tokens at temperature 1 (no top-p, no top-k), --updates-per-rollout optimiser steps per
rollout on disjoint mini-batches, AdamW at --lr constant, the LAD loss (`lad.lad_loss`, js, 1/eta 4,
token-mean), --steps rollout steps, one process each with --threads torch threads. lad.py runs with
`--dynamic-sampling false` (TRL has no dynamic sampling: both then train every group, zero-variance ones
included) and without evaluation or intermediate checkpoints (`--eval-every 0 --save-every 0`; the final
checkpoint is written after the last timed step).

Timing: each run is a fresh child process (`--child lad|trl`), the runs interleaved (lad, trl, lad, trl, ...;
--repeats pairs per --updates-per-rollout value). Model load and setup are not timed: a run's time is
from the end of its --warmup-th rollout step to the end of its last one (lad.py: the loop's progress call
after each step's metrics are logged; TRL: `on_step_end` of the step's last optimiser step, each followed
by TRL's own logging), so everything the loop does per step is in, and steps/s = (steps - warmup) / that
time. Peak memory: the child's peak RSS (ru_maxrss; it includes each framework's imports). The figure is
the ratio lad/TRL of steps/s within each pair, with its mean and 95% t-interval over the pairs (machine
load drifts hit both runs of a pair alike).

Where the time goes: lad.py's per-phase seconds (perf/rollout_s, reward_s, logprob_s, update_s, sync_s per
step) and TRL's own profiling contexts (generate, reward, log-probs, loss; collected by replacing its
metric sink in the child), per rollout step, over the timed steps.

What differs in the work (not removed, reported; README/RESULTS say so):
- old log-probs: lad.py recomputes log pi_old of every sampled token in a separate no-grad forward (as
  verl), also with one update per rollout, and gets the entropy from it; TRL skips that pass when a batch
  is used once (updates-per-rollout 1: pi_old = pi, its `old_per_token_logps` is None) and does it with
  more updates per rollout;
- generation: lad.py's HF engine samples with a logits processor that keeps each sampled token's
  log-prob (for the rollout/trainer mismatch metrics), left-padded prompts in one generate call; TRL
  calls generate with its GenerationConfig (do_sample, temperature 1, top_p 1, top_k 0, no cache setting);
- advantages: lad.py divides by std + 1e-6, TRL by std + 1e-4; lad.py logs ~60 metrics per step (reduced
  over ranks), TRL its own.

    python bench/vs_trl.py                                    # recorded: 20 steps, 5 pairs, 1 update per rollout
    python bench/vs_trl.py --updates-per-rollout 1 4 --repeats 3
    python bench/vs_trl.py --steps 3 --repeats 1 --warmup 1   # a smoke run

Left out: several processes or GPUs (TRL's accelerate launch, lad.py's torchrun), vLLM (both can use it),
the quality of the trained models (not the same samples: both draw their own).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import parse_args  # noqa: E402
from train_compare import mean_ci  # noqa: E402


@dataclasses.dataclass
class Args:
    """lad.py vs TRL's GRPOTrainer with the LAD loss, same job: steps/s and peak memory, interleaved repeats."""

    steps: int = 20
    """rollout steps per run (lad.py and trl_lad.py --steps)"""
    warmup: int = 2
    """rollout steps at the start of each run left out of the timing"""
    repeats: int = 5
    """pairs of runs (lad.py, TRL) per --updates-per-rollout value, interleaved"""
    prompts_per_step: int = 16
    """prompts per rollout step (both)"""
    group_size: int = 8
    """responses per prompt (both)"""
    max_new_tokens: int = 12
    """response length cap (builtin-sum's 12)"""
    updates_per_rollout: list[str] = dataclasses.field(default_factory=lambda: ["1"])
    """optimiser steps per rollout, one measurement per value (e.g. 1 4)"""
    lr: float = 3e-4
    """AdamW learning rate, constant (both)"""
    divergence: str = "js"
    """LAD's f (both)"""
    inv_eta: float = 4.0
    """1/eta (both)"""
    threads: int = 1
    """torch threads of each run"""
    out_dir: str = "runs/vs_trl"
    """run folders and results.json"""
    child: str = ""
    """internal: run one measurement (lad or trl) in this process and write its JSON to --child-out"""
    child_out: str = ""
    """internal: where --child writes its JSON"""
    child_k: int = 1
    """internal: the --updates-per-rollout of the --child run"""
    child_run: str = ""
    """internal: the run folder of the --child run"""


def run_lad(a, k, folder):
    """One lad.py run in this process; per-step end times from its progress call, per-phase perf/* from metrics."""
    import lad
    os.cpu_count = lambda: a.threads          # lad.py gives one process os.cpu_count() threads
    ends, show = [], lad.show_progress

    def timed(bar, m):
        show(bar, m)
        ends.append(time.perf_counter())
    lad.show_progress = timed
    args = parse_args(lad.Args, ["--prompts-per-step", str(a.prompts_per_step), "--group-size", str(a.group_size),
                                 "--max-new-tokens", str(a.max_new_tokens), "--updates-per-rollout", str(k),
                                 "--lr", str(a.lr), "--divergence", a.divergence, "--inv-eta", str(a.inv_eta),
                                 "--steps", str(a.steps), "--dynamic-sampling", "false", "--eval-every", "0",
                                 "--save-every", "0", "--save-optimizer", "false", "--out", folder], prog="lad.py")
    lad.main(args)
    rows = [json.loads(x) for x in (Path(folder) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    timed_rows = [r for r in rows if r["step"] > a.warmup]
    phases = {k.split("/")[1]: sum(r[k] for r in timed_rows) / len(timed_rows)
              for k in ("perf/rollout_s", "perf/reward_s", "perf/logprob_s", "perf/update_s", "perf/sync_s")}
    phases["step_s (perf/step_s)"] = sum(r["perf/step_s"] for r in timed_rows) / len(timed_rows)
    return ends, phases, {"response_len": sum(r["rollout/response_len_mean"] for r in timed_rows) / len(timed_rows)}


def run_trl(a, k, folder):
    """One TRL run in this process (examples/trl_lad.py's build + train); end times of each rollout's last
    optimiser step from a callback, TRL's profiling contexts collected per name."""
    import torch
    torch.set_num_threads(a.threads)
    from transformers import TrainerCallback
    from trl.extras import profiling

    sys.path.insert(0, str(ROOT / "examples"))
    import trl_lad

    prof = {}
    profiling.ProfilingContext._log_metrics = lambda self, d: prof.setdefault(self.name, []).append(
        (self.step, d))
    ends = []

    class Ends(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % k == 0:
                ends.append(time.perf_counter())

    targs = parse_args(trl_lad.Args, ["--prompts-per-step", str(a.prompts_per_step), "--group-size", str(a.group_size),
                                      "--max-new-tokens", str(a.max_new_tokens), "--updates-per-rollout", str(k),
                                      "--lr", str(a.lr), "--divergence", a.divergence, "--inv-eta", str(a.inv_eta),
                                      "--steps", str(a.steps), "--out", folder], prog="trl_lad.py")
    trainer = trl_lad.build(targs)
    trainer.add_callback(Ends)
    trainer.train()
    lens = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    # profiling contexts of the timed rollout steps (their optimiser steps), seconds per rollout step
    n = a.steps - a.warmup
    phases = {name.split(".", 1)[1]: sum(d for step, d in v if step >= a.warmup * k) / n for name, v in prof.items()}
    return ends, phases, {"response_len": sum(lens[a.warmup * k:]) / max(1, len(lens[a.warmup * k:]))}


def child(a):
    folder = a.child_run
    ends, phases, extra = (run_lad if a.child == "lad" else run_trl)(a, a.child_k, folder)
    assert len(ends) == a.steps, f"{a.child}: {len(ends)} step ends for {a.steps} steps"
    timed = ends[a.warmup - 1:] if a.warmup else ends
    span = timed[-1] - timed[0] if a.warmup else None
    res = {"steps_per_s": (len(timed) - 1) / span if span else None,
           "step_s": [b - e for e, b in zip(ends, ends[1:])], "phases_per_step_s": phases,
           "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}
    Path(a.child_out).write_text(json.dumps(res) + "\n")


def main():
    a = parse_args(Args)
    if a.child:
        return child(a)
    if a.warmup < 1 or a.warmup >= a.steps:
        sys.exit("vs_trl.py: error: --warmup must be at least 1 and below --steps")
    os.chdir(ROOT)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    print(f"# lad.py vs TRL {__import__('importlib.metadata').metadata.version('trl')}: {a.prompts_per_step} prompts x "
          f"{a.group_size}, {a.max_new_tokens} new tokens, lr {a.lr:g}, LAD {a.divergence} 1/eta {a.inv_eta:g}, "
          f"{a.steps} steps ({a.warmup} untimed), {a.threads} thread(s) per run; {platform.machine()}, "
          f"{os.cpu_count()} cores; load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results, t0 = {}, time.time()
    for k in [int(x) for x in a.updates_per_rollout]:
        pairs = []
        for rep in range(a.repeats):
            pair = {}
            for who in (("lad", "trl") if rep % 2 == 0 else ("trl", "lad")):      # alternate who goes first
                folder = out / f"{who}-k{k}-r{rep}"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", who, "--child-k", str(k),
                       "--child-run", str(folder), "--child-out", str(out / f"{who}-k{k}-r{rep}.json"),
                       *sum(([f"--{f.name.replace('_', '-')}", *(getattr(a, f.name) if isinstance(getattr(a, f.name), list)
                                                                 else [str(getattr(a, f.name))])]
                             for f in dataclasses.fields(Args) if not f.name.startswith("child")
                             and f.name != "updates_per_rollout"), [])]
                with open(out / f"{who}-k{k}-r{rep}.log", "w") as log:
                    r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                if r.returncode != 0:
                    sys.exit(f"vs_trl.py: the {who} run failed; see {out / f'{who}-k{k}-r{rep}.log'}")
                pair[who] = json.loads((out / f"{who}-k{k}-r{rep}.json").read_text())
            pair["ratio"] = pair["lad"]["steps_per_s"] / pair["trl"]["steps_per_s"]
            pair["load_avg"] = os.getloadavg()[0]
            print(f"updates/rollout {k}, pair {rep}: lad {pair['lad']['steps_per_s']:.2f} steps/s, "
                  f"TRL {pair['trl']['steps_per_s']:.2f} steps/s, ratio {pair['ratio']:.3f}; peak RSS "
                  f"{pair['lad']['max_rss_mb']:.0f} / {pair['trl']['max_rss_mb']:.0f} MB; load {pair['load_avg']:.1f}",
                  flush=True)
            pairs.append(pair)
        results[k] = pairs
    print(f"\n{'upd/rollout':>11} | {'lad steps/s':>16} | {'TRL steps/s':>16} | {'ratio lad/TRL [95% CI]':>26} | "
          f"{'peak RSS lad / TRL MB':>22}")
    summary = {}
    for k, pairs in results.items():
        lad_s, trl_s, ratio = (mean_ci([p[w] for p in pairs]) if w == "ratio" else
                               mean_ci([p[w]["steps_per_s"] for p in pairs]) for w in ("lad", "trl", "ratio"))
        rss = [max(p[w]["max_rss_mb"] for p in pairs) for w in ("lad", "trl")]
        summary[k] = {"lad_steps_per_s": lad_s, "trl_steps_per_s": trl_s, "ratio": ratio, "peak_rss_mb": rss,
                      "lad_phases": {n: sum(p["lad"]["phases_per_step_s"][n] for p in pairs) / len(pairs)
                                     for n in pairs[0]["lad"]["phases_per_step_s"]},
                      "trl_phases": {n: sum(p["trl"]["phases_per_step_s"].get(n, 0) for p in pairs) / len(pairs)
                                     for n in pairs[0]["trl"]["phases_per_step_s"]},
                      "response_len": [sum(p[w]["response_len"] for p in pairs) / len(pairs) for w in ("lad", "trl")]}
        ci = "" if ratio[1] != ratio[1] else f" [{ratio[1]:.3f}, {ratio[2]:.3f}]"
        print(f"{k:>11} | {lad_s[0]:16.2f} | {trl_s[0]:16.2f} | {ratio[0]:>12.3f}{ci:>14} | {rss[0]:>10.0f} / {rss[1]:<9.0f}")
    for k, s in summary.items():
        print(f"\nupdates/rollout {k}: seconds per rollout step by phase (mean over the timed steps and runs); "
              f"response length lad {s['response_len'][0]:.2f}, TRL {s['response_len'][1]:.2f} tokens")
        print("  lad.py: " + ", ".join(f"{n} {v:.3f}" for n, v in s["lad_phases"].items()))
        print("  TRL:    " + ", ".join(f"{n} {v:.3f}" for n, v in sorted(s["trl_phases"].items(), key=lambda kv: -kv[1])))
    (out / "results.json").write_text(json.dumps({"args": dataclasses.asdict(a), "pairs": results, "summary": summary,
                                                  "wall_s": time.time() - t0}, indent=1) + "\n")
    print(f"\nwall {time.time() - t0:.0f} s; load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
