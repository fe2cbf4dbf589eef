"""Step cost: LAD trainer step time / GRPO trainer step time at equal batch and response lengths.

SPEC "Numbers to meet": LAD step time / GRPO step time <= 1.02 (bench/loss_cost.py measures the loss
alone). One trainer step here is lad.py's, the very functions the training loop calls (lad.old_logprobs:
the old-log-prob pass without gradient; lad.update_policy: `updates_per_rollout` AdamW steps over a
shuffled split of the batch, each accumulated over micro-batches with the global token-mean
denominator, backward, clip_grad_norm_), with the loss chosen by lad.make_loss. The two objectives
differ only in the loss. Both see the same synthetic rollouts (same prompts, response tokens and
lengths, rewards, advantages) and start every timed step from the same weights and optimiser state
(restored, untimed, before each step), so each step does the same work apart from the loss.

Timing: rounds of one LAD step and one GRPO step, the order alternating (LAD first on even rounds,
GRPO first on odd ones) so that a drift in machine load hits both alike; the figure is the median over
rounds of that round's LAD time / GRPO time (wall clock), with a distribution-free 95% CI of that
median, its interquartile range, min and max; the same for the step's process CPU time, which leaves
out the time other jobs held the cores. Per-phase medians and ratios are printed (old log-probs,
update); the old-log-prob phase does identical work for both objectives,
so its ratio is an A/A control of the noise. One torch thread by default, as each rank of the README's
`torchrun --nproc_per_node=2` on 2 cores (two threads on a shared 2-core machine made wall times
swing several-fold). The 1-minute load average is printed at the start and summarised at the end.

Models: `tiny`, the embedded default (tiny.default_model_dir(0), warm-started once and cached), with
the built-in task's prompts and responses of its length (16 prompts x 8, 3-6 tokens); `qwen2-512x8`, a
random-init Qwen2 (hidden 512, 8 layers, vocab 32k, 57M parameters) with 1 prompt x 8 responses,
prompts of 32 and responses of 96-192 random tokens, where the model, not the loss, is nearly all of the step.

    python bench/step_ratio.py --real-runs 2                          # recorded: both models + real runs
    python bench/step_ratio.py --models qwen2-512x8 --rounds 40       # recorded: tighter CI for the 57M model
    python bench/step_ratio.py --models tiny --rounds 30              # quick check, about 20 s
    python bench/step_ratio.py --methods all --models tiny,qwen2-512x8 --rounds 10   # Figure 5: every method

`--methods`: the paper's Figure 5 (cost of each method) instead of the LAD/GRPO ratio: for each method, the
update phase as lad.py's loop runs it (FlowRL: the frozen reference's no-grad forward, then update_policy
with the log Z head in the Policy and in the optimiser), methods interleaved in a rotating order within each
round, each from the same weights and its own optimiser state; per-round ratio to GRPO, median over rounds.

`--real-runs N` adds N pairs of short real `torchrun --nproc_per_node=2 lad.py` runs (LAD, GRPO; same
seed, eval off) and reports the update time per trained response token from their metrics. That
figure is uncontrolled: the runs' rollouts, hence response lengths and kept groups, differ.

Deliberately left out, all identical for both objectives (so leaving them out can only move the
ratio away from 1): generation and reward, the rollout/trainer mismatch metrics that lad.py computes
in the old-log-prob pass from the engine's log-probs (TIS is off by default), the metrics all_reduce
and logging, DDP/FSDP collectives (one process here), dynamic sampling (before the step; here every
group has mixed rewards).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import lad  # noqa: E402


@dataclasses.dataclass
class Args:
    """LAD / GRPO whole trainer step time ratio on identical synthetic rollouts (SPEC: <= 1.02)."""

    models: str = "tiny,qwen2-512x8"
    """comma-separated: tiny (embedded default), qwen2-512x8 (random-init 57M Qwen2), or HF model folders"""
    rounds: int = 0
    """timed rounds (one LAD + one GRPO step each) per model; 0 = the model's preset (tiny 100, qwen2-512x8 20)"""
    prompts: int = 0
    """prompts per step; 0 = preset (tiny 16, qwen2-512x8 1)"""
    group_size: int = 0
    """responses per prompt; 0 = preset (8)"""
    response_len: int = 0
    """longest response in tokens; lengths are uniform in [len/2, len]; 0 = preset (tiny 6, qwen2-512x8 192)"""
    prompt_len: int = 0
    """prompt tokens for random-token prompts; 0 = preset (32); tiny uses its built-in prompts"""
    micro_batch: int = 0
    """responses per forward/backward; 0 = preset (tiny 64 as lad.py, qwen2-512x8 1: two per mini-batch)"""
    updates_per_rollout: int = 4
    """optimiser steps per rollout (lad.py default)"""
    logprob_chunk: int = 1024
    """Policy's log-softmax chunk (lad.py default)"""
    divergence: str = "js"
    """LAD's f (lad.py default js)"""
    inv_eta: float = 4.0
    """LAD's 1/eta (lad.py default)"""
    lr: float = 3e-4
    """AdamW learning rate (lad.py default)"""
    threads: int = 1
    """torch CPU threads; 1 = as each rank of the README's `torchrun --nproc_per_node=2` on 2 cores (0 = torch default)"""
    seed: int = 0
    """seed of the synthetic rollouts and the random-init model"""
    real_runs: int = 0
    """pairs of short real `torchrun --nproc_per_node=2 lad.py` runs (LAD, GRPO) on the embedded default; 0 = none"""
    real_steps: int = 40
    """rollout steps of each real run"""
    methods: str = ""
    """the paper's Figure 5 at our scale: update-phase time per trained token of each method relative to
    GRPO (comma-separated, or all = grpo,flowrl,clip-cov,kl-cov,entadv,lad-js); empty = only LAD/GRPO above"""


