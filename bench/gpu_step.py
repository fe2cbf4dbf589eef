"""bench/gpu_step.py -- GPU figures: throughput, MFU and peak memory of lad.py's update phase
on a random-init Qwen2 of a real shape (FSDP2 + transformers, bf16), and a one-step numerical check
that FSDP2 and single-device training give the same loss and gradient norm.

What one benchmark step is (lad.py's update phase, its own functions, on a synthetic rollout batch):
prompts_per_rank x group_size responses per rank, every one prompt_len + response_len random token ids
(default 512 + 1536 = 2048; no padding, so SDPA runs causal attention without a mask); rewards random
0/1, advantages from lad.group_advantages; then
    1. the old log-probs pass: lad.Policy under no_grad, micro-batch by micro-batch (timed apart);
    2. mini_batches optimiser steps, each over a shuffled share of the responses in micro-batches:
       lad.make_batch, lad.Policy (chunked log-softmax over response tokens), lad.lad_loss (JS,
       1/eta = 4) or lad.grpo_loss, with lad.global_denominators' token-mean denominator, backward,
       clip_grad_norm_ (full_tensor() of FSDP2's DTensor), AdamW step.
Measured after warm-up steps, with torch.cuda.synchronize around each phase: update-phase tokens/s
(every token the forward sees, prompt + response; and response tokens alone), MFU, peak memory; see
README "gpu" for every JSON field. MFU = 6 * N * tokens / time / (peak * devices), N = all parameters
(tied embeddings counted once); also an attention-inclusive MFU with PaLM's (Chowdhery et al. 2022,
App. B) 6 * N + 12 * layers * (heads * head_dim) * seq FLOPs per token, which counts the full seq x seq
score matrix as PaLM, Megatron and nanoGPT do (causal masking needs half of that term).

Modes: --fsdp true (default): lad.shard_policy (fully_shard per decoder layer + root; on CUDA
MixedPrecisionPolicy bf16 compute, fp32 master weights, AdamW state and reductions), under a 1-rank
process group this script opens (gloo on CPU, nccl on CUDA) or under torchrun. --fsdp false: one device,
no wrapper, bf16 through torch.autocast on CUDA (DDP under torchrun, as lad.py). --check: before the
benchmark, one step from identical weights and batch: fp32 FSDP2 vs fp32 single device (must agree to
1e-5 relative), and bf16 FSDP2 (MixedPrecisionPolicy) vs bf16 single device (autocast), bound 2e-2
relative; prints PASS/FAIL per comparison, exits 1 on a FAIL.

Commands (the image's python on a GPU machine: torch and transformers are installed there; no download)
    CPU smoke test, seconds, not a performance figure:
        python bench/gpu_step.py --shape tiny --prompt-len 16 --response-len 48 --prompts-per-rank 2 \\
            --steps 2 --warmup 1 --check
    1 GPU (H100/H200), as two commands of a few minutes each (bench/RESULTS.md "gpu" has them verbatim):
        python bench/gpu_step.py --shape 0.5b --check --out $OUT/gpu_0.5b.json          # first command:
        python bench/gpu_step.py --shape 0.5b --fsdp false --out $OUT/gpu_0.5b_single.json   # these three
        python bench/gpu_step.py --shape 1.5b --out $OUT/gpu_1.5b.json
        python bench/gpu_step.py --shape 3b --activation-checkpointing true --out $OUT/gpu_3b_ac.json   # second
    N GPUs, one node (FSDP2 over N ranks; 7b's 122 GB of fp32 weights + grads + AdamW need N >= 4 at 80 GB):
        torchrun --nproc_per_node=N bench/gpu_step.py --shape 0.5b --check --out gpu_0.5b_xN.json
        torchrun --nproc_per_node=N bench/gpu_step.py --shape 7b --activation-checkpointing true --out gpu_7b_xN.json

Deliberately left out: rollout (vLLM generation) and the weight sync (bench/sync_cost.py), ragged
lengths (padding would give SDPA a dense mask and take it off the flash kernel), torch.compile, CPU
offload, tensor/sequence parallelism, multi-node runs, real weights (throughput does not depend on them).
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
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lad  # noqa: E402

# Fragmentation at 2048-token micro-batches costs GiBs of reserved-but-unusable memory; expandable
# segments avoid most of it. Read when CUDA first allocates, so setting it here (after import) works.
if not (os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")):
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"

# ----------------------------------------------------------------------------------------------------
# Args
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Args:
    """Update-phase tokens/s, MFU and peak memory of lad.py's training step; --check: FSDP2 vs one device."""

    shape: str = "0.5b"
    """model shape: tiny (CPU smoke test), 0.5b, 1.5b, 3b, 7b (Qwen2.5 configs, random init)"""
    layers: int = 0
    """decoder layers; 0 = the shape's (fewer layers: a CPU dry run of a real width)"""
    fsdp: bool = True
    """FSDP2 via lad.shard_policy (the issue's path); false = one device, no wrapper (DDP under torchrun)"""
    bf16: bool = True
    """bf16 compute on CUDA (FSDP2 MixedPrecisionPolicy, or autocast without FSDP); false = fp32 as lad.py
    on 1 GPU. CPU always runs fp32. MFU is against the bf16 peak either way"""
    activation_checkpointing: bool = False
    """recompute each decoder layer in backward (lad.py's flag; not counted in MFU)"""
    prompt_len: int = 512
    """prompt tokens per response (P); P + response_len = 2048, the issue's minimum"""
    response_len: int = 1536
    """response tokens per response (T); every one is scored by the loss (no padding)"""
    prompts_per_rank: int = 8
    """prompts per rank per rollout batch (lad.py's --prompts-per-step / world)"""
    group_size: int = lad.Args.group_size
    """responses per prompt (lad.py default; paper App. C.2)"""
    mini_batches: int = 2
    """optimiser steps per rollout batch (lad.py's --updates-per-rollout)"""
    micro_batch: int = 0
    """responses per forward/backward per rank; 0 = auto: the largest power of 2 whose memory estimate
    fits --mem-fraction of the GPU (8 for 0.5b on 80 GB), halved on out-of-memory (one process only)"""
    steps: int = 5
    """timed benchmark steps (one step = one rollout batch's old log-probs pass + update phase); 0 = check only"""
    warmup: int = 2
    """untimed steps first (CUDA kernel selection, allocator growth)"""
    loss: str = "lad"
    """objective: lad (paper Eq. 8) or grpo (clipped surrogate)"""
    divergence: str = "js"
    """LAD's f (lad.py default, the paper's main choice)"""
    inv_eta: float = lad.Args.inv_eta
    """1/eta (lad.py default; paper Table 6)"""
    clip_low: float = lad.Args.clip_low
    """GRPO clip below 1 (lad.py default)"""
    clip_high: float = lad.Args.clip_high
    """GRPO clip above 1 (lad.py default)"""
    lr: float = 1e-6
    """AdamW learning rate (the paper's 7B value; the speed does not depend on it)"""
    clip_grad: float = lad.Args.clip_grad
    """max global gradient norm (lad.py default)"""
    logprob_chunk: int = lad.Args.logprob_chunk
    """response tokens per log-softmax chunk in lad.Policy (lad.py default)"""
    peak_tflops: float = 0.0
    """peak dense bf16 TFLOP/s of one device for MFU; 0 = looked up from the device name (null if unknown)"""
    mem_fraction: float = 0.75
    """auto micro-batch: estimated peak must stay under this fraction of the GPU's memory"""
    check: bool = False
    """first run the one-step check: FSDP2 vs one device, fp32 (and bf16); exit 1 on FAIL"""
    check_perturb: float = 0.0
    """testing the check: add this to the final norm's weights on the FSDP2 side, so that it must FAIL; 0 = off"""
    seed: int = 0
    """seed of the weights (same on every rank) and of the batch (plus the rank)"""
    out: str = ""
    """write the results as JSON to this file (rank 0); empty = print only"""


