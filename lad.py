"""LAD: Learning Advantage Distribution for Reasoning (Li & Li, 2026) -- loss and training loop.

Implements the practical LAD objective (paper Sec. 3.2, Eq. 8; divergences of Table 5)

    L = E_{y ~ pi_old} [ e^{A/eta} * f( r * e^{-A/eta} ) ],   r = pi_theta(y|x) / pi_old(y|x)

whose gradient is f'(x) * r * grad log pi_theta (Eq. 9), next to the baselines it is compared with
(GRPO/DAPO clipped surrogate, FlowRL), group-normalised advantages, and the RL training loop.

The "LOSS" section below is self-contained (only `torch`): copy it into verl, TRL or OpenRLHF as is.

Commands
    CPU, one process:   python lad.py --divergence js
    CPU, two ranks:     torchrun --nproc_per_node=2 lad.py --divergence js
    1 GPU:              python lad.py --divergence js --model <hf-path> --train-data <file>
    1 GPU, bf16:        python lad.py --fsdp true --model <hf-path> --train-data <file>   (one-rank FSDP2)
    8 GPUs:             torchrun --nproc_per_node=8 lad.py --divergence js --model <hf-path> --train-data <file>
    8 GPUs, FSDP2:      torchrun --nproc_per_node=8 lad.py --fsdp true --engine vllm --model <hf-path> ...
                        (--engine hf without vLLM: each rank samples from an unsharded bf16 copy)
    GRPO baseline:      add --loss grpo

Deliberately left out
    - a learned critic (PPO/GAE): advantages are group-normalised outcome rewards, as in the paper;
    - reference-model KL for LAD: the paper uses none (its trust region is pi_old, Eq. 2);
    - Clip-Cov, KL-Cov, EntAdv baselines (planned; see README).
"""

from __future__ import annotations

import math

import torch

# ----------------------------------------------------------------------------------------------------
# LOSS (pure functions of tensors; no model, no args, no torch.distributed)
#
# Shapes: B = responses in the micro-batch, T = response tokens (right-padded); mask is 1 on valid
# response tokens. Everything is computed in log space: log x = log r - A/eta.
# ----------------------------------------------------------------------------------------------------

# Named clamps (README "Numerics"). Both keep float32 finite for 1/eta <= 32, |A| <= 10 and
# |log r| <= 50, with the worst per-token value about e^{30} * 50 and the worst gradient about e^{30}.
LOG_RATIO_CLAMP = 20.0
"""|log r| is clamped to this (as verl does for PPO). Changes the gradient: a token whose |log r|
exceeds it gets zero gradient (its policy already moved e^20-fold). Reported as loss/log_ratio_clamp_frac."""
MAX_LOG_WEIGHT = 30.0
"""|A/eta| is clamped to this before e^{A/eta}. Changes the target, not the gradient's form: such a
token is trained toward e^{30} instead of e^{A/eta}. Reported as loss/weight_clamp_frac."""

_LOG2 = math.log(2.0)


# Each divergence maps log x to (f(x), x * f'(x)), both finite for any finite log x.
# Per-token loss is w * f(x) with w = e^{A/eta}; its derivative w.r.t. log r is w * x * f'(x) = r * f'(x)
# (paper Eq. 9), so the second output times w is the exact gradient coefficient.
def _kl(lx):  # f(x) = x log x (Table 5)
    x = lx.exp()
    return x * lx, x * (lx + 1.0)


def _rkl(lx):  # f(x) = -log x
    return -lx, torch.full_like(lx, -1.0)


def _jf(lx):  # f(x) = (x - 1) log x
    x = lx.exp()
    return (x - 1.0) * lx, x * lx + x - 1.0


def _tv(lx):  # f(x) = |x - 1|; subgradient 0 at x = 1
    xm1 = torch.expm1(lx)
    return xm1.abs(), lx.exp() * torch.sign(xm1)


def _hd(lx):  # f(x) = 0.5 (sqrt x - 1)^2
    s = (0.5 * lx).exp()
    return 0.5 * (s - 1.0) ** 2, 0.5 * (s * s - s)


def _js(lx):  # f(x) = 0.5 (x log x - (x+1) log((x+1)/2)); log((x+1)/2) = softplus(log x) - log 2
    x = lx.exp()
    lmid = torch.nn.functional.softplus(lx) - _LOG2
    return 0.5 * (x * lx - (x + 1.0) * lmid), 0.5 * x * (lx - lmid)


DIVERGENCES = {"kl": _kl, "rkl": _rkl, "jf": _jf, "tv": _tv, "hd": _hd, "js": _js}
STRICT_DIVERGENCES = ("tv", "hd", "js")  # paper Sec. 4.3: equality at the minimum is forced
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


class _LADTokenLoss(torch.autograd.Function):
    """Per-token w * f(e^{log r - u}) with the analytic gradient r * f'(x) w.r.t. log r (Eq. 9).

    One fused pass: forward stores only the gradient coefficient, so backward is a single multiply.
    """

    @staticmethod
    def forward(ctx, log_r, u, fn):
        fx, xfx = fn(log_r - u)                   # (B, T) each
        w = u.exp()                               # e^{A/eta}, |u| <= MAX_LOG_WEIGHT so finite
        ctx.save_for_backward(w * xfx)            # d loss / d log r = w x f'(x) = r f'(x)   (Eq. 9)
        return w * fx                             # Eq. 8 integrand

    @staticmethod
    def backward(ctx, grad_out):
        (coef,) = ctx.saved_tensors
        return grad_out * coef, None, None


def aggregate(per_token, mask, agg="token-mean", denom=None):
    """Reduce a (B, T) per-token loss to a scalar.

    token-mean:           sum_{b,t} l * m / denom,  denom = valid tokens (default: of this micro-batch).
    seq-mean-token-mean:  sum_b (sum_t l * m / len_b) / denom,  denom = sequences (default: B).
    seq-mean-token-sum:   sum_b (sum_t l * m) / denom,          denom = sequences (default: B).
    For gradient accumulation / data parallelism pass the GLOBAL denominator (all ranks and
    micro-batches of the optimiser step), so every micro-batch is weighted as in one big batch.
    """
    if agg == "token-mean":
        d = mask.sum() if denom is None else denom
        return (per_token * mask).sum() / d
    seq = (per_token * mask).sum(-1)                                  # (B,)
    if agg == "seq-mean-token-mean":
        seq = seq / mask.sum(-1).clamp_min(1)
    elif agg != "seq-mean-token-sum":
        raise ValueError(f"unknown agg {agg!r}; choose from {AGGREGATIONS}")
    d = mask.shape[0] if denom is None else denom
    return seq.sum() / d


def _masked_mean(x, mask, n):
    return (x * mask).sum() / n