PRESETS = {
    "tiny": dict(rounds=100, prompts=16, group_size=8, response_len=6, prompt_len=0, micro_batch=64),
    "qwen2-512x8": dict(rounds=20, prompts=1, group_size=8, response_len=192, prompt_len=32, micro_batch=1),
}
PHASES = ("logprob", "update")   # lad.old_logprobs, lad.update_policy

# ----------------------------------------------------------------------------------------------------
# Model and synthetic rollouts
# ----------------------------------------------------------------------------------------------------


def load_model(name, seed):
    """(lm, pad_id, prompt token lists or None, vocab size)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    transformers.utils.logging.disable_progress_bar()

    if name == "qwen2-512x8":
        cfg = Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                          num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
                          tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None)
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(cfg), 0, None, cfg.vocab_size
    if name == "tiny":
        import tiny

        path = tiny.default_model_dir(0)
        tok = AutoTokenizer.from_pretrained(path)
        prompts = [tok(r["prompt"])["input_ids"] for r in tiny.task_split("train")]
    else:
        path, tok, prompts = name, AutoTokenizer.from_pretrained(name), None
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return lm, pad, prompts, lm.config.vocab_size


def synthetic_rollout(g, prompts, vocab, pad_id, rng):
    """items (prompt_ids, response_ids) and advantages, as lad.py has them after dynamic sampling:
    every group has mixed rewards (all-equal groups would have been dropped)."""
    items, rewards = [], []
    for i in range(g["prompts"]):
        p = (prompts[rng.randrange(len(prompts))] if prompts else
             [rng.randrange(2, vocab) for _ in range(g["prompt_len"])])
        rw = [float(rng.random() < 0.5) for _ in range(g["group_size"])]
        if len(set(rw)) == 1:
            rw[0] = 1.0 - rw[0]
        for _ in range(g["group_size"]):
            n = rng.randint(max(1, g["response_len"] // 2), g["response_len"])
            items.append((p, [rng.randrange(2, vocab) for _ in range(n)]))
        rewards += rw
    adv, _ = lad.group_advantages(torch.tensor(rewards), g["group_size"])
    return items, adv.tolist()


# ----------------------------------------------------------------------------------------------------
# One trainer step: lad.py's own phase functions (old_logprobs, update_policy), world size 1, no TIS
# ----------------------------------------------------------------------------------------------------


def trainer_step(objective, policy, lm, opt, items, adv, pad_id, g, a, step_seed):
    """Returns seconds per phase. `objective` (the loss chosen once, lad.make_loss) is the only difference."""
    device = torch.device("cpu")
    loss_fn = lad.make_loss(lad.Args(loss=objective, divergence=a.divergence, inv_eta=a.inv_eta))
    batch = {"items": items, "adv": adv, "engine_logp": [None] * len(items), "real": len(items)}
    cpu0, t0 = time.process_time(), time.perf_counter()
    lm.eval()                                     # as after HF generate()
    old, tis, _, _ = lad.old_logprobs(policy, batch, g["micro_batch"], pad_id, device)
    t1 = time.perf_counter()
    lm.train()
    lad.update_policy(policy, list(lm.parameters()), opt, batch, old, tis, loss_fn,
                      updates_per_rollout=a.updates_per_rollout, micro_batch=g["micro_batch"], clip_grad=1.0,
                      pad_id=pad_id, device=device, world=1, shuffle_seed=step_seed)
    t2 = time.perf_counter()
    return {"logprob": t1 - t0, "update": t2 - t1, "cpu": time.process_time() - cpu0}


def snapshot(lm, opt):
    return ([p.detach().clone() for p in lm.parameters()],
            {id(p): {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in lm.parameters()})


def restore(lm, opt, snap):
    params, state = snap
    with torch.no_grad():
        for p, s in zip(lm.parameters(), params):
            p.copy_(s)
            for k, v in state[id(p)].items():
                opt.state[p][k].copy_(v)


# ----------------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------------


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
    q = statistics.quantiles(r, n=4, method="inclusive")
    med, (lo, hi) = statistics.median(r), median_ci(r)
    print(f"{label}: median {med:.4f}, 95% CI of the median [{lo:.4f}, {hi:.4f}], IQR [{q[0]:.4f}, {q[2]:.4f}], "
          f"min {min(r):.4f}, max {max(r):.4f} ({len(r)} rounds)")
    return med, lo, hi


def bench_model(name, a, loads):
    g = dict(PRESETS.get(name, PRESETS["qwen2-512x8"]))
    for k in g:
        if getattr(a, k, 0):
            g[k] = getattr(a, k)
    lm, pad_id, prompts, vocab = load_model(name, a.seed)
    policy = lad.Policy(lm, a.logprob_chunk, 1.0)
    opt = torch.optim.AdamW(lm.parameters(), lr=a.lr, weight_decay=0.0)
    items, adv = synthetic_rollout(g, prompts, vocab, pad_id, random.Random(a.seed))
    n_params = sum(p.numel() for p in lm.parameters())
    n_resp_tok = sum(len(r) for _, r in items)
    n_tok = sum(len(p) + len(r) for p, r in items)
    print(f"\n## model {name}: {n_params / 1e6:.2f}M params, vocab {vocab}; {g['prompts']} prompt(s) x "
          f"{g['group_size']} responses, {n_resp_tok} response tokens (lengths {min(map(len, (r for _, r in items)))}"
          f"-{max(len(r) for _, r in items)}), {n_tok} tokens with prompts; micro-batch {g['micro_batch']}, "
          f"{a.updates_per_rollout} AdamW steps per rollout, logprob chunk {a.logprob_chunk}; {g['rounds']} rounds",
          flush=True)

    for obj in ("lad", "grpo"):                    # warm-up: allocator, AdamW state, one step each
        trainer_step(obj, policy, lm, opt, items, adv, pad_id, g, a, a.seed)
    snap = snapshot(lm, opt)
    times = {"lad": [], "grpo": []}
    for rnd in range(g["rounds"]):
        for obj in (("lad", "grpo") if rnd % 2 == 0 else ("grpo", "lad")):
            restore(lm, opt, snap)
            gc.collect()
            times[obj].append(trainer_step(obj, policy, lm, opt, items, adv, pad_id, g, a, a.seed))
        loads.append(os.getloadavg()[0])

    tot = {k: [sum(p[q] for q in PHASES) for p in v] for k, v in times.items()}
    print(f"{'phase':10s} {'LAD ms':>10s} {'GRPO ms':>10s} {'LAD/GRPO':>10s}   (medians; ratio = median of per-round ratios)")
    for p in PHASES:
        r = [x[p] / y[p] for x, y in zip(times["lad"], times["grpo"])]
        print(f"{p:10s} {1e3 * statistics.median(t[p] for t in times['lad']):10.2f} "
              f"{1e3 * statistics.median(t[p] for t in times['grpo']):10.2f} {statistics.median(r):10.4f}")
    ratios = [x / y for x, y in zip(tot["lad"], tot["grpo"])]
    print(f"{'step':10s} {1e3 * statistics.median(tot['lad']):10.2f} {1e3 * statistics.median(tot['grpo']):10.2f} "
          f"{statistics.median(ratios):10.4f}")
    # logprob is the same code on the same weights for both objectives: its ratio is the noise floor
    print("A/A control: the logprob phase runs identical work for both objectives (its ratio should be 1)")
    med, lo, hi = describe("step ratio LAD/GRPO, wall", ratios)
    describe("step ratio LAD/GRPO, CPU time", [x["cpu"] / y["cpu"] for x, y in zip(times["lad"], times["grpo"])])
    print("(CPU time = process_time of the step: leaves out the time other jobs held the cores)")
    verdict = ("met" if hi <= 1.02 else "met by the median, but the 95% CI reaches above 1.02" if med <= 1.02
               else "MISSED")
    print(f"target LAD/GRPO step time <= 1.02 (wall): {verdict}", flush=True)
    return med


# ----------------------------------------------------------------------------------------------------
# Figure 5: the update phase of every method, relative to GRPO
# ----------------------------------------------------------------------------------------------------

ALL_METHODS = "grpo,flowrl,clip-cov,kl-cov,entadv,lad-js"


def method_args(m, a):
    """lad.Args of a method name (lad-<f> = --loss lad --divergence f), every other flag at lad.py's default."""
    return lad.Args(loss="lad", divergence=m[4:], inv_eta=a.inv_eta) if m.startswith("lad-") else lad.Args(loss=m)