class UsageError(Exception):
    """Bad arguments or a shape that cannot fit: one line on stderr, exit code 2."""


# ----------------------------------------------------------------------------------------------------
# Shapes (Qwen2.5 model cards' config.json) and the model
# ----------------------------------------------------------------------------------------------------

# name: hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings, published total params
SHAPES = {
    "tiny": (64, 128, 2, 4, 2, 512, True, None),
    "0.5b": (896, 4864, 24, 14, 2, 151936, True, 0.49e9),
    "1.5b": (1536, 8960, 28, 12, 2, 151936, True, 1.54e9),
    "3b": (2048, 11008, 36, 16, 2, 151936, True, 3.09e9),
    "7b": (3584, 18944, 28, 28, 4, 152064, False, 7.61e9),
}


def make_config(shape, layers=0):
    from transformers import Qwen2Config

    h, i, n_layers, heads, kv, vocab, tied, _ = SHAPES[shape]
    return Qwen2Config(hidden_size=h, intermediate_size=i, num_hidden_layers=layers or n_layers,
                       num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                       tie_word_embeddings=tied, rope_theta=1e6, rms_norm_eps=1e-6,
                       max_position_embeddings=32768, attn_implementation="sdpa")


def build_model(cfg, device, seed):
    """Random init straight on the device (no host copy of a 7B model); the same seed gives the same
    weights on every rank and in every call (the check's sides rely on it)."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        lm = Qwen2ForCausalLM(cfg)
    return lm.float()


def count_params(cfg):
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in Qwen2ForCausalLM(cfg).parameters())   # tied weights counted once


# ----------------------------------------------------------------------------------------------------
# FLOPs, peaks, memory
# ----------------------------------------------------------------------------------------------------

# Dense (no 2:4 sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets (their with-sparsity
# figures halved). First match on the device name wins: "NVIDIA H100 80GB HBM3" is the SXM part.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("H200 NVL", 835.0), ("H200", 989.0), ("A100", 312.0)]


def lookup_peak(name):
    for key, tf in PEAK_BF16_TFLOPS:
        if key in name:
            return tf, f"datasheet ({key})"
    return None, None


def flops_per_token(cfg, n_params, seq):
    """Training (forward + backward) FLOPs per token: 6N, and PaLM's 6N + 12 L (heads * head_dim) S."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * seq
    return 6 * n_params, 6 * n_params + attn


