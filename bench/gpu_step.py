"""bench/gpu_step.py -- GPU figures of lad.py's training step: tokens/s, model FLOP utilisation (MFU) and each
phase's peak memory for a Qwen2.5-shaped random-init model, and a one-step check that FSDP2 gives the loss and
gradient norm of one device.

SPEC "Numbers to meet": on a GPU, tokens/s and MFU of the training step for a 0.5B-shaped Qwen2 in bf16,
recorded with the device named; GPU memory: a plan predicts each phase's per-GPU peak within 0.75-1.33 of
what is measured (this script measures; each peak sits beside memplan.py's prediction for the same lad.py arguments, `memplan_predicted_gb`).

One command prints and writes one JSON line per case (--out appends them), so a GPU session runs it once:
    check  (with --check, the default) one optimiser step's forward/backward from identical weights and batch,
           FSDP2 (policy.shard_policy) vs one device, with lad.py's public pieces (policy.py's Policy and make_batch, lad's Batch,
           global_denominators, lad_loss / baselines.baseline_loss): fp32 within 1e-5 relative, and bf16
           (FSDP2's MixedPrecisionPolicy vs torch.autocast, which round different tensors) within 2e-2;
           PASS/FAIL, exit 1 on a FAIL.
    step   lad.py's own training loop, lad.main (bench/workload.py: a random-init model of --shape, synthetic
           prompts of --prompt-len tokens, --max-new-tokens responses that a random model fills, every group
           trained, no evaluation), --warmup + --steps rollout steps; from its metrics.jsonl (perf/*, the
           timed steps): step and update-phase tokens/s, MFU, old-log-prob pass tokens/s, and every phase's
           peak allocated GPU memory (perf/<phase>_peak_gb, lad.py's `phase` timer).
bf16: lad.py computes in bf16 on GPU under --fsdp true (FSDP2's MixedPrecisionPolicy, fp32 master weights);
without FSDP it computes in fp32 (a --bf16 flag of lad.py is planned). So the bf16 figure is `--fsdp true`
(the default here, also on one GPU: a one-rank FSDP2 group) and `--fsdp false` measures fp32.

MFU = 6 N x tokens / update seconds / (peak x devices), N = all parameters (tied embeddings once), tokens =
every prompt and response token the update's forwards see; also PaLM's attention-inclusive 6 N + 12 L (heads x
head_dim) S per token (Chowdhery et al. 2022, App. B; counts the whole score matrix). Neither counts activation
recomputation; policy.Policy skips the LM head on prompt positions, so 6N slightly over-counts the work needed.

Commands (the image's python on a GPU machine: torch and transformers; nothing is downloaded)
    1 GPU, the SPEC's figure and the check, a few minutes:
        python bench/gpu_step.py --shape 0.5b --out $OUT/gpu_step.jsonl
    the same step in fp32 (lad.py on one GPU without FSDP), one more line:
        python bench/gpu_step.py --shape 0.5b --fsdp false --check false --out $OUT/gpu_step.jsonl
    N GPUs (FSDP2 over N ranks; 7B's weights, gradients and AdamW state need N >= 4 at 80 GB):
        torchrun --nproc_per_node=N bench/gpu_step.py --shape 7b --activation-checkpointing true --out gpu_7b.jsonl
    CPU smoke test (seconds; not a performance figure; tests/test_gpu_step.py):
        python bench/gpu_step.py --shape tiny --prompt-len 16 --max-new-tokens 48 --prompts-per-step 2 --steps 2

Deliberately left out: vLLM (--engine hf by default: vLLM's own memory pool is outside torch's peak figures;
--engine vllm measures it anyway), real weights and data (speed does not depend on them), torch.compile, CPU
offload, tensor/sequence parallelism, multi-node runs.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload  # noqa: E402  (puts the repository root on sys.path)

import lad  # noqa: E402
from baselines import baseline_loss  # noqa: E402
from common import UsageError, parse_args  # noqa: E402
import memplan  # noqa: E402
from policy import Policy, make_batch, needs_reference, shard_policy  # noqa: E402

PHASES = ("rollout", "reward", "logprob", "update", "sync")


@dataclasses.dataclass
class Args:
    """Tokens/s, MFU and per-phase peak memory of lad.py's training step; --check: FSDP2 vs one device."""

    CHOICES = {"shape": list(workload.SHAPES), "loss": ["lad", "grpo", "clip-cov", "kl-cov", "entadv"],
               "engine": ["hf", "vllm"]}
    DEPRECATED_FLAGS = {"response_len": "max_new_tokens", "mini_batches": "updates_per_rollout"}

    shape: str = "0.5b"
    """model shape (bench/workload.py): tiny (CPU smoke test), qwen2-512x8, 0.5b, 1.5b, 3b, 7b (Qwen2.5 configs)"""
    layers: int = 0
    """decoder layers; 0 = the shape's (fewer: a CPU dry run of a real width)"""
    fsdp: bool = True
    """lad.py's --fsdp: FSDP2, bf16 compute on GPU (the bf16 figure); false = fp32 on one GPU, DDP under torchrun"""
    check: bool = True
    """first the one-step check, FSDP2 vs one device (fp32, and bf16); exit 1 on FAIL"""
    activation_checkpointing: bool = False
    """lad.py's flag: recompute each decoder layer in backward (not counted in MFU)"""
    prompt_len: int = 512
    """prompt tokens of every synthetic row (P); P + max_new_tokens = 2048 by default"""
    max_new_tokens: int = 1536
    """lad.py's flag: response tokens (T); a random-init model almost never stops earlier"""
    prompts_per_step: int = 0
    """lad.py's flag: prompts per step over all ranks; 0 = 8 per rank"""
    group_size: int = lad.Args.group_size
    """lad.py's flag: responses per prompt"""
    updates_per_rollout: int = 2
    """lad.py's flag: optimiser steps per rollout batch"""
    micro_batch: int = 0
    """lad.py's flag: responses per forward/backward per rank; 0 = auto: the largest power of 2 whose estimate
    (auto_micro_batch_estimate_gib) fits --mem-fraction of the GPU, halved on out-of-memory (one process only)"""
    steps: int = 3
    """timed rollout steps (after --warmup); 0 = the check only"""
    warmup: int = 1
    """untimed first steps (CUDA kernel selection, allocator growth, AdamW state)"""
    loss: str = "lad"
    """lad.py's flag: lad, or a baseline"""
    divergence: str = lad.Args.divergence
    """lad.py's flag: LAD's f"""
    inv_eta: float = lad.Args.inv_eta
    """lad.py's flag: 1/eta"""
    lr: float = 1e-6
    """lad.py's flag: AdamW learning rate (the paper's 7B value; the speed does not depend on it)"""
    logprob_chunk: int = lad.Args.logprob_chunk
    """lad.py's flag: response tokens per log-softmax chunk"""
    engine: str = "hf"
    """lad.py's flag: rollout engine (hf: transformers, under FSDP2 an unsharded bf16 copy; vllm)"""
    peak_tflops: float = 0.0
    """peak dense bf16 TFLOP/s of one device for MFU; 0 = looked up from the device name (null if unknown)"""
    mem_fraction: float = 0.75
    """auto micro-batch: the estimate must stay under this fraction of the GPU's memory"""
    check_perturb: float = 0.0
    """testing the check: add this to the final norm's weights on the FSDP2 side, so that it must FAIL; 0 = off"""
    seed: int = 0
    """lad.py's flag, and the seed of the weights and prompts"""
    out: str = ""
    """append one JSON line per case to this file (rank 0); empty = print only"""