def method_cost(name, a, loads):
    import copy

    g = dict(PRESETS.get(name, PRESETS["qwen2-512x8"]))
    for k in g:
        if getattr(a, k, 0):
            g[k] = getattr(a, k)
    g["rounds"] = a.rounds or max(5, g["rounds"] // 5)
    methods = [m.strip() for m in (ALL_METHODS if a.methods == "all" else a.methods).split(",") if m.strip()]
    if "grpo" not in methods:
        methods.insert(0, "grpo")
    lm, pad_id, prompts, vocab = load_model(name, a.seed)
    items, adv = synthetic_rollout(g, prompts, vocab, pad_id, random.Random(a.seed))
    device, n_tok = torch.device("cpu"), sum(len(r) for _, r in items)
    batch = {"items": items, "adv": adv, "engine_logp": [None] * len(items), "real": len(items)}
    ref_lm = copy.deepcopy(lm).eval().requires_grad_(False)             # pi_ref: the frozen initial policy
    ref_policy = lad.Policy(ref_lm, a.logprob_chunk, 1.0)
    old = lad.old_logprobs(lad.Policy(lm.eval(), a.logprob_chunk, 1.0), batch, g["micro_batch"], pad_id, device)[0]
    setup = {}
    for m in methods:                  # as lad.build_trainer: the head inside the Policy, one optimiser
        ma = method_args(m, a)
        torch.manual_seed(a.seed)
        head = lad.LogZHead(lm.config.hidden_size) if "log_z" in lad.loss_needs(ma) else None
        pol = lad.Policy(lm, a.logprob_chunk, 1.0, log_z_head=head)
        setup[m] = (pol, torch.optim.AdamW(list(pol.parameters()), lr=a.lr, weight_decay=0.0), lad.make_loss(ma))

    def update(m):
        pol, opt, loss_fn = setup[m]
        t0 = time.perf_counter()
        ref = lad.old_logprobs(ref_policy, batch, g["micro_batch"], pad_id, device)[0] \
            if "ref_logp" in loss_fn.needs else None
        pol.train()
        lad.update_policy(pol, list(pol.parameters()), opt, batch, old, None, loss_fn,
                          updates_per_rollout=a.updates_per_rollout, micro_batch=g["micro_batch"], clip_grad=1.0,
                          pad_id=pad_id, device=device, world=1, shuffle_seed=a.seed, ref=ref)
        return time.perf_counter() - t0

    print(f"\n## Figure 5, model {name}: {sum(p.numel() for p in lm.parameters()) / 1e6:.2f}M params; "
          f"{len(items)} responses, {n_tok} trained response tokens; {a.updates_per_rollout} AdamW steps per "
          f"rollout, micro-batch {g['micro_batch']}; {g['rounds']} rounds, order rotating", flush=True)
    snaps = {}
    for m in methods:                  # warm-up step each, then every timed step starts from these states
        update(m)
    for m in methods:                  # same model weights in every snapshot: no step ran in between
        pol, opt, _ = setup[m]
        snaps[m] = snapshot(pol, opt)
    times = {m: [] for m in methods}
    for rnd in range(g["rounds"]):
        order = methods[rnd % len(methods):] + methods[:rnd % len(methods)]
        for m in order:
            restore(setup[m][0], setup[m][1], snaps[m])
            gc.collect()
            times[m].append(update(m))
        loads.append(os.getloadavg()[0])
    print(f"{'method':10s} {'update ms':>10s} {'us/token':>10s} {'/ GRPO':>8s}  95% CI of the median ratio")
    for m in methods:
        r = [x / y for x, y in zip(times[m], times["grpo"])]
        lo, hi = median_ci(r)
        med = statistics.median(times[m])
        print(f"{m:10s} {1e3 * med:10.2f} {1e6 * med / n_tok:10.1f} {statistics.median(r):8.3f}  [{lo:.3f}, {hi:.3f}]",
              flush=True)


# ----------------------------------------------------------------------------------------------------
# Optional: short real lad.py runs (uncontrolled: different rollouts)
# ----------------------------------------------------------------------------------------------------


def real_runs(a, loads):
    print(f"\n## real runs: torchrun --nproc_per_node=2 lad.py --loss {{lad,grpo}} --steps {a.real_steps} "
          f"--seed {a.seed} --eval-every 0 (README's command; uncontrolled: the runs' rollouts differ)", flush=True)
    per_tok = {"lad": [], "grpo": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.real_runs):
            for obj in ("lad", "grpo") if i % 2 == 0 else ("grpo", "lad"):
                out = Path(tmp) / f"{obj}-{i}"
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                       str(ROOT / "lad.py"), "--loss", obj, "--steps", str(a.real_steps), "--eval-every", "0",
                       "--save-every", "0", "--seed", str(a.seed), "--out", str(out)]
                subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
                rows = [r for r in rows if r["step"] > 1]                   # step 1 carries the warm-up
                # trained tokens ~ kept groups x G x mean response length (that mean is over all drawn
                # responses, kept or not: an approximation, the same for both objectives); update_s is
                # the slower rank's
                toks = sum(r["rollout/groups_kept"] * lad.Args.group_size * r["rollout/response_len_mean"] for r in rows)
                per_tok[obj].append(sum(r["perf/update_s"] for r in rows) / toks)
                loads.append(os.getloadavg()[0])
                print(f"  pair {i} {obj:4s}: update {1e6 * per_tok[obj][-1]:.1f} us per trained response token "
                      f"({toks:.0f} tokens over steps 2-{a.real_steps}), load {os.getloadavg()[0]:.2f}", flush=True)
    ratios = [x / y for x, y in zip(per_tok["lad"], per_tok["grpo"])]
    print(f"update time per token LAD/GRPO, per pair: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.3f} (uncontrolled: different rollouts, lengths and load)")


def main(a):
    if a.threads:
        torch.set_num_threads(a.threads)
    loads = [os.getloadavg()[0]]
    print(f"# step ratio, LAD ({a.divergence}, 1/eta {a.inv_eta:g}) vs GRPO (clip 0.2/0.28); machine "
          f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch "
          f"{torch.__version__}; load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for name in a.models.split(","):
        (method_cost if a.methods else bench_model)(name.strip(), a, loads)
    if a.real_runs:
        real_runs(a, loads)
    print(f"\n1-minute load average over the run: min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
          f"max {max(loads):.2f}")


if __name__ == "__main__":
    main(lad.parse_args(Args))