# Saved activations per token per decoder layer, measured on CPU with saved_tensors_hooks for the 0.5b,
# 1.5b and 3b widths: 0.73x (34 h + 10 i) bytes with bf16 weights (FSDP2's mixed precision), 0.83x
# under autocast (weight casts excluded), 1.36x in fp32. Rounded up: 1.0x and 1.5x.
ACT_FACTOR = {"bf16": 1.0, "fp32": 1.5}


def memory_estimate(cfg, n_params, micro, seq, chunk, *, shard_over, bf16_autocast, bf16, checkpointing):
    """Rough peak bytes on one device: weights + grads + AdamW (16 bytes/param, over the FSDP ranks),
    autocast's bf16 weight copies, saved activations, the log-softmax chunk (about 6 float32
    (chunk, vocab) tensors alive between forward and backward recompute)."""
    h, i, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    states = 16 * n_params / shard_over + (2 * n_params if bf16_autocast else 0)
    if shard_over > 1:       # unsharded bf16 copies in use: the root (embedding, head) and ~2 layers
        states += 2 * 2 * (cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2) + 2 * n_params / L)
    per_layer = ACT_FACTOR["bf16" if bf16 else "fp32"] * (34 * h + 10 * i)
    if checkpointing:        # each layer keeps its input; one layer at a time is recomputed in full
        act = micro * seq * (L * h * (2 if bf16 else 4) + per_layer)
    else:
        act = micro * seq * L * per_layer
    return states + act + 6 * chunk * cfg.vocab_size * 4


GiB = 2 ** 30


# ----------------------------------------------------------------------------------------------------
# Synthetic rollout batch
# ----------------------------------------------------------------------------------------------------