# ----------------------------------------------------------------------------------------------------
# FLOPs, peaks, the auto micro-batch's memory estimate
# ----------------------------------------------------------------------------------------------------

# Dense (no 2:4 sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets (their with-sparsity
# figures halved). First match on the device name wins: "NVIDIA H100 80GB HBM3" is the SXM part.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("H200 NVL", 835.0), ("H200", 989.0), ("A100", 312.0)]
GiB = 2 ** 30


def lookup_peak(name):
    for key, tf in PEAK_BF16_TFLOPS:
        if key in name:
            return tf, f"datasheet ({key})"
    return None, None


def flops_per_token(cfg, n_params, seq):
    """Training (forward + backward) FLOPs per token: 6N, and PaLM's 6N + 12 L (heads * head_dim) S."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 6 * n_params, 6 * n_params + 12 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * seq


# Saved activations per token per decoder layer, measured on CPU with saved_tensors_hooks for the 0.5b,
# 1.5b and 3b widths: 0.73x (34 h + 10 i) bytes with bf16 weights (FSDP2's mixed precision), 1.36x in fp32.
# Rounded up: 1.0x and 1.5x. Only for picking a micro-batch: the memory plan (memplan.py) is the prediction.
ACT_FACTOR = {"bf16": 1.0, "fp32": 1.5}


def memory_estimate(cfg, n_params, micro, seq, chunk, *, shard_over, bf16, checkpointing):
    """Rough peak bytes on one device: weights + grads + AdamW (16 bytes/param, over the FSDP ranks), the hf
    engine's unsharded bf16 rollout copy under FSDP2 (2 bytes/param), saved activations, the log-softmax chunk
    (about 6 float32 (chunk, vocab) tensors alive between forward and backward recompute)."""
    h, i, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    states = 16 * n_params / shard_over + (2 * n_params if bf16 else 0)
    if shard_over > 1:       # unsharded bf16 copies in use: the root (embedding, head) and ~2 layers
        states += 2 * 2 * (cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2) + 2 * n_params / L)
    per_layer = ACT_FACTOR["bf16" if bf16 else "fp32"] * (34 * h + 10 * i)
    if checkpointing:        # each layer keeps its input; one layer at a time is recomputed in full
        act = micro * seq * (L * h * (2 if bf16 else 4) + per_layer)
    else:
        act = micro * seq * L * per_layer
    return states + act + 6 * chunk * cfg.vocab_size * 4


# ----------------------------------------------------------------------------------------------------
# The step case: lad.main on the workload, its metrics read back
# ----------------------------------------------------------------------------------------------------


@contextmanager
def sdpa_spy(record, min_len):
    """Count how transformers calls SDPA on sequences longer than min_len (the trainer's forwards, not the
    engine's prompt prefill or decode steps): a dense mask would rule out the flash kernel."""
    f = torch.nn.functional.scaled_dot_product_attention

    def spy(*a, **k):
        q = a[0]
        if q.shape[-2] > min_len:
            record["calls"] = record.get("calls", 0) + 1
            record["dense_mask"] = record.get("dense_mask", 0) + (k.get("attn_mask") is not None)
            record["is_causal"] = record.get("is_causal", 0) + bool(k.get("is_causal"))
            record["q_dtype"] = str(q.dtype).replace("torch.", "")
        return f(*a, **k)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = f


def run_step(args, model, data, micro, pps):
    """lad.main on the workload (every rank); returns (metrics rows of the timed steps on rank 0, SDPA record)."""
    la = workload.lad_args(model, data, loss=args.loss, divergence=args.divergence, inv_eta=args.inv_eta,
                           steps=args.warmup + args.steps, prompts_per_step=pps, group_size=args.group_size,
                           max_new_tokens=args.max_new_tokens, micro_batch=micro, lr=args.lr,
                           updates_per_rollout=args.updates_per_rollout, logprob_chunk=args.logprob_chunk,
                           fsdp=args.fsdp, activation_checkpointing=args.activation_checkpointing,
                           engine=args.engine, seed=args.seed)
    spy = {}
    with sdpa_spy(spy, args.prompt_len):
        rows = workload.run_lad(la, 1)
    return rows[args.warmup:], spy, la


# lad.py's perf/<phase>_peak_gb names -> memplan's phases
PLAN_PHASE = {"rollout": "rollout", "logprob": "old_logprobs", "update": "update"}


def planned_gb(la, world, total_mem, prompt_len, cuda):
    """memplan's per-phase peak (GiB) for lad.main run with Args la, as lad.py --plan gives it."""
    s = memplan.settings_from_args(la, world, total_mem / GiB if cuda else 80.0, prompt_len, needs_reference(la))
    p = memplan.plan(memplan.load_config(la.model), dataclasses.replace(s, cuda=cuda))
    return {ph: p.peak(PLAN_PHASE[ph]) / GiB for ph in PLAN_PHASE if PLAN_PHASE[ph] in p.phases}


def step_result(args, rows, cfg, n_params, world, peak, pps, plan_gb):
    """The step case's figures from lad.py's metrics rows (rank 0); plan_gb: planned_gb's."""
    n_resp = pps * args.group_size
    tok = [workload.step_tokens(r, args.prompt_len, n_resp) for r in rows]
    t = {p: [r[f"perf/{p}_s"] for r in rows] for p in (*PHASES, "step")}
    all_tok, resp_tok = sum(x for x, _ in tok), sum(y for _, y in tok)
    up_tps, lp_tps = all_tok / sum(t["update"]), all_tok / sum(t["logprob"])
    seq = args.prompt_len + args.max_new_tokens
    f6, f_attn = flops_per_token(cfg, n_params, seq)
    mfu = (lambda f, tps: f * tps / (peak * 1e12 * world)) if peak else (lambda f, tps: None)
    peaks = {p: {"measured_gb": max((r[f"perf/{p}_peak_gb"] for r in rows if f"perf/{p}_peak_gb" in r), default=None),
                 "memplan_predicted_gb": plan_gb.get(p)} for p in PHASES}
    return {
        "responses_per_step": n_resp, "timed_steps": len(rows), "warmup_steps": args.warmup,
        "response_len_mean": statistics.mean(r["rollout/response_len_mean"] for r in rows),
        "tokens_per_step": all_tok / len(rows), "response_tokens_per_step": resp_tok / len(rows),
        **{f"{p}_s": t[p] for p in (*PHASES, "step")},
        **{f"{p}_s_median": statistics.median(t[p]) for p in (*PHASES, "step")},
        "step_tokens_per_s": all_tok / sum(t["step"]),
        "update_tokens_per_s": up_tps, "update_response_tokens_per_s": resp_tok / sum(t["update"]),
        "update_tokens_per_s_per_device": up_tps / world, "logprob_tokens_per_s": lp_tps,
        "flops_per_token_6n": f6, "flops_per_token_attn": f_attn,
        "update_tflops_per_s_per_device": f6 * up_tps / world / 1e12,
        "mfu": mfu(f6, up_tps), "mfu_attn": mfu(f_attn, up_tps), "logprob_mfu": mfu(f6 / 3, lp_tps),
        "peak_gb": peaks,
        "last_objective": rows[-1].get("loss/objective"), "last_grad_norm": rows[-1].get("train/grad_norm"),
    }


# ----------------------------------------------------------------------------------------------------
# The check: one step, FSDP2 vs one device, same weights, same batch (lad.py's public pieces)
# ----------------------------------------------------------------------------------------------------

CHECK_MICRO = 2          # sequences per forward in the check: fp32 activations are ~1.5x bf16's
FP32_RTOL = 1e-5
BF16_RTOL = 2e-2
# bf16 bound: the two sides round different tensors (FSDP2 casts weights and the residual stream to bf16;
# autocast casts only matmul inputs and keeps an fp32 residual), so each differs from fp32 by bf16's
# rounding (eps 2^-8 = 3.9e-3 per element) summed over the layers; the loss and gradient norm are means
# and sums over ~10^4-10^6 such terms, so their gap is a few eps at most. 2e-2 = 5 eps: wide enough for
# that, far below what a wrong denominator, a missing gradient reduction or a stale shard gives (>= 1e-1).


def build_model(cfg, device, seed):
    """Random init straight on the device; the same seed gives the same weights on every rank and call."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        lm = Qwen2ForCausalLM(cfg)
    return lm.float()


def rollout_batch(n_prompts, group, P, T, vocab, seed):
    """items (prompt_ids, response_ids) of random ids, and group advantages of random 0/1 rewards."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n_prompts):
        prompt = torch.randint(2, vocab, (P,), generator=g).tolist()
        items += [(prompt, torch.randint(2, vocab, (T,), generator=g).tolist()) for _ in range(group)]
    rewards = torch.randint(0, 2, (n_prompts * group,), generator=g).float()
    return items, lad.group_advantages(rewards, group)[0]


def loss_of(args, logp, old, adv, mask, denom, entropy):
    """The loss lad.main's update calls for --loss, with the same arguments."""
    la = lad.Args(loss=args.loss, divergence=args.divergence, inv_eta=args.inv_eta)
    if la.loss == "lad":
        return lad.lad_loss(logp, old, adv, mask, divergence=la.divergence, eta=1.0 / la.inv_eta, denom=denom)[0]
    return baseline_loss(la, logp, old, adv, mask, denom=denom, entropy=entropy,
                         generator=torch.Generator().manual_seed(args.seed))[0]


def one_step(args, cfg, items, adv, old_rows, ctx, *, shard, bf16, perturb=0.0):
    """Loss and pre-clip gradient norm of one optimiser step's forward/backward. shard: FSDP2 over all ranks,
    each the rows rank::world, denominator lad.global_denominators'; else this rank alone runs every row."""
    device, rank, world = ctx.device, ctx.rank, ctx.world
    lm = build_model(cfg, device, args.seed)
    if perturb:
        with torch.no_grad():             # every logit scaled by (1 + perturb): loss and gradients move
            lm.model.norm.weight += perturb
    policy = Policy(lm, args.logprob_chunk, 1.0)
    if args.activation_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if shard:
        shard_policy(policy, lm, cuda=bf16)       # bf16 MixedPrecisionPolicy iff bf16
    idx = list(range(rank, len(items), world)) if shard else list(range(len(items)))
    if shard:
        batch = lad.Batch([p for p, _ in items], [r for _, r in items], adv, [None] * len(items),
                          [True] * len(items), len(items), 0)
        denom = lad.global_denominators(batch, [idx], "token", ctx)[0]
    else:
        denom = float(sum(len(items[i][1]) for i in idx))
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 and not shard else nullcontext
    lm.train()
    total = torch.zeros((), device=device)
    for lo in range(0, len(idx), CHECK_MICRO):
        mi = idx[lo:lo + CHECK_MICRO]
        ids, attn, pos, tgt, valid = make_batch([items[i] for i in mi], 0, device)
        with autocast():
            logp, entropy, _ = policy(ids, attn, pos, tgt, valid)
        old = torch.stack([old_rows[i] for i in mi]).to(device)
        loss = loss_of(args, logp.float(), old, adv[mi].to(device), valid.float(), denom, entropy.float())
        loss.backward()
        total += loss.detach()
    gn = torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
    gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
    if shard:                # gradients are averaged over ranks (denominator / world), so is the loss
        total = lad.all_reduce(total) / world
    out = {"loss": float(total), "grad_norm": float(gn)}
    del lm, policy
    free_memory(device)
    return out


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def run_check(args, cfg, ctx):
    """fp32: FSDP2 vs one device; bf16 (CUDA; CPU for small models): FSDP2's MixedPrecisionPolicy vs autocast.
    The old log-probs are one fp32 no-grad pass plus a fixed random offset (ratios away from 1), shared by all
    sides, so the loss reflects each side's own log-probs."""
    device, world = ctx.device, ctx.world
    n = args.group_size * world
    items, adv = rollout_batch(max(1, n // args.group_size), args.group_size, args.prompt_len, args.max_new_tokens,
                               cfg.vocab_size, args.seed * 1000 + 17)                  # same on every rank
    lm = build_model(cfg, device, args.seed)
    policy = Policy(lm, args.logprob_chunk, 1.0)
    g = torch.Generator().manual_seed(args.seed + 1)
    old_rows = []
    with torch.no_grad():
        for lo in range(0, n, CHECK_MICRO):
            lp = policy(*make_batch(items[lo:lo + CHECK_MICRO], 0, device))[0]
            old_rows += list((lp.cpu() + 0.3 * torch.randn(lp.shape, generator=g)).unbind(0))
    del lm, policy
    free_memory(device)
    if world > 1:            # every rank must see the same old log-probs (kernels may differ in the last bit)
        obj = [old_rows]
        dist.broadcast_object_list(obj, src=0)
        old_rows = obj[0]
    comparisons = [("fp32", False, FP32_RTOL)]
    if device.type == "cuda" or cfg.hidden_size <= 128 or args.layers:   # bf16 on CPU: only small models (slow)
        comparisons.append(("bf16", True, BF16_RTOL))
    res, ok = {"case": "check"}, True
    for name, bf16, tol in comparisons:
        single = one_step(args, cfg, items, adv, old_rows, ctx, shard=False, bf16=bf16)
        sharded = one_step(args, cfg, items, adv, old_rows, ctx, shard=True, bf16=bf16, perturb=args.check_perturb)
        d = {"single": single, "fsdp2": sharded, "rtol": tol,
             "loss_rel_diff": rel(sharded["loss"], single["loss"]),
             "grad_norm_rel_diff": rel(sharded["grad_norm"], single["grad_norm"])}
        d["pass"] = bool(d["loss_rel_diff"] <= tol and d["grad_norm_rel_diff"] <= tol and
                         all(map(math.isfinite, (single["loss"], sharded["loss"], single["grad_norm"],
                                                 sharded["grad_norm"]))))
        ok &= d["pass"]
        res[name] = d
    if "bf16" in res:        # context for the bf16 bound: how far each bf16 side is from fp32
        ref = res["fp32"]["single"]
        for side in ("single", "fsdp2"):
            res["bf16"][f"{side}_vs_fp32_loss_rel_diff"] = rel(res["bf16"][side]["loss"], ref["loss"])
            res["bf16"][f"{side}_vs_fp32_grad_norm_rel_diff"] = rel(res["bf16"][side]["grad_norm"], ref["grad_norm"])
    res["responses"], res["micro_batch"], res["pass"] = n, CHECK_MICRO, ok
    return res


def is_oom(e):
    """CUDA out-of-memory, also when it surfaces through NCCL, checkpoint recomputation or lad.main's log."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def free_memory(device):
    gc.collect()
    if device.type == "cuda":                 # a model's worth of GPU memory back before the next one
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------


def validate(args):
    for name in ("prompt_len", "max_new_tokens", "updates_per_rollout", "logprob_chunk", "group_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("layers", "micro_batch", "steps", "warmup", "prompts_per_step"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not 0 < args.mem_fraction <= 1:
        raise UsageError(f"--mem-fraction must be in (0, 1], got {args.mem_fraction}")
    if args.steps == 0 and not args.check:
        raise UsageError("--steps 0 --check false runs nothing")
    if args.layers and args.shape == "tiny":
        raise UsageError("--layers applies to the larger shapes, not tiny")


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(args):
    validate(args)
    ctx = lad.Ranks.from_env()
    rank, world, device = ctx.rank, ctx.world, ctx.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    else:                                     # lad.main does the same for its own run
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world))
    say = print if rank == 0 else (lambda *a, **k: None)
    import transformers

    cfg = workload.make_config(args.shape, args.layers)
    n_params = workload.count_params(cfg)
    published = (workload.SHAPES[args.shape] or [None])[-1] if not args.layers else None
    seq = args.prompt_len + args.max_new_tokens
    pps = args.prompts_per_step or 8 * world
    bf16 = cuda and args.fsdp
    precision = "bf16 (FSDP2 MixedPrecisionPolicy)" if bf16 else "fp32"
    mode = ("fsdp2" if args.fsdp else ("ddp" if world > 1 else "single")) + " " + precision
    per_mini = -(-(pps // world * args.group_size) // args.updates_per_rollout)   # responses per mini-batch per rank
    est = lambda m: memory_estimate(cfg, n_params, m, seq, args.logprob_chunk, shard_over=world if args.fsdp else 1,  # noqa: E731
                                    bf16=bf16, checkpointing=args.activation_checkpointing)
    total_mem = torch.cuda.get_device_properties(device).total_memory if cuda else None
    if cuda and est(0) > 0.95 * total_mem:
        raise UsageError(f"--shape {args.shape}: weights + grads + AdamW alone need about {est(0) / GiB:.0f} GiB per "
                         f"device ({'FSDP2 over ' + str(world) + ' rank(s)' if args.fsdp else 'no sharding'}) of "
                         f"{total_mem / GiB:.0f} GiB: run under torchrun with more GPUs and --fsdp true")
    if seq > cfg.max_position_embeddings:
        raise UsageError(f"--prompt-len + --max-new-tokens = {seq} exceeds the {args.shape} model's context "
                         f"{cfg.max_position_embeddings}")
    micro, auto_micro = args.micro_batch, args.micro_batch == 0
    if auto_micro:
        micro = 1
        while micro * 2 <= per_mini and (est(micro * 2) <= args.mem_fraction * total_mem if cuda else micro < 8):
            micro *= 2
    peak, peak_src = (args.peak_tflops, "--peak-tflops") if args.peak_tflops > 0 else \
        (lookup_peak(device_name(device)) if cuda else (None, None))
    common_fields = {"script": "bench/gpu_step.py", "args": dataclasses.asdict(args), "device": device_name(device),
                     "torch": torch.__version__, "transformers": transformers.__version__,
                     "cuda": torch.version.cuda if cuda else None, "world_size": world, "shape": args.shape,
                     "params": n_params, "params_published": published,
                     "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")}
    say(f"gpu_step: shape {args.shape} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab "
        f"{cfg.vocab_size}): {n_params:,} params" + (f" (published {published / 1e9:.2f}B: "
                                                   f"{'matches' if abs(n_params - published) < 0.006e9 else 'MISMATCH'})"
                                                   if published else ""))
    say(f"  {world} rank(s), device {device_name(device)}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}", flush=True)
    lines = []

    def emit(d):
        lines.append(d)
        if rank == 0:
            print("RESULT " + json.dumps(d), flush=True)
            if args.out:
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(d) + "\n")

    # ---- the check first: a numerical failure should not wait for the benchmark
    check_ok = True
    if args.check:
        say(f"check: one step, {args.group_size * world} responses of {seq} tokens, FSDP2 over {world} rank(s) vs "
            f"one device (the whole batch on each rank)", flush=True)
        if not lad.dist_on():                 # fully_shard needs a group, even of one (torchrun's, or in-process)
            if world > 1:
                dist.init_process_group("nccl" if cuda else "gloo")
            else:
                dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            chk = run_check(args, cfg, ctx)
            status = "ok" if chk["pass"] else "check_failed"
        except RuntimeError as e:             # torch.cuda.OutOfMemoryError is one
            if not is_oom(e):
                raise
            chk, status = {"case": "check", "pass": False}, "oom"
            free_memory(device)
        finally:
            dist.destroy_process_group()      # lad.main opens its own
        check_ok = chk["pass"]
        emit({**chk, **common_fields, "status": status})
        for name in ("fp32", "bf16"):
            if name in chk:
                d = chk[name]
                say(f"  {name}: loss single {d['single']['loss']:.8g} fsdp2 {d['fsdp2']['loss']:.8g} "
                    f"(rel diff {d['loss_rel_diff']:.2e}); grad norm single {d['single']['grad_norm']:.8g} "
                    f"fsdp2 {d['fsdp2']['grad_norm']:.8g} (rel diff {d['grad_norm_rel_diff']:.2e}); "
                    f"bound {d['rtol']:.0e}: {'PASS' if d['pass'] else 'FAIL'}")
        say(f"check: {'PASS' if check_ok else 'FAIL'}" + (" (out of memory)" if status == "oom" else ""), flush=True)
        if status == "oom":
            return 3

    # ---- the step: lad.main (one process: halve an automatic micro-batch on out-of-memory and start again)
    code = 0 if check_ok else 1
    if args.steps:
        model = workload.model_dir(args.shape, args.layers, args.seed, log=say)
        with tempfile.TemporaryDirectory() as tmp:
            data = workload.train_file(Path(tmp) / "train.jsonl", args.prompt_len, args.seed)
            tries = []
            while True:
                tries.append(micro)
                say(f"step: lad.main, {mode}, {pps} prompts x {args.group_size} responses of {args.prompt_len} + "
                    f"{args.max_new_tokens} tokens per step, {args.updates_per_rollout} optimiser steps, micro-batch "
                    f"{micro}{' (auto)' if auto_micro else ''} (estimate {est(micro) / GiB:.1f} GiB), "
                    f"{args.warmup} + {args.steps} steps", flush=True)
                try:
                    rows, spy, la = run_step(args, model, data, micro, pps)
                    break
                except RuntimeError as e:
                    if not is_oom(e):
                        raise
                free_memory(device)
                if not (auto_micro and world == 1 and micro > 1):
                    err = (f"out of memory in the step: shape {args.shape}, micro-batch {micro} x {seq} tokens. Lower "
                           f"--micro-batch{f' (try {micro // 2})' if micro > 1 else ''}, or add --activation-checkpointing"
                           f" true, or shorten --max-new-tokens; beyond that, more GPUs under torchrun (FSDP2 shards "
                           f"the 16 bytes/param of weights, grads and AdamW)")
                    emit({"case": "step", **common_fields, "mode": mode, "micro_batch": micro,
                          "micro_batch_tries": tries, "status": "oom", "error": err})
                    print(f"gpu_step.py: {err}", file=sys.stderr, flush=True)
                    if world > 1:    # the other ranks wait in a collective: let torchrun end them
                        sys.stdout.flush()
                        os._exit(3)
                    return 3
                micro //= 2
                say(f"  out of memory: again with micro-batch {micro}", flush=True)
        if rank == 0:
            r = step_result(args, rows, cfg, n_params, world, peak, pps,
                            planned_gb(la, world, total_mem, args.prompt_len, cuda))
            emit({"case": "step", **common_fields, "mode": mode, "precision": precision, "lad_args": dataclasses.asdict(la),
                  "model_dir": model, "prompt_len": args.prompt_len, "max_new_tokens": args.max_new_tokens,
                  "micro_batch": micro, "micro_batch_auto": auto_micro, "micro_batch_tries": tries,
                  "auto_micro_batch_estimate_gib": est(micro) / GiB,
                  "device_mem_total_gib": total_mem / GiB if cuda else None,
                  "peak_tflops": peak, "peak_tflops_source": peak_src, **r, "sdpa_train_calls": spy,
                  "cpu_max_rss_gib": None if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB,
                  "status": "ok"})
            na = "null (no peak known: pass --peak-tflops)" if cuda else "null (CPU)"
            pct = lambda x: na if x is None else f"{100 * x:.1f} %"  # noqa: E731
            mem = ", ".join(f"{p} {v['measured_gb']:.2f} (plan {v['memplan_predicted_gb']:.2f})" for p, v in r["peak_gb"].items()
                            if v["measured_gb"] is not None and v["memplan_predicted_gb"] is not None)
            rows_out = [
                ("device", f"{device_name(device)} x {world}" + ("" if cuda else "  [CPU smoke test: not a performance figure]")),
                ("mode", f"{mode}{', activation checkpointing' if args.activation_checkpointing else ''}; SDPA on the "
                         f"trainer's sequences: {spy}"),
                ("tokens per step (all ranks)", f"{r['tokens_per_step']:,.0f} ({r['response_tokens_per_step']:,.0f} response, "
                                                f"mean length {r['response_len_mean']:.1f})"),
                ("phases, s/step (median)", ", ".join(f"{p} {r[f'{p}_s_median']:.3f}" for p in (*PHASES, "step"))),
                ("step tokens/s", f"{r['step_tokens_per_s']:,.0f} (rollout included)"),
                ("update tokens/s (prompt + response)", f"{r['update_tokens_per_s']:,.0f} "
                                                        f"({r['update_tokens_per_s_per_device']:,.0f} per device)"),
                ("MFU, 6N", pct(r["mfu"]) + f"  ({r['update_tflops_per_s_per_device']:.1f} TFLOP/s per device"
                                             + (f" of {peak:.0f}, {peak_src})" if peak else ")")),
                ("MFU incl. attention", pct(r["mfu_attn"])),
                ("old log-probs pass", f"{r['logprob_tokens_per_s']:,.0f} tokens/s, MFU 2N {pct(r['logprob_mfu'])}"),
                ("peak allocated GiB per phase", mem or ("null (CPU); process max RSS "
                                                         f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB")),
            ]
            w = max(len(k) for k, _ in rows_out)
            say("\n".join(f"{k:<{w}}  {v}" for k, v in rows_out), flush=True)
    if not check_ok and rank == 0:
        print("gpu_step.py: check FAILED (see the check lines above)", file=sys.stderr, flush=True)
    return code


def cli(argv=None):
    args = parse_args(Args, argv)
    try:
        code = main(args)
    except UsageError as e:
        print(f"gpu_step.py: error: {e}", file=sys.stderr, flush=True)
        code = 2
    finally:
        if lad.dist_on():
            dist.destroy_process_group()
    sys.exit(code)


if __name__ == "__main__":
    cli()