def lad_loss(logp, old_logp, advantages, mask, *, divergence="js", eta=0.25, ratio="token",
             agg="token-mean", denom=None, weights=None, log_ratio_clamp=LOG_RATIO_CLAMP,
             max_log_weight=MAX_LOG_WEIGHT):
    """Practical LAD loss (paper Eq. 8) and detached stats.

    logp, old_logp, mask: (B, T); advantages: (B,) one per response, or (B, T) per token.
    divergence: key of DIVERGENCES (Table 5). eta: temperature of the advantage distribution
    (the paper reports 1/eta; its best is 1/eta = 4, i.e. eta = 0.25, Table 6).
    ratio="token": r_t = pi(y_t|.)/pi_old(y_t|.) per token, each token weighted by its response's
      e^{A/eta} (default; matches verl's token-level recipe the paper follows).
    ratio="seq": one ratio per response, log r = mean_t log r_t (length-normalised geometric mean,
      as GSPO; the plain sum over thousands of tokens would saturate any clamp), shared by its tokens.
    agg, denom: see aggregate(). weights: optional (B, T) or (B, 1) per-token multipliers, detached
    (a truncated importance-sampling correction, or exact expectation weights pi_old(y)).
    Returns (loss scalar, dict of detached float tensors).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose from {sorted(DIVERGENCES)}")
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    mask = mask.to(logp.dtype)
    adv = advantages if advantages.dim() == 2 else advantages[:, None]          # (B, T) or (B, 1)
    log_r = logp - old_logp.detach()                                            # (B, T)
    if ratio == "seq":
        n_tok = mask.sum(-1, keepdim=True).clamp_min(1)                         # (B, 1)
        log_r = (log_r * mask).sum(-1, keepdim=True) / n_tok                    # (B, 1)
        if adv.shape[-1] != 1:
            adv = (adv * mask).sum(-1, keepdim=True) / n_tok
    elif ratio != "token":
        raise ValueError(f"unknown ratio {ratio!r}; choose 'token' or 'seq'")
    u_raw = adv.detach().to(logp.dtype) / eta                                   # A/eta (Eq. 5 exponent)
    u = u_raw.clamp(-max_log_weight, max_log_weight)
    log_r_c = log_r.clamp(-log_ratio_clamp, log_ratio_clamp)                    # zero grad outside
    per_tok = _LADTokenLoss.apply(log_r_c, u, DIVERGENCES[divergence])          # Eq. 8, (B, T)
    if per_tok.shape != mask.shape:
        per_tok = per_tok.expand_as(mask)
    if weights is not None:
        per_tok = per_tok * weights.detach()
    loss = aggregate(per_tok, mask, agg, denom)

    with torch.no_grad():
        n = mask.sum().clamp_min(1)
        lr = log_r.expand_as(mask)
        uu = u.expand_as(mask)
        stats = {
            "loss/ratio_mean": _masked_mean(lr.clamp(-log_ratio_clamp, log_ratio_clamp).exp(), mask, n),
            "loss/log_ratio_abs_mean": _masked_mean(lr.abs(), mask, n),
            "loss/log_x_mean": _masked_mean(lr - uu, mask, n),
            "loss/weight_mean": _masked_mean(uu.exp(), mask, n),
            "loss/weight_clamp_frac": _masked_mean((u_raw.abs() > max_log_weight).expand_as(mask).to(mask.dtype), mask, n),
            "loss/log_ratio_clamp_frac": _masked_mean((lr.abs() > log_ratio_clamp).to(mask.dtype), mask, n),
            "loss/value": loss.detach(),
        }
    return loss, stats


def grpo_loss(logp, old_logp, advantages, mask, *, clip_low=0.2, clip_high=0.28, dual_clip=None,
              ref_logp=None, kl_coef=0.0, agg="token-mean", denom=None, weights=None,
              log_ratio_clamp=LOG_RATIO_CLAMP):
    """GRPO / DAPO clipped surrogate (PPO clip with clip-higher), optional dual-clip and k3 KL.

    Per token: max(-A r, -A clip(r, 1-clip_low, 1+clip_high)); with dual_clip=c, min(that, -A c)
    where A < 0 (verl uses c = 3). ref_logp (B, T) with kl_coef > 0 adds kl_coef * k3, where
    k3 = e^{ref-logp} - (ref-logp) - 1. Shapes, agg, denom and weights as lad_loss.
    """
    mask = mask.to(logp.dtype)
    adv = (advantages if advantages.dim() == 2 else advantages[:, None]).detach().to(logp.dtype)
    log_r = (logp - old_logp.detach()).clamp(-log_ratio_clamp, log_ratio_clamp)  # (B, T)
    r = log_r.exp()
    pg1 = -adv * r
    pg2 = -adv * r.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(pg1, pg2)
    if dual_clip is not None:
        pg3 = -adv * dual_clip
        pg_dc = torch.where(adv < 0, torch.minimum(pg, pg3), pg)
    else:
        pg_dc = pg
    per_tok = pg_dc
    if ref_logp is not None and kl_coef > 0:
        d = ref_logp.detach() - logp                                            # (B, T)
        k3 = d.exp() - d - 1.0
        per_tok = per_tok + kl_coef * k3
    if weights is not None:
        per_tok = per_tok * weights.detach()
    loss = aggregate(per_tok, mask, agg, denom)

    with torch.no_grad():
        n = mask.sum().clamp_min(1)
        clipped = (pg2 > pg1).to(mask.dtype)                                    # clipped branch wins
        stats = {
            "loss/ratio_mean": _masked_mean(r, mask, n),
            "loss/log_ratio_abs_mean": _masked_mean(log_r.abs(), mask, n),
            "loss/clip_frac": _masked_mean(clipped, mask, n),
            "loss/clip_frac_high": _masked_mean(clipped * (adv > 0), mask, n),
            "loss/clip_frac_low": _masked_mean(clipped * (adv < 0), mask, n),
            "loss/value": loss.detach(),
        }
        if dual_clip is not None:
            stats["loss/dual_clip_frac"] = _masked_mean(((adv < 0) & (pg > pg3)).to(mask.dtype), mask, n)
        if ref_logp is not None and kl_coef > 0:
            stats["loss/kl_mean"] = _masked_mean(k3, mask, n)
    return loss, stats


def flowrl_loss(logp, old_logp, advantages, mask, log_z, *, beta=15.0, ref_logp=None, w_cap=10.0):
    """FlowRL trajectory-balance loss (FlowRL authors' recipe; paper Appendix B.5, Eq. 18).

    Per response: delta = log Z(x) + mean_t logp - beta * mean_t A - mean_t ref_logp, loss =
    mean_b(w * delta^2) with w = min(exp(sum_t(logp - old_logp)), w_cap) detached.
    log_z: (B,) learned log-partition per response's prompt. ref_logp defaults to old_logp
    (Eq. 18's pi_old; FlowRL itself uses a frozen reference model).
    """
    mask = mask.to(logp.dtype)
    n_tok = mask.sum(-1).clamp_min(1)                                           # (B,)
    adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(mask)
    ref = old_logp if ref_logp is None else ref_logp
    mean = lambda t: (t * mask).sum(-1) / n_tok                                 # noqa: E731, (B,)
    # Eq. 18: log Z + log pi/pi_ref - A/eta, with beta playing 1/eta
    delta = log_z + mean(logp) - beta * mean(adv.detach()) - mean(ref.detach())
    with torch.no_grad():
        w = ((logp - old_logp) * mask).sum(-1).clamp(max=math.log(w_cap)).exp()
    loss = (w * delta ** 2).mean()
    stats = {"loss/value": loss.detach(), "loss/tb_delta_abs_mean": delta.detach().abs().mean(),
             "loss/is_weight_mean": w.mean()}
    return loss, stats


def group_advantages(rewards, group_size, *, std_normalize=True, eps=1e-6):
    """GRPO advantages: A = (R - mean_group) / (std_group + eps), std with Bessel's correction.

    rewards: (N,) with N = groups * group_size, consecutive responses of one prompt together.
    std_normalize=False gives Dr.GRPO (mean-centred only). Groups whose rewards are all equal
    (including groups of size 1) get advantage exactly 0. Returns (advantages (N,), degenerate
    (N / group_size,) bool): degenerate marks those zero-variance groups.
    """
    r = rewards.reshape(-1, group_size).to(torch.float64)                       # (G, K)
    centred = r - r.mean(-1, keepdim=True)
    degenerate = (r == r[:, :1]).all(-1)                                         # (G,)
    if std_normalize and group_size > 1:
        centred = centred / (r.std(-1, keepdim=True, unbiased=True) + eps)
    adv = torch.where(degenerate[:, None], torch.zeros_like(centred), centred)
    return adv.reshape(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32), degenerate


# ----------------------------------------------------------------------------------------------------
# TRAINING (the torchrun entry point: config, data, model, rollout, update, metrics, checkpoints)
#
# Per step, on every rank: draw this rank's prompts; sample group_size responses each (rollout.py);
# reward them (verifier.py); group advantages; dynamic sampling (drop zero-variance groups, draw more,
# up to a cap); old log-probs recomputed by the trainer; updates_per_rollout optimiser steps, each on
# one mini-batch (accumulated over micro-batches), with a global token-mean denominator; then the new
# weights go to the engine. Ranks only meet in all_reduce/all_gather calls and in DDP's gradient mean.
# ----------------------------------------------------------------------------------------------------

import argparse  # noqa: E402
import ast  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch.distributed as dist  # noqa: E402


@dataclasses.dataclass
class Args:
    """LAD / GRPO training on the embedded default (tiny Qwen2, built-in 'sum' task) or a real model."""

    loss: str = "lad"
    """objective: lad (paper Eq. 8) or grpo (DAPO clipped surrogate with clip-higher, the paper's baseline)"""
    divergence: str = "js"
    """LAD's f (paper Table 5): kl, rkl, jf, tv, hd, js; js is the paper's main choice (Sec. 5)"""
    inv_eta: float = 4.0
    """1/eta, inverse temperature of the advantage distribution (Eq. 5); paper's best 4 (Table 6)"""
    ratio: str = "token"
    """LAD ratio: token (per-token r, verl's recipe the paper follows) or seq (length-normalised)"""
    clip_low: float = 0.2
    """GRPO: PPO clip epsilon below 1 (DAPO clip-higher recipe, paper App. C.2)"""
    clip_high: float = 0.28
    """GRPO: PPO clip epsilon above 1 (DAPO clip-higher)"""
    model: str = ""
    """HF model folder (or a hub id already in the local cache); empty = the tiny warm-started model"""
    train_data: str = "builtin"
    """'builtin' (the 'sum' task of tiny.py) or a .jsonl/.parquet file: problem+answer, or DAPO-style
    prompt (messages) + reward_model.ground_truth"""
    eval_data: str = ""
    """held-out file (same formats) for periodic evaluation; empty = tiny's heldout split for builtin, none otherwise"""
    prompt_template: str = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    """template for file rows with a 'problem' field; {problem} is replaced (built-in prompts are used as is)"""
    chat: str = "auto"
    """wrap prompts in the tokenizer's chat template: auto (when it has one), on, off"""
    group_size: int = 8
    """responses per prompt (G; paper App. C.2: 8)"""
    prompts_per_step: int = 16
    """prompts per rollout step over ALL ranks (paper: 256); must be divisible by the world size"""
    updates_per_rollout: int = 4
    """optimiser steps per rollout batch (mini-batches; paper App. C.2: 8)"""
    micro_batch: int = 64
    """responses per forward/backward on one rank (gradient accumulation inside a mini-batch)"""
    max_new_tokens: int = 12
    """response length cap in tokens (paper: 8192; the built-in task needs <= 8)"""
    temperature: float = 1.0
    """sampling temperature (paper: 1.0); the trainer's log-probs use the same (as verl)"""
    top_p: float = 1.0
    """nucleus sampling (1.0 = off)"""
    lr: float = 3e-4
    """AdamW learning rate, constant (paper: 1e-6 for 7B; the tiny model needs far more)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    clip_grad: float = 1.0
    """max global gradient norm (verl default 1.0)"""
    steps: int = 200
    """rollout steps"""
    seed: int = 0
    """seed of data order, sampling and dropout; the tiny model's warm start always uses seed 0"""
    out: str = ""
    """run folder (metrics.jsonl, config.json, checkpoints); empty = runs/<loss>-<divergence>-s<seed>-<time>"""
    resume: str = ""
    """checkpoint folder (run/ckpt-NNNNNN) or run folder (its latest checkpoint) to continue from"""
    engine: str = "auto"
    """rollout engine: auto (vLLM when installed and a GPU is present, else hf), hf, vllm; with --fsdp the hf
    engine samples from its own unsharded copy of the model (bf16 on GPU), synced after every step"""
    wandb: str = "disabled"
    """wandb mode: disabled, offline, online (wandb is not in requirements.txt; install it to use)"""
    wandb_project: str = "lad"
    """wandb project name"""
    dynamic_sampling: bool = True
    """drop groups whose rewards are all equal and draw more prompts (DAPO; paper App. C.2)"""
    max_sample_rounds: int = 3
    """dynamic sampling cap: at most this many generate rounds per step (then train on what was kept)"""
    eval_every: int = 50
    """evaluate on held-out prompts every N steps (and at step 0 and the end); 0 = never"""
    eval_k: int = 16
    """samples per held-out prompt (Avg@k, Pass@k, distinct correct answers)"""
    eval_prompts: int = 0
    """held-out prompts used per evaluation (first N); 0 = all"""
    save_every: int = 50
    """checkpoint every N steps (and at the end); 0 = only at the end"""
    logprob_chunk: int = 1024
    """response tokens per log-softmax chunk (bounds the float32 logits held at once)"""
    gen_batch: int = 512
    """sequences per HF generate() call"""
    vllm_tp: int = 1
    """vLLM tensor-parallel size: each group of this many consecutive ranks shares one vLLM instance"""
    vllm_gpu_memory: float = 0.4
    """fraction of each GPU vLLM may take while awake (weights + KV cache); it sleeps during updates"""
    tis_cap: float = 0.0
    """truncated IS: scale each token's loss by min(exp(logp_old - logp_engine), C); 0 = off (README: C = 2)"""
    fsdp: bool = False
    """FSDP2 (fully_shard per decoder layer + root): shards over torchrun ranks; bf16 compute with fp32 master
    weights on GPU, also in one process (python lad.py); either engine"""
    activation_checkpointing: bool = False
    """recompute each decoder layer's activations in backward (less memory, about a third more compute)"""


def parse_args(cls=Args, argv=None):
    """Dataclass -> argparse: one --flag per field, help from the docstring under it, no traceback on error."""
    doc, body = {}, ast.parse(inspect.getsource(cls)).body[0].body
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            doc[a.target.id] = " ".join(b.value.value.split())
    prog = Path(inspect.getfile(cls)).name      # lad.py, or the bench script whose Args this is

    class Parser(argparse.ArgumentParser):
        def error(self, message):                 # one line, no usage dump, exit code 2
            print(f"{prog}: error: {message}", file=sys.stderr)
            sys.exit(2)

    p = Parser(prog=prog, description=cls.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    choices = {"loss": ["lad", "grpo"], "divergence": sorted(DIVERGENCES), "ratio": ["token", "seq"],
               "engine": ["auto", "hf", "vllm"], "wandb": ["disabled", "offline", "online"],
               "chat": ["auto", "on", "off"]}

    def boolean(s):
        if s.lower() in ("1", "true", "yes", "on"):
            return True
        if s.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")

    for f in dataclasses.fields(cls):
        flag = {"type": boolean, "nargs": "?", "const": True} if isinstance(f.default, bool) else \
            {"type": type(f.default)}                # a bare boolean flag (--check) means true
        p.add_argument(f"--{f.name.replace('_', '-')}", default=f.default, **flag,
                       choices=choices.get(f.name), help=doc.get(f.name, "").replace("%", "%%"))
    return cls(**vars(p.parse_args(argv)))


class UsageError(Exception):
    """Bad input (arguments, data, paths): one line on stderr, exit code 2 on every rank."""


def check_args(a, world):
    if a.group_size < 2:
        raise UsageError(f"--group-size must be >= 2 (group advantages need a spread), got {a.group_size}")
    if a.prompts_per_step < 1 or a.prompts_per_step % world:
        raise UsageError(f"--prompts-per-step {a.prompts_per_step} must be a positive multiple of the "
                         f"world size {world} (every rank takes the same number of prompts)")
    for name in ("updates_per_rollout", "micro_batch", "max_new_tokens", "eval_k", "max_sample_rounds",
                 "logprob_chunk", "gen_batch"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name in ("steps", "eval_every", "save_every", "eval_prompts"):
        if getattr(a, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    if not a.inv_eta > 0:
        raise UsageError(f"--inv-eta must be > 0, got {a.inv_eta}")
    if not a.temperature > 0:
        raise UsageError(f"--temperature must be > 0 (the trainer divides logits by it), got {a.temperature}")
    if not 0 < a.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {a.top_p}")
    if a.wandb != "disabled":
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise UsageError(f"--wandb {a.wandb} needs the wandb package (pip install wandb); or --wandb disabled")
    for name in ("train_data", "eval_data"):
        v = getattr(a, name)
        if v and v != "builtin" and not Path(v).is_file():
            raise UsageError(f"--{name.replace('_', '-')}: data file not found: {v}")
    if a.vllm_tp < 1 or world % a.vllm_tp:
        raise UsageError(f"--vllm-tp {a.vllm_tp} must be >= 1 and divide the world size {world}")
    if not 0 < a.vllm_gpu_memory < 1:
        raise UsageError(f"--vllm-gpu-memory must be in (0, 1), got {a.vllm_gpu_memory}")
    if a.tis_cap < 0:
        raise UsageError(f"--tis-cap must be >= 0 (0 = off), got {a.tis_cap}")
    if a.train_data != "builtin" and "{problem}" not in a.prompt_template:
        raise UsageError("--prompt-template must contain {problem}")


# ----------------------------------------------------------------------------------------------------
# Data: rows {"id", "prompt" (str or chat messages), "gold", "kind"}; every malformed row names its file:line
# ----------------------------------------------------------------------------------------------------


def load_rows(path, template):
    """Rows of a .jsonl or .parquet file. Formats: {"problem", "answer"} (prompt = template), or
    DAPO-style {"prompt": [messages] or str, "reward_model": {"ground_truth"}}."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"data file not found: {path}")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            raw = [(f"{path}: row {i + 1}", r) for i, r in enumerate(pq.read_table(p).to_pylist())]
        except Exception as e:
            raise UsageError(f"{path}: cannot read parquet: {e}") from None
    elif p.suffix in (".jsonl", ".json"):
        raw = []
        with open(p, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    raw.append((f"{path}:{i}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UsageError(f"{path}:{i}: malformed JSON ({e.msg})") from None
    else:
        raise UsageError(f"{path}: unknown data format (expected .jsonl or .parquet)")
    rows = []
    for where, r in raw:
        if not isinstance(r, dict):
            raise UsageError(f"{where}: expected a JSON object, got {type(r).__name__}")
        gt = (r.get("reward_model") or {}).get("ground_truth") if isinstance(r.get("reward_model"), dict) else None
        if "problem" in r and "answer" in r:
            prompt, gold = r["problem"], r["answer"]
            if not isinstance(prompt, str) or not prompt.strip():
                raise UsageError(f"{where}: 'problem' must be a non-empty string")
            prompt = template.replace("{problem}", prompt)
        elif "prompt" in r and gt is not None:
            prompt, gold = r["prompt"], gt
            ok = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in prompt))
            if not ok:
                raise UsageError(f"{where}: 'prompt' must be a string or a list of {{role, content}} messages")
        else:
            raise UsageError(f"{where}: needs 'problem' and 'answer', or 'prompt' and 'reward_model.ground_truth'"
                             f" (has {sorted(r)})")
        if isinstance(gold, (int, float)) and not isinstance(gold, bool):
            gold = str(gold)
        if not isinstance(gold, str) or not gold.strip():
            raise UsageError(f"{where}: the answer must be a non-empty string or number, got {gold!r}")
        rows.append({"id": str(r.get("id", where)), "prompt": prompt, "gold": gold, "kind": "math"})
    if not rows:
        raise UsageError(f"{path}: no rows")
    return rows


def encode_rows(rows, tok, chat, limit, what):
    """Token ids of each row's prompt; prompts longer than `limit` tokens are skipped and counted (printed)."""
    use_chat = chat == "on" or (chat == "auto" and getattr(tok, "chat_template", None))
    if chat == "on" and not getattr(tok, "chat_template", None):
        raise UsageError("--chat on, but the tokenizer has no chat template")
    out, skipped = [], 0
    for r in rows:
        msgs = r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}]
        if use_chat:
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        else:
            ids = tok("\n\n".join(m["content"] for m in msgs), add_special_tokens=False)["input_ids"]
        if len(ids) > limit:
            skipped += 1
            continue
        out.append({**r, "ids": ids})
    if not out:
        raise UsageError(f"{what}: all {len(rows)} prompts are longer than the context allows ({limit} tokens "
                         f"= max_position_embeddings - max_new_tokens)")
    return out, skipped


def row_for(rank_index, rank, world, n, seed):
    """The data order: an epoch-wise permutation of all rows (seeded), interleaved across ranks, so that
    the whole order is a function of (seed, rank, cursor): resume needs only the cursor."""
    g = rank_index * world + rank
    epoch, pos = divmod(g, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))
    return int(perm[pos])


def answer_key(text, kind):
    """The answer that 'distinct correct answers' counts: the candidate line (sum) or extract_answer (math)."""
    import verifier

    return verifier.sum_task_answer(text) if kind == "sum" else verifier.extract_answer(text)


# ----------------------------------------------------------------------------------------------------
# Log-probs of response tokens: chunked log-softmax over response positions only
# ----------------------------------------------------------------------------------------------------


class Policy(torch.nn.Module):
    """An HF causal LM whose forward returns log pi(y_t | x, y_<t) and the entropy of each response
    token, computing the LM head and log-softmax chunk by chunk over response positions only, so the
    float32 logits held at once are (logprob_chunk, vocab), never (batch, length, vocab). With grad
    enabled each chunk is checkpointed (its logits are recomputed in backward instead of kept)."""

    def __init__(self, lm, chunk, temperature):
        super().__init__()
        self.lm, self.chunk, self.temperature = lm, chunk, temperature

    def _head(self, h, tgt):
        # at most two (c, V) float32 tensors alive at once (logits then log-softmax, then log-softmax and
        # p): at chunk 1024 and a 152k vocabulary each is 0.6 GB, so every extra temporary counts
        logits = self.lm.get_output_embeddings()(h).float()                        # (c, V) float32
        logits = logits.div_(self.temperature) if self.temperature != 1 else logits  # in place: Linear's
        logp_all = torch.log_softmax(logits, -1)                                   # backward needs no output
        del logits
        logp = logp_all.gather(-1, tgt[:, None])[:, 0]
        with torch.no_grad():                                                      # entropy estimate, detached
            ent = -logp_all.exp().mul_(logp_all).sum(-1)
        return logp, ent

    def forward(self, ids, attn, pos, tgt, valid):
        """ids/attn (B, L) right-padded prompt+response; pos (B, T) index of the hidden state that
        predicts response token t (prompt_len + t - 1); tgt (B, T) the tokens; valid (B, T) bool."""
        hidden = self.lm.base_model(input_ids=ids, attention_mask=attn).last_hidden_state   # (B, L, H)
        h = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))[valid]       # (N, H)
        t = tgt[valid]                                                                      # (N,)
        lps, ents = [], []
        for lo in range(0, h.shape[0], self.chunk):
            hc, tc = h[lo:lo + self.chunk], t[lo:lo + self.chunk]
            if torch.is_grad_enabled():
                lp, en = torch.utils.checkpoint.checkpoint(self._head, hc, tc, use_reentrant=False)
            else:
                lp, en = self._head(hc, tc)
            lps.append(lp)
            ents.append(en)
        logp = torch.zeros(valid.shape, dtype=torch.float32, device=ids.device)
        ent = torch.zeros(valid.shape, dtype=torch.float32, device=ids.device)
        logp = logp.masked_scatter(valid, torch.cat(lps)) if lps else logp
        ent = ent.masked_scatter(valid, torch.cat(ents)) if ents else ent
        return logp, ent


def make_batch(items, pad_id, device):
    """items: list of (prompt_ids, response_ids). Returns ids, attn, pos, tgt, valid (see Policy.forward)."""
    L = max(len(p) + len(r) for p, r in items)
    T = max(1, max(len(r) for _, r in items))
    ids = torch.full((len(items), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(items), L), dtype=torch.long)
    pos = torch.zeros((len(items), T), dtype=torch.long)
    tgt = torch.full((len(items), T), pad_id, dtype=torch.long)
    valid = torch.zeros((len(items), T), dtype=torch.bool)
    for b, (p, r) in enumerate(items):
        ids[b, :len(p) + len(r)] = torch.tensor(list(p) + list(r))
        attn[b, :len(p) + len(r)] = 1
        pos[b, :len(r)] = torch.arange(len(p) - 1, len(p) + len(r) - 1)
        tgt[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        valid[b, :len(r)] = True
    return [x.to(device) for x in (ids, attn, pos, tgt, valid)]


# ----------------------------------------------------------------------------------------------------
# torch.distributed helpers (no-ops in one process)
# ----------------------------------------------------------------------------------------------------


def dist_on():
    return dist.is_available() and dist.is_initialized()


def all_reduce(t, op=None):
    if dist_on():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def all_gather_obj(obj):
    if not dist_on():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def global_denominators(token_counts, world, device):
    """Token-mean denominators of the optimiser steps of this rollout, made global with ONE all_reduce.

    token_counts: valid response tokens of each mini-batch on this rank. Returns, per mini-batch,
    (global tokens) / world. Why divide by world: DDP averages gradients over ranks, so a rank's loss
    sum_t l_t / (G / W) becomes, after the average, sum over ALL ranks' tokens / G -- exactly the
    token-mean of the whole mini-batch, as if it ran on one rank, however tokens are spread over ranks.
    """
    t = torch.tensor(token_counts, dtype=torch.float64, device=device)
    all_reduce(t)
    return (t / world).tolist(), t.tolist()


def shard_policy(policy, lm, cuda):
    """FSDP2 (issue 6): each decoder layer is one unit (its all-gather overlaps the previous layer's
    compute), the Policy the root (embeddings, final norm, the possibly tied LM head). On GPU, bf16
    compute with fp32 master weights, optimiser state and gradient reduction. Like DDP, FSDP2 averages
    gradients over ranks, so global_denominators applies unchanged. Parameter names stay the HF ones."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda else MixedPrecisionPolicy()
    for layer in lm.base_model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(policy, mp_policy=mp)
    return policy


# ----------------------------------------------------------------------------------------------------
# Checkpoints (HF folder + trainer state + per-rank RNG/cursor)
# ----------------------------------------------------------------------------------------------------


def save_checkpoint(out, step, lm, tok, opt, cursor, rank, world, args):
    ck = Path(out) / f"ckpt-{step:06d}"
    ck.mkdir(parents=True, exist_ok=True)
    model_sd = opt_sd = None
    if getattr(args, "fsdp", False):       # gather full state dicts (collectives: every rank takes part)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, opt_sd = get_model_state_dict(lm, options=full), get_optimizer_state_dict(lm, opt, options=full)
    if rank == 0:
        lm.save_pretrained(ck, state_dict=model_sd)
        tok.save_pretrained(ck)
        torch.save({"step": step, "optimizer": opt_sd if opt_sd is not None else opt.state_dict(), "world": world,
                    "args": dataclasses.asdict(args)}, ck / "trainer.pt")
    torch.save({"cursor": cursor, "torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               ck / f"rank{rank}.pt")
    if dist_on():
        dist.barrier()
    if rank == 0:
        (Path(out) / "latest").write_text(ck.name + "\n")
    return ck


def find_checkpoint(path):
    p = Path(path)
    if (p / "trainer.pt").is_file():
        return p
    if (p / "latest").is_file():
        ck = p / (p / "latest").read_text().strip()
        if (ck / "trainer.pt").is_file():
            return ck
    raise UsageError(f"--resume {path}: no checkpoint there (expected trainer.pt, or a run folder with 'latest')")


# ----------------------------------------------------------------------------------------------------
# Evaluation on held-out prompts (eval.py's metric functions, so the numbers are eval.py's)
# ----------------------------------------------------------------------------------------------------


def evaluate(engine, rows, args, rank, world, tok, step):
    """Avg@k, Pass@k (k = 1, 4, ..., eval_k), distinct correct answers and distinct-n on held-out rows."""
    import eval as ev
    import verifier

    mine = rows[rank::world]
    samples = engine.generate([r["ids"] for r in mine], args.eval_k, temperature=args.temperature,
                              top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                              seed=args.seed * 7919 + 104729 * (step + 1) + rank) if mine else []
    texts = tok.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
    per = []
    for i, r in enumerate(mine):
        tx = texts[i * args.eval_k:(i + 1) * args.eval_k]
        rw = verifier.score_batch(tx, [r["gold"]] * len(tx), kind=r["kind"])
        ok = {answer_key(t, r["kind"]) for t, x in zip(tx, rw) if x > 0} - {None}
        per.append({"rewards": rw, "distinct_correct": len(ok),
                    "distinct": [ev.distinct_n(tx, n) for n in (1, 2, 3, 4)]})
    per = [p for part in all_gather_obj(per) for p in part]
    k = args.eval_k
    ks = sorted({1, k} | {2 ** i for i in range(1, 10) if 2 ** i < k})
    m = {"eval/avg_at_k": ev.avg_at_k([p["rewards"] for p in per]), "eval/k": k, "eval/prompts": len(per),
         "eval/distinct_correct": sum(p["distinct_correct"] for p in per) / len(per)}
    for kk in ks:
        m[f"eval/pass_at_{kk}"] = sum(ev.pass_at_k(k, int(sum(x > 0 for x in p["rewards"])), kk) for p in per) / len(per)
    for n in (1, 2, 3, 4):
        m[f"eval/distinct_{n}"] = sum(p["distinct"][n - 1] for p in per) / len(per)
    return m


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------


def main(args):
    import rollout
    import transformers
    import verifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()          # our own tqdm bar is the only one

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    check_args(args, world)
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")

    # the model path: resume > --model > the tiny default (built once under a file lock, before the
    # thread count is cut, so the one rank that builds it uses every core)
    ckpt = find_checkpoint(args.resume) if args.resume else None
    if ckpt is not None:
        model_path = str(ckpt)
    elif args.model:
        model_path = args.model
    else:
        import tiny

        model_path = tiny.default_model_dir(0, log=print if rank == 0 else (lambda *a: None))
    if not cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    own_group = args.fsdp and world == 1
    if world > 1 or own_group:
        if cuda:
            torch.cuda.set_device(device)
        if own_group:
            # fully_shard needs a process group, also of one rank (python lad.py --fsdp true: bf16 compute,
            # fp32 master weights, nothing sharded). Without torchrun there is no MASTER_ADDR; an in-process
            # store needs no port (no race for a free one) and no network.
            dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group("nccl" if cuda else "gloo")

    # every rank must run the same batch geometry; one all_gather, every rank sees the same verdict
    geo = (args.prompts_per_step, args.group_size, args.updates_per_rollout, args.micro_batch, args.steps, args.loss)
    if len(set(all_gather_obj(geo))) != 1:
        raise UsageError(f"incompatible batch settings across ranks: {all_gather_obj(geo)}")

    if args.model and not Path(args.model).exists() and ckpt is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")                  # no network at run time
    try:
        tok = AutoTokenizer.from_pretrained(model_path)
        lm = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    except OSError as e:
        raise UsageError(f"cannot load model {model_path!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    ctx = getattr(lm.config, "max_position_embeddings", None) or 10 ** 9
    limit = ctx - args.max_new_tokens
    if limit < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} leaves no room in the context ({ctx})")

    # data (identical on every rank, so a bad file fails on all of them before any collective)
    if args.train_data == "builtin":
        import tiny

        train = [{**r, "kind": "sum"} for r in tiny.task_split("train")]
        held = [{**r, "kind": "sum"} for r in tiny.task_split("heldout")] if not args.eval_data else None
    else:
        train, held = load_rows(args.train_data, args.prompt_template), None
    if args.eval_data:
        held = load_rows(args.eval_data, args.prompt_template)
    train, skipped = encode_rows(train, tok, args.chat, limit, args.train_data)
    if held is not None:
        held, held_skipped = encode_rows(held, tok, args.chat, limit, args.eval_data or "heldout")
        if args.eval_prompts:
            held = held[:args.eval_prompts]

    # run folder, config, resume state
    start, cursor = 0, 0
    out = args.out or (str(ckpt.parent) if ckpt is not None else
                       f"runs/{args.loss}-{args.divergence if args.loss == 'lad' else 'clip'}-s{args.seed}-"
                       f"{time.strftime('%Y%m%d-%H%M%S')}")
    out = all_gather_obj(out)[0]                                      # rank 0's timestamp for everyone
    Path(out).mkdir(parents=True, exist_ok=True)
    # the policy, sharded before the optimiser sees its parameters (fully_shard swaps them for DTensors)
    policy = Policy(lm, args.logprob_chunk, args.temperature)
    if args.activation_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.fsdp:
        shard_policy(policy, lm, cuda)
    opt = torch.optim.AdamW(lm.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    if ckpt is not None:
        st = torch.load(ckpt / "trainer.pt", weights_only=False)
        if st["world"] != world:
            raise UsageError(f"--resume: checkpoint was written by {st['world']} ranks, this run has {world}")
        if args.fsdp and not st["args"].get("fsdp", False):
            # its optimiser state is keyed by parameter position; set_optimizer_state_dict needs names
            raise UsageError("--resume: checkpoint was written without --fsdp; resume it with --fsdp false")
        if args.fsdp:                      # a full (gathered) optimiser state, re-sharded on load
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(lm, opt, st["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            opt.load_state_dict(st["optimizer"])
        start = st["step"]
        rs = torch.load(ckpt / f"rank{rank}.pt", weights_only=False)
        cursor = rs["cursor"]
        torch.set_rng_state(rs["torch"])
        random.setstate(rs["python"])
        if cuda and rs["cuda"] is not None:
            torch.cuda.set_rng_state_all(rs["cuda"])
    else:
        random.seed(args.seed * 1000 + rank)
        torch.manual_seed(args.seed * 1000 + rank)

    engine_kind, why = args.engine, ""
    if engine_kind == "auto":              # resolved here once, so the reason can be printed and logged
        usable, reason = rollout.vllm_status()
        engine_kind, why = ("vllm" if usable else "hf"), f" (auto: {reason})"
    engine, engine_kind = rollout.make_engine(engine_kind, model=lm, tokenizer=tok, model_path=model_path,
                                              seed=args.seed + rank, batch_size=args.gen_batch,
                                              tensor_parallel_size=args.vllm_tp,
                                              gpu_memory_utilization=args.vllm_gpu_memory,
                                              max_model_len=min(ctx, max(len(r["ids"]) for r in train + (held or []))
                                                                + args.max_new_tokens))
    ddp = torch.nn.parallel.DistributedDataParallel(policy, device_ids=[local_rank] if cuda else None) \
        if world > 1 and not args.fsdp else policy
    kind = train[0]["kind"]

    log_file = open(Path(out) / "metrics.jsonl", "a") if rank == 0 else None
    wb = None
    if rank == 0:
        cfg = {**dataclasses.asdict(args), "world_size": world, "engine_resolved": engine_kind + why,
               "model_path": model_path, "out": out, "train_prompts": len(train),
               "train_prompts_skipped_too_long": skipped, "heldout_prompts": len(held) if held else 0,
               "params": sum(p.numel() for p in lm.parameters()), "torch": torch.__version__}
        (Path(out) / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
        print(f"lad.py: {args.loss}{'/' + args.divergence if args.loss == 'lad' else ''}, {world} rank(s), "
              f"engine {engine_kind}{why}, model {model_path} ({cfg['params'] / 1e6:.2f}M params), "
              f"{len(train)} train prompts ({skipped} skipped: longer than {limit} tokens), out {out}", flush=True)
        if args.wandb != "disabled":
            import wandb

            wb = wandb.init(project=args.wandb_project, mode=args.wandb, config=cfg, dir=out)

    def log(step, m):
        if rank == 0:
            row = {"step": step, **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}}
            log_file.write(json.dumps(row) + "\n")                  # NaN -> null: strict JSON
            log_file.flush()
            if wb is not None:
                wb.log(m, step=step)

    do_eval = held is not None and args.eval_every > 0
    if do_eval and start == 0:
        m = evaluate(engine, held, args, rank, world, tok, 0)
        log(0, m)
        if rank == 0:
            print("eval before RL: " + "  ".join(f"{k[5:]} {v:.3f}" for k, v in m.items() if isinstance(v, float)),
                  flush=True)

    per_rank = args.prompts_per_step // world
    G = args.group_size
    bar = None
    if rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=start, desc="train", dynamic_ncols=True)
    for step in range(start, args.steps):
        t_step = time.perf_counter()
        times = dict.fromkeys(("rollout", "reward", "logprob", "update", "sync"), 0.0)

        # ---- rollout with dynamic sampling (rounds agreed across ranks: one all_reduce per round)
        kept, spare, drawn, dropped = [], None, 0, 0
        n_resp, resp_len_sum, resp_len_max, n_trunc, n_correct, reward_sum = 0, 0, 0, 0, 0, 0.0
        distinct_sum = 0
        for rnd in range(args.max_sample_rounds):
            need = per_rank - len(kept) if (rnd == 0 or args.dynamic_sampling) else 0
            if rnd > 0 and all_reduce(torch.tensor([float(need)], device=device), dist.ReduceOp.MAX if dist_on() else None).item() == 0:
                break
            if need <= 0:
                continue
            rows = []
            for _ in range(need):
                rows.append(train[row_for(cursor, rank, world, len(train), args.seed)])
                cursor += 1
            t0 = time.perf_counter()
            samples = engine.generate([r["ids"] for r in rows], G, temperature=args.temperature, top_p=args.top_p,
                                      max_new_tokens=args.max_new_tokens,
                                      seed=(args.seed * 1000003 + step * 101 + rnd) * 64 + rank)
            times["rollout"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            texts = tok.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
            rewards = verifier.score_batch(texts, [rows[s.prompt_index]["gold"] for s in samples], kind=kind)
            times["reward"] += time.perf_counter() - t0
            drawn += len(rows)
            for i, r in enumerate(rows):
                grp = samples[i * G:(i + 1) * G]
                rw = rewards[i * G:(i + 1) * G]
                tx = texts[i * G:(i + 1) * G]
                n_resp += G
                reward_sum += sum(rw)
                n_correct += sum(x > 0 for x in rw)
                resp_len_sum += sum(len(s.response_ids) for s in grp)
                resp_len_max = max(resp_len_max, max(len(s.response_ids) for s in grp))
                n_trunc += sum(s.truncated for s in grp)
                distinct_sum += len({answer_key(t, kind) for t, x in zip(tx, rw) if x > 0} - {None})
                if args.dynamic_sampling and len(set(rw)) == 1:
                    dropped += 1
                    spare = spare or (r, grp, rw)
                else:
                    kept.append((r, grp, rw))
            if not args.dynamic_sampling:
                break
        kept = kept[:per_rank]

        # ---- advantages (GRPO group normalisation, the paper's estimator) and the flat sample list
        engine.sleep()
        items, adv, eng_lp = [], [], []
        if kept:
            rw_t = torch.tensor([x for _, _, rw in kept for x in rw], dtype=torch.float32)
            a, _ = group_advantages(rw_t, G)
            adv = a.tolist()
            items = [(r["ids"], s.response_ids) for r, grp, _ in kept for s in grp]
            eng_lp = [s.logprobs for _, grp, _ in kept for s in grp]
        real = len(items)
        if not items:                      # this rank kept nothing: one zero-weighted sample keeps DDP in step
            r, grp, _ = spare
            items, adv, eng_lp = [(r["ids"], grp[0].response_ids)], [0.0], [grp[0].logprobs]

        # ---- old log-probs, recomputed by the trainer without gradient (and the entropy estimate)
        t0 = time.perf_counter()
        old, ent_sum, ent_n = [], 0.0, 0
        tis, mm = [], {}                   # per-micro-batch TIS weights; mismatch sums (README "vllm")
        with_engine_lp = all(x is not None for x in eng_lp)
        n_old = -(-len(items) // args.micro_batch)
        if args.fsdp:                      # FSDP all-gathers in every forward: all ranks run as many
            n_old = int(all_reduce(torch.tensor([float(n_old)], device=device), dist.ReduceOp.MAX).item())
        with torch.no_grad():
            for lo in range(0, n_old * args.micro_batch, args.micro_batch):
                if lo >= len(items):       # FSDP filler forward, result unused
                    policy(*make_batch(items[:1], tok.pad_token_id, device))
                    continue
                ids, attn, pos, tgt, valid = make_batch(items[lo:lo + args.micro_batch], tok.pad_token_id, device)
                lp, en = policy(ids, attn, pos, tgt, valid)
                old.append(lp)
                if with_engine_lp:
                    elp = torch.zeros_like(lp)
                    for b, x in enumerate(eng_lp[lo:lo + args.micro_batch]):
                        elp[b, :len(x)] = torch.tensor(x, dtype=torch.float32)
                    w_tis, st_mm = rollout.rollout_mismatch(lp, elp, valid.float() * float(lo < real), args.tis_cap)
                    tis.append(w_tis)
                    for k, v in st_mm.items():
                        mm[k] = max(mm.get(k, 0.0), v) if k.endswith("_max") else mm.get(k, 0.0) + v
                if lo < real:
                    ent_sum += float(en[valid].sum())
                    ent_n += int(valid.sum())
        times["logprob"] = time.perf_counter() - t0

        # ---- updates: mini-batches of a shuffled order, each one AdamW step; global token denominators
        t0 = time.perf_counter()
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(args.seed * 7 + step * 31 + rank)).tolist()
        minis = [order[i::args.updates_per_rollout] for i in range(args.updates_per_rollout)]
        lens = [len(r) for _, r in items]
        scale = 1.0 if real else 0.0
        tok_counts = [float(sum(lens[i] for i in mb)) * scale for mb in minis]
        denoms, global_tokens = global_denominators(tok_counts, world, device)
        old_flat = [row for o in old for row in o]                   # per-sample (T,) tensors (padded)
        tis_flat = [row for w_tis in tis for row in w_tis] if args.tis_cap > 0 and tis else None
        stats_acc, n_stats, grad_norms = {}, 0, []
        lm.train()
        for u, mb in enumerate(minis):
            if global_tokens[u] == 0:
                continue                   # every rank has nothing here (all skip together: same numbers)
            if not mb:
                mb = [order[0]]            # this rank has no sample in this mini-batch: a zero-weighted one
            w = scale if len(minis[u]) else 0.0
            micro = [mb[i:i + args.micro_batch] for i in range(0, len(mb), args.micro_batch)]
            n_real_micro = len(micro)
            if args.fsdp:                  # equal forward/backward counts on every rank (FSDP collectives)
                n_micro = all_reduce(torch.tensor([float(len(micro))], device=device), dist.ReduceOp.MAX).item()
                micro += [micro[0]] * (int(n_micro) - len(micro))
            for j, mi in enumerate(micro):
                w_all = w
                if j >= n_real_micro:
                    w = 0.0                # FSDP filler: zero-weighted, adds nothing
                sync = contextlib.nullcontext() if (j == len(micro) - 1 or world == 1 or args.fsdp) else ddp.no_sync()
                with sync:
                    ids, attn, pos, tgt, valid = make_batch([items[i] for i in mi], tok.pad_token_id, device)
                    logp, _ = ddp(ids, attn, pos, tgt, valid)
                    T = logp.shape[1]
                    old_lp = torch.stack([old_flat[i][:T] if old_flat[i].shape[0] >= T else
                                          torch.nn.functional.pad(old_flat[i], (0, T - old_flat[i].shape[0]))
                                          for i in mi])
                    a = torch.tensor([adv[i] for i in mi], dtype=torch.float32, device=device)
                    mask = valid.float()
                    tis_w = None if tis_flat is None else torch.stack(
                        [torch.nn.functional.pad(tis_flat[i], (0, max(0, T - tis_flat[i].shape[0])))[:T] for i in mi])
                    if args.loss == "lad":
                        # Eq. 8 with eta = 1/inv_eta; token-mean over the global mini-batch (denominator above)
                        loss, st = lad_loss(logp, old_lp, a, mask, divergence=args.divergence, eta=1.0 / args.inv_eta,
                                            ratio=args.ratio, denom=denoms[u], weights=tis_w)
                    else:
                        loss, st = grpo_loss(logp, old_lp, a, mask, clip_low=args.clip_low, clip_high=args.clip_high,
                                             denom=denoms[u], weights=tis_w)
                    (loss * w).backward()
                for k, v in st.items():           # weighted by w: a zero-weighted filler adds nothing
                    if k != "loss/value":
                        stats_acc[k] = stats_acc.get(k, 0.0) + w * float(v)
                n_stats += w
                w = w_all
            gn = torch.nn.utils.clip_grad_norm_(lm.parameters(), args.clip_grad)
            gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn        # FSDP2: a DTensor
            grad_norms.append(float(gn))
            opt.step()
            opt.zero_grad(set_to_none=True)
        times["update"] = time.perf_counter() - t0

        # ---- weights to the engine (a no-op for the HF engine on an unsharded `lm`: it samples from `lm`
        # itself; under FSDP it fills its rollout copy). Cast before the gather: bf16 halves the traffic.
        t0 = time.perf_counter()
        eng_dtype = getattr(engine, "dtype", None)
        engine.sync_weights(rollout.hf_named_tensors(lm, dtype=getattr(torch, eng_dtype) if eng_dtype else None))
        engine.wake()                      # after the sync: vLLM's KV cache comes back last (README "vllm")
        times["sync"] = time.perf_counter() - t0
        step_time = time.perf_counter() - t_step

        # ---- metrics: sums over ranks (one all_reduce), maxima (one more), then rank 0 logs
        keys = sorted(stats_acc)                      # same on every rank: all run the same micro-batches
        sums = all_reduce(torch.tensor(
            [reward_sum, n_correct, n_resp, drawn, dropped, resp_len_sum, n_trunc, ent_sum, ent_n, distinct_sum,
             len(kept)] + [stats_acc[k] for k in keys] + [n_stats], dtype=torch.float64, device=device))
        maxes = all_reduce(torch.tensor([resp_len_max, step_time] + [times[k] for k in times],
                                        dtype=torch.float64, device=device), dist.ReduceOp.MAX if dist_on() else None)
        s, mx = sums.tolist(), maxes.tolist()
        m = {"train/reward_mean": s[0] / s[2], "train/accuracy": s[1] / s[2],
             "train/distinct_correct": s[9] / s[3], "train/entropy": s[7] / s[8] if s[8] else float("nan"),
             "train/lr": opt.param_groups[0]["lr"],
             "train/grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else 0.0,
             "rollout/zero_var_frac": s[4] / s[3], "rollout/prompts_drawn": s[3], "rollout/groups_kept": s[10],
             "rollout/response_len_mean": s[5] / s[2], "rollout/response_len_max": mx[0],
             "rollout/truncation_rate": s[6] / s[2],
             "perf/step_s": mx[1], "perf/tokens_per_s": s[5] / mx[1]}
        m.update({f"perf/{k}_s": mx[2 + i] for i, k in enumerate(times)})
        m.update({k: s[11 + i] / s[-1] for i, k in enumerate(keys)} if s[-1] else {})
        if mm:                             # rollout/trainer mismatch (README "vllm"); same keys on every rank
            mk = sorted(k for k in mm if not k.endswith("_max"))
            tot = dict(zip(mk, all_reduce(torch.tensor([mm[k] for k in mk], dtype=torch.float64, device=device)).tolist()))
            mx_mm = all_reduce(torch.tensor([mm["rollout/logp_diff_max"]], dtype=torch.float64, device=device),
                               dist.ReduceOp.MAX if dist_on() else None).item()
            n_tok = max(tot["rollout/tokens"], 1.0)
            m["rollout/logp_diff_mean"] = tot["rollout/logp_diff_sum"] / n_tok
            m["rollout/logp_diff_max"] = mx_mm
            if "rollout/tis_weight_sum" in tot:
                m["rollout/tis_weight_mean"] = tot["rollout/tis_weight_sum"] / n_tok
                m["rollout/tis_capped_frac"] = tot["rollout/tis_capped"] / n_tok
        if do_eval and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            te = time.perf_counter()
            m.update(evaluate(engine, held, args, rank, world, tok, step + 1))
            m["perf/eval_s"] = time.perf_counter() - te
        log(step + 1, m)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{m['train/reward_mean']:.3f}", zv=f"{m['rollout/zero_var_frac']:.2f}",
                            ent=f"{m['train/entropy']:.2f}", dist=f"{m['train/distinct_correct']:.2f}",
                            s=f"{m['perf/step_s']:.2f}", refresh=False)
            if "eval/avg_at_k" in m:
                bar.write(f"step {step + 1}: eval avg@{args.eval_k} {m['eval/avg_at_k']:.3f}  "
                          f"pass@{args.eval_k} {m[f'eval/pass_at_{args.eval_k}']:.3f}  "
                          f"distinct correct {m['eval/distinct_correct']:.2f}")
        if (args.save_every and (step + 1) % args.save_every == 0) or step + 1 == args.steps:
            save_checkpoint(out, step + 1, lm, tok, opt, cursor, rank, world, args)
    if bar is not None:
        bar.close()
        log_file.close()
        if wb is not None:
            wb.finish()
        print(f"done: {out}", flush=True)
    if hasattr(engine, "close"):
        engine.close()
    if own_group and dist_on():            # the one-rank group main opened (vLLM's close may have done it)
        dist.destroy_process_group()
    return out


def cli(argv=None):
    args = parse_args(Args, argv)
    code = 0
    try:
        main(args)
    except UsageError as e:
        print(f"lad.py: error: {e}", file=sys.stderr, flush=True)
        code = 2
    finally:
        if dist_on():
            dist.destroy_process_group()
    sys.exit(code)


if __name__ == "__main__":
    cli()