def rollout_batch(n_prompts, group, P, T, vocab, seed):
    """lad.py's items (prompt_ids, response_ids), random ids, and group advantages of random 0/1 rewards."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n_prompts):
        prompt = torch.randint(0, vocab, (P,), generator=g).tolist()
        items += [(prompt, torch.randint(0, vocab, (T,), generator=g).tolist()) for _ in range(group)]
    rewards = torch.randint(0, 2, (n_prompts * group,), generator=g).float()
    adv, _ = lad.group_advantages(rewards, group)
    return items, adv.tolist()


# ----------------------------------------------------------------------------------------------------
# The update phase: lad.py's old_logprobs and update_policy, the functions its loop calls
# ----------------------------------------------------------------------------------------------------


def sync_device(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chosen_loss(args):
    """The training loop's loss choice (lad.make_loss) for this script's settings."""
    return lad.make_loss(lad.Args(loss=args.loss, divergence=args.divergence, inv_eta=args.inv_eta,
                                  clip_low=args.clip_low, clip_high=args.clip_high))


@contextmanager
def sdpa_spy(record):
    """Record how transformers calls SDPA (a dense mask would rule out the flash kernel)."""
    f = torch.nn.functional.scaled_dot_product_attention

    def spy(*a, **k):
        if not record:
            record.update(mask="none" if k.get("attn_mask") is None else "dense", is_causal=bool(k.get("is_causal")),
                          q_dtype_at_call=str(a[0].dtype).replace("torch.", ""))
        return f(*a, **k)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = f


def bench_step(policy, fwd, lm, opt, items, adv, args, micro, device, world, autocast, step, spy=None):
    """One rollout batch through lad.py's own phase functions: lad.old_logprobs (no grad), then
    lad.update_policy (args.mini_batches AdamW steps). Returns seconds of each phase, the mean over
    optimiser steps of this rank's objective, and the mean gradient norm."""
    loss_fn = chosen_loss(args)
    batch = {"items": items, "adv": adv, "engine_logp": [None] * len(items), "real": len(items)}
    sync_device(device)
    t0 = time.perf_counter()
    with sdpa_spy(spy) if spy is not None else nullcontext():
        old, _, _, _ = lad.old_logprobs(policy, batch, micro, 0, device, autocast=autocast)
    sync_device(device)
    t1 = time.perf_counter()
    lm.train()
    ddp = isinstance(fwd, torch.nn.parallel.DistributedDataParallel)
    sums, grad_norms = lad.update_policy(
        fwd, list(lm.parameters()), opt, batch, old, None, loss_fn, updates_per_rollout=args.mini_batches,
        micro_batch=micro, clip_grad=args.clip_grad, pad_id=0, device=device, world=world,
        shuffle_seed=lad.seed_for("shuffle", args.seed, step), no_sync=fwd.no_sync if ddp else None, autocast=autocast)
    sync_device(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, sums["objective_sum"] / args.mini_batches, sum(grad_norms) / len(grad_norms)


def autocast_for(device, on):
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if on else nullcontext


def run_benchmark(args, cfg, n_params, micro, device, rank, world):
    cuda = device.type == "cuda"
    bf16 = cuda and args.bf16
    lm = build_model(cfg, device, args.seed)
    policy = lad.Policy(lm, args.logprob_chunk, 1.0)
    if args.activation_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.fsdp:
        lad.shard_policy(policy, lm, cuda=bf16)       # bf16 MixedPrecisionPolicy iff bf16
    fwd = policy
    if world > 1 and not args.fsdp:
        fwd = torch.nn.parallel.DistributedDataParallel(policy, device_ids=[device.index] if cuda else None)
    opt = torch.optim.AdamW(lm.parameters(), lr=args.lr, weight_decay=0.0)
    items, adv = rollout_batch(args.prompts_per_rank, args.group_size, args.prompt_len, args.response_len,
                               cfg.vocab_size, args.seed * 1000 + rank)
    autocast = autocast_for(device, bf16 and not args.fsdp)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    spy, times, losses = {}, [], []
    for step in range(args.warmup + args.steps):
        t_lp, t_up, loss, gn = bench_step(policy, fwd, lm, opt, items, adv, args, micro, device, world, autocast,
                                          step, spy if step == 0 else None)
        if rank == 0:
            tag = "warm-up" if step < args.warmup else "timed"
            print(f"  step {step + 1}/{args.warmup + args.steps} ({tag}): old log-probs {t_lp:.3f} s, "
                  f"update {t_up:.3f} s, loss {loss:.4g}, grad norm {gn:.4g}", flush=True)
        if step >= args.warmup:
            times.append((t_lp, t_up))
            losses.append((loss, gn))
    mem = {}
    if cuda:
        mem = {"peak_mem_allocated_gib": torch.cuda.max_memory_allocated(device) / GiB,
               "peak_mem_reserved_gib": torch.cuda.max_memory_reserved(device) / GiB}
    return {"times": times, "losses": losses, "sdpa": spy, "mem": mem,
            "attn_implementation": lm.config._attn_implementation}


# ----------------------------------------------------------------------------------------------------
# One-step check: FSDP2 vs one device, same weights, same batch
# ----------------------------------------------------------------------------------------------------

CHECK_MICRO = 2          # sequences per forward in the check: fp32 activations are ~1.5x bf16's
FP32_RTOL = 1e-5
BF16_RTOL = 2e-2
# bf16 bound: the two sides round different tensors (FSDP2 casts weights and the residual stream to bf16;
# autocast casts only matmul inputs and keeps an fp32 residual), so each differs from fp32 by bf16's
# rounding (eps 2^-8 = 3.9e-3 per element) summed over the layers; the loss and gradient norm are means
# and sums over ~10^4-10^6 such terms, so their gap is a few eps at most. 2e-2 = 5 eps: wide enough for
# that, far below what a wrong denominator, a missing gradient reduction or a stale shard gives (>= 1e-1).


def one_step(args, cfg, items, adv, old_rows, device, rank, world, *, shard, bf16, perturb=0.0):
    """Loss and pre-clip gradient norm of one optimiser step's forward/backward. shard: FSDP2 over all
    ranks, each the slice rank::world of the batch; else this rank alone runs the whole batch."""
    lm = build_model(cfg, device, args.seed)
    if perturb:
        with torch.no_grad():             # every logit scaled by (1 + perturb): loss and gradients move
            lm.model.norm.weight += perturb
    policy = lad.Policy(lm, args.logprob_chunk, 1.0)
    if args.activation_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if shard:
        lad.shard_policy(policy, lm, cuda=bf16)
    idx = list(range(rank, len(items), world)) if shard else list(range(len(items)))
    tokens = float(sum(len(items[i][1]) for i in idx))
    denom = lad.global_denominators([tokens], world, device)[0][0] if shard else tokens
    autocast = autocast_for(device, bf16 and not shard)
    lm.train()
    total = torch.zeros((), device=device)
    for lo in range(0, len(idx), CHECK_MICRO):
        mi = idx[lo:lo + CHECK_MICRO]
        ids, attn, pos, tgt, valid = lad.make_batch([items[i] for i in mi], 0, device)
        with autocast():
            logp, _ = policy(ids, attn, pos, tgt, valid)
        old = torch.stack([old_rows[i] for i in mi]).to(device)
        a = torch.tensor([adv[i] for i in mi], dtype=torch.float32, device=device)
        loss, _ = chosen_loss(args)(logp.float(), old, a, valid.float(), denom=denom, weights=None)
        loss.backward()
        total += loss.detach()
    gn = torch.nn.utils.clip_grad_norm_(lm.parameters(), args.clip_grad)
    gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
    if shard:                # gradients are averaged over ranks (denominator / world), so is the loss
        total = lad.all_reduce(total) / world
    out = {"loss": float(total), "grad_norm": float(gn)}
    del lm, policy
    free_memory(device)
    return out


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def run_check(args, cfg, device, rank, world):
    """fp32: FSDP2 vs one device; bf16 (CUDA, and CPU where FSDP2's bf16 policy runs too): FSDP2's
    MixedPrecisionPolicy vs autocast. The old log-probs are one fp32 no-grad pass plus a fixed random
    offset (ratios away from 1), shared by all sides, so the loss reflects each side's own log-probs."""
    n = args.group_size * world
    items, adv = rollout_batch(max(1, n // args.group_size), args.group_size, args.prompt_len, args.response_len,
                               cfg.vocab_size, args.seed * 1000 + 17)                  # same on every rank
    lm = build_model(cfg, device, args.seed)
    policy = lad.Policy(lm, args.logprob_chunk, 1.0)
    g = torch.Generator().manual_seed(args.seed + 1)
    old_rows = []
    with torch.no_grad():
        for lo in range(0, n, CHECK_MICRO):
            lp, _ = policy(*lad.make_batch(items[lo:lo + CHECK_MICRO], 0, device))
            old_rows += list((lp.cpu() + 0.3 * torch.randn(lp.shape, generator=g)).unbind(0))
    del lm, policy
    free_memory(device)
    if world > 1:            # every rank must see the same old log-probs (kernels may differ in the last bit)
        obj = [old_rows]
        dist.broadcast_object_list(obj, src=0)
        old_rows = obj[0]
    comparisons = [("fp32", False, FP32_RTOL)]
    if device.type == "cuda" or args.shape == "tiny" or args.layers:   # bf16 on CPU: only small models (slow)
        comparisons.append(("bf16", True, BF16_RTOL))
    res, ok = {}, True
    for name, bf16, tol in comparisons:
        single = one_step(args, cfg, items, adv, old_rows, device, rank, world, shard=False, bf16=bf16)
        sharded = one_step(args, cfg, items, adv, old_rows, device, rank, world, shard=True, bf16=bf16,
                           perturb=args.check_perturb)
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
    """CUDA out-of-memory, also when it surfaces through NCCL or checkpoint recomputation as a RuntimeError."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def free_memory(device):
    if device.type == "cuda":                 # a model's worth of GPU memory back before the next one
        gc.collect()
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------


def validate(args):
    if args.shape not in SHAPES:
        raise UsageError(f"--shape must be one of {', '.join(SHAPES)}, got {args.shape!r}")
    for name in ("prompt_len", "response_len", "prompts_per_rank", "mini_batches", "logprob_chunk"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("layers", "micro_batch", "steps", "warmup"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.group_size < 2:
        raise UsageError(f"--group-size must be >= 2 (group advantages need a spread), got {args.group_size}")
    if args.prompts_per_rank * args.group_size < args.mini_batches:
        raise UsageError(f"--mini-batches {args.mini_batches} exceeds the {args.prompts_per_rank * args.group_size}"
                         " responses per rank")
    if not 0 < args.mem_fraction <= 1:
        raise UsageError(f"--mem-fraction must be in (0, 1], got {args.mem_fraction}")
    if args.steps == 0 and not args.check:
        raise UsageError("--steps 0 runs nothing without --check")


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(args):
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    validate(args)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:     # share the cores between ranks (an explicit setting wins)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    backend = "nccl" if cuda else "gloo"
    if "MASTER_ADDR" in os.environ and "RANK" in os.environ:          # torchrun
        dist.init_process_group(backend)
    elif args.fsdp or args.check:                                     # FSDP2 needs a group, even of one
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    world = dist.get_world_size() if lad.dist_on() else 1
    say = print if rank == 0 else (lambda *a, **k: None)

    cfg = make_config(args.shape, args.layers)
    n_params = count_params(cfg)
    published = SHAPES[args.shape][7] if not args.layers else None
    seq = args.prompt_len + args.response_len
    bf16 = cuda and args.bf16
    per_mini = -(-args.prompts_per_rank * args.group_size // args.mini_batches)
    shard_over = world if args.fsdp else 1
    est = lambda m: memory_estimate(cfg, n_params, m, seq, args.logprob_chunk, shard_over=shard_over,  # noqa: E731
                                    bf16_autocast=bf16 and not args.fsdp, bf16=bf16,
                                    checkpointing=args.activation_checkpointing)
    total_mem = torch.cuda.get_device_properties(device).total_memory if cuda else None
    if cuda and est(0) > 0.95 * total_mem:
        raise UsageError(f"--shape {args.shape}: weights + grads + AdamW alone need about {est(0) / GiB:.0f} GiB per "
                         f"device ({'FSDP2 over ' + str(world) + ' rank(s)' if args.fsdp else 'no sharding'}) "
                         f"of {total_mem / GiB:.0f} GiB: run under torchrun with more GPUs and --fsdp true")
    micro = args.micro_batch
    if micro == 0:
        micro = 1
        while micro * 2 <= per_mini and (not cuda or est(micro * 2) <= args.mem_fraction * total_mem):
            micro *= 2
        if not cuda:
            micro = min(micro, 8)
    auto_micro = args.micro_batch == 0

    peak, peak_src = (args.peak_tflops, "--peak-tflops") if args.peak_tflops > 0 else \
        (lookup_peak(device_name(device)) if cuda else (None, None))
    mode = ("fsdp2" if args.fsdp else ("ddp" if world > 1 else "single")) + \
        (" bf16 (MixedPrecisionPolicy)" if bf16 and args.fsdp else " bf16 (autocast)" if bf16 else " fp32")
    import transformers

    say(f"gpu_step: shape {args.shape} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}): "
        f"{n_params:,} params" + (f" (published {published / 1e9:.2f}B: "
                                   f"{'matches' if abs(n_params - published) < 0.006e9 else 'MISMATCH'})"
                                   if published else ""))
    say(f"  {mode}, {world} rank(s), device {device_name(device)}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}")
    say(f"  batch per rank: {args.prompts_per_rank} prompts x {args.group_size} = "
        f"{args.prompts_per_rank * args.group_size} responses of {args.prompt_len} + {args.response_len} = {seq} "
        f"tokens; {args.mini_batches} optimiser steps of {per_mini} responses in micro-batches of {micro}"
        f"{' (auto)' if auto_micro else ''}; memory estimate {est(micro) / GiB:.1f} GiB"
        + (f" of {total_mem / GiB:.1f} GiB" if cuda else ""))
    say("  config: " + json.dumps(dataclasses.asdict(args)), flush=True)

    result = {"script": "bench/gpu_step.py", "args": dataclasses.asdict(args), "device": device_name(device),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "cuda": torch.version.cuda if cuda else None, "world_size": world, "mode": mode,
              "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"),
              "params": n_params, "params_published": published, "seq_len": seq, "micro_batch": micro,
              "micro_batch_auto": auto_micro, "mem_estimate_gib": est(micro) / GiB,
              "device_mem_total_gib": total_mem / GiB if cuda else None,
              "peak_tflops": peak, "peak_tflops_source": peak_src, "check": None, "status": "ok"}

    def finish(code):
        if rank == 0 and args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as fh:
                json.dump(result, fh, indent=1)
                fh.write("\n")
            print(f"wrote {args.out}", flush=True)
        return code

    def oom_message(what, m):
        if what == "check":
            return (f"out of memory in the check (fp32, {CHECK_MICRO} sequences of {seq} tokens per forward, "
                    f"shape {args.shape}): run --check with --shape 0.5b, or shorten --prompt-len/--response-len, "
                    f"or add --activation-checkpointing true")
        of = f" of {total_mem / GiB:.1f} GiB" if cuda else ""
        return (f"out of memory in the benchmark: shape {args.shape}, micro-batch {m} x {seq} tokens "
                f"(estimate {est(m) / GiB:.1f} GiB{of}). Lower --micro-batch"
                f"{f' (try {m // 2})' if m > 1 else ''}, or add --activation-checkpointing true, or shorten "
                f"--response-len; beyond that, more GPUs under torchrun (FSDP2 shards the 16 bytes/param of "
                f"weights, grads and AdamW)")

    # ---- the check first: a numerical failure should not wait for the benchmark
    check_ok = True
    if args.check:
        say(f"check: one step, {args.group_size * world} responses, FSDP2 over {world} rank(s) vs one device "
            f"(the whole batch on each rank)", flush=True)
        try:
            chk = run_check(args, cfg, device, rank, world)
        except RuntimeError as e:           # torch.cuda.OutOfMemoryError is one
            if not is_oom(e):
                raise
            chk = None
        if chk is None:
            free_memory(device)
            result["status"] = "oom"
            result["error"] = oom_message("check", CHECK_MICRO)
            print(f"gpu_step.py: {result['error']}", file=sys.stderr, flush=True)
            return finish(3)
        result["check"] = chk
        check_ok = chk["pass"]
        for name in ("fp32", "bf16"):
            if name in chk:
                d = chk[name]
                say(f"  {name}: loss single {d['single']['loss']:.8g} fsdp2 {d['fsdp2']['loss']:.8g} "
                    f"(rel diff {d['loss_rel_diff']:.2e}); grad norm single {d['single']['grad_norm']:.8g} "
                    f"fsdp2 {d['fsdp2']['grad_norm']:.8g} (rel diff {d['grad_norm_rel_diff']:.2e}); "
                    f"bound {d['rtol']:.0e}: {'PASS' if d['pass'] else 'FAIL'}")
        if "bf16" in chk:
            d = chk["bf16"]
            say(f"  bf16 vs fp32 (context): single loss {d['single_vs_fp32_loss_rel_diff']:.2e} grad norm "
                f"{d['single_vs_fp32_grad_norm_rel_diff']:.2e}; fsdp2 loss {d['fsdp2_vs_fp32_loss_rel_diff']:.2e} "
                f"grad norm {d['fsdp2_vs_fp32_grad_norm_rel_diff']:.2e}")
        else:
            say("  bf16: not compared (CPU with a full-size shape: too slow; on CUDA always)")
        say(f"check: {'PASS' if check_ok else 'FAIL'}", flush=True)

    # ---- the benchmark (one process: halve an automatic micro-batch on out-of-memory and start again)
    if args.steps:
        tries = []
        while True:
            tries.append(micro)
            try:
                out = run_benchmark(args, cfg, n_params, micro, device, rank, world)
            except RuntimeError as e:
                if not is_oom(e):
                    raise
                out = None
            if out is not None:
                break
            free_memory(device)
            if not (auto_micro and world == 1 and micro > 1):
                result["status"] = "oom"
                result["error"] = oom_message("benchmark", micro)
                result["micro_batch_tries"] = tries
                print(f"gpu_step.py: {result['error']}", file=sys.stderr, flush=True)
                if world > 1:        # the other ranks wait in a collective: let torchrun end them
                    finish(3)
                    sys.stdout.flush()
                    os._exit(3)
                return finish(3)
            micro //= 2
            say(f"  out of memory: again with micro-batch {micro}", flush=True)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
        result["micro_batch"], result["micro_batch_tries"] = micro, tries
        result["mem_estimate_gib"] = est(micro) / GiB
        # slowest rank per step (one collective), as lad.py's perf/ metrics
        t = torch.tensor(out["times"], dtype=torch.float64, device=device)
        mem = torch.tensor([out["mem"].get("peak_mem_allocated_gib", 0.0), out["mem"].get("peak_mem_reserved_gib", 0.0)],
                           dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            dist.all_reduce(mem, op=dist.ReduceOp.MAX)
        t_lp, t_up = t[:, 0].tolist(), t[:, 1].tolist()
        n_resp = args.prompts_per_rank * args.group_size * world
        tok, resp_tok = n_resp * seq, n_resp * args.response_len            # per step, all ranks
        f6, f_attn = flops_per_token(cfg, n_params, seq)
        up_tps, lp_tps = tok * len(t_up) / sum(t_up), tok * len(t_lp) / sum(t_lp)
        mfu = (lambda f, tps: f * tps / (peak * 1e12 * world)) if peak else (lambda f, tps: None)
        result.update({
            "attn_implementation": out["attn_implementation"], "sdpa_call": out["sdpa"],
            "responses_per_step": n_resp, "tokens_per_step": tok, "response_tokens_per_step": resp_tok,
            "optimizer_steps_per_step": args.mini_batches, "timed_steps": len(t_up), "warmup_steps": args.warmup,
            "update_s": t_up, "logprob_s": t_lp,
            "update_s_median": statistics.median(t_up), "logprob_s_median": statistics.median(t_lp),
            "update_tokens_per_s": up_tps, "update_response_tokens_per_s": resp_tok * len(t_up) / sum(t_up),
            "update_tokens_per_s_per_device": up_tps / world, "logprob_tokens_per_s": lp_tps,
            "flops_per_token_6n": f6, "flops_per_token_attn": f_attn,
            "update_tflops_per_s_per_device": f6 * up_tps / world / 1e12,
            "mfu": mfu(f6, up_tps), "mfu_attn": mfu(f_attn, up_tps), "logprob_mfu": mfu(f6 / 3, lp_tps),
            "peak_mem_allocated_gib": mem[0].item() if cuda else None,
            "peak_mem_reserved_gib": mem[1].item() if cuda else None,
            "cpu_max_rss_gib": None if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB,
            "last_loss": out["losses"][-1][0], "last_grad_norm": out["losses"][-1][1],
        })
        r = result
        na = "null (no peak known: pass --peak-tflops)" if cuda else "null (CPU)"
        pct = lambda x: na if x is None else f"{100 * x:.1f} %"  # noqa: E731
        rows = [
            ("device", f"{r['device']} x {world}" + ("" if cuda else "  [CPU smoke test: not a performance figure]")),
            ("mode", f"{mode}{', activation checkpointing' if args.activation_checkpointing else ''}, "
                     f"SDPA ({r['attn_implementation']}; mask {out['sdpa'].get('mask')}, "
                     f"is_causal {out['sdpa'].get('is_causal')})"),
            ("tokens per step (all ranks)", f"{tok:,} ({resp_tok:,} response), {args.mini_batches} optimiser steps"),
            ("update phase, s/step", f"median {r['update_s_median']:.3f} over {len(t_up)} steps"),
            ("update tokens/s (prompt + response)", f"{up_tps:,.0f} ({up_tps / world:,.0f} per device)"),
            ("update response tokens/s", f"{r['update_response_tokens_per_s']:,.0f}"),
            ("MFU, 6N", pct(r["mfu"]) + f"  ({r['update_tflops_per_s_per_device']:.1f} TFLOP/s per device"
                                         + (f" of {peak:.0f}, {peak_src})" if peak else ")")),
            ("MFU incl. attention, 6N + 12 L H S", pct(r["mfu_attn"])),
            ("old log-probs pass, s/step", f"median {r['logprob_s_median']:.3f} ({lp_tps:,.0f} tokens/s, "
                                           f"MFU 2N {pct(r['logprob_mfu'])})"),
            ("peak memory", (f"allocated {r['peak_mem_allocated_gib']:.1f} GiB, reserved {r['peak_mem_reserved_gib']:.1f}"
                             f" GiB (estimate {r['mem_estimate_gib']:.1f}) of {total_mem / GiB:.1f} GiB") if cuda else
             f"CUDA: null; process max RSS (CPU, not GPU memory) {r['cpu_max_rss_gib']:.2f} GiB"),
            ("last step", f"loss {r['last_loss']:.5g}, grad norm {r['last_grad_norm']:.5g}"),
        ]
        w = max(len(k) for k, _ in rows)
        say("\n".join(f"{k:<{w}}  {v}" for k, v in rows), flush=True)
    if not check_ok:
        result["status"] = "check_failed"
        if rank == 0:
            print("gpu_step.py: check FAILED (see the check lines above)", file=sys.stderr, flush=True)
    return finish(0 if check_ok else 1)


def cli(argv=None):
    args = lad.parse_args(Args, argv)
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
