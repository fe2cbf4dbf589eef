"""lad.py -- LAD: Learning Advantage Distribution for Reasoning (Li & Li, 2026): the loss, then the training loop.

The LOSS section (torch only: the unit to copy into verl, TRL or OpenRLHF) is the practical LAD objective
(paper Sec. 3.2, Eq. 8, with the divergences f of Table 5)

    L = E_{y ~ pi_old} [ e^{A/eta} * f( r * e^{-A/eta} ) ],   r = pi_theta(y|x) / pi_old(y|x),

whose gradient is f'(x) * r * grad log pi_theta (Eq. 9), and GRPO's group-normalised advantages A. The
TRAINING section is the torchrun entry point: main() is the algorithm, top to bottom (sample and reward
groups, advantages, old log-probs, K mini-batch updates that call the loss, weight sync, logging); the
plumbing it calls follows it. The paper's baselines (baselines.py) run in the same loop: --loss grpo.

Commands
    CPU, one process:   python lad.py                     (the embedded default: tiny Qwen2 on builtin-sum)
    CPU, two ranks:     torchrun --nproc_per_node=2 lad.py
    1 GPU:              python lad.py --model <hf-path> --train-data <file.jsonl> --engine vllm
    8 GPUs:             torchrun --nproc_per_node=8 lad.py --model <hf-path> --train-data <file.jsonl> \
                            --engine vllm --fsdp true
    Baselines:          add --loss grpo | flowrl | clip-cov | kl-cov | entadv (the paper's Tables 1, 2, 4)

Deliberately left out
    - a learned critic (PPO/GAE): advantages are group-normalised outcome rewards, as in the paper;
    - a reference-model KL for LAD: the paper uses none (its trust region is pi_old, Eq. 2);
    - asynchronous rollouts: sampling and training alternate on the same GPUs;
    - FlowRL under --fsdp true (refused: its log Z head is outside the sharded checkpoint).
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

# Named clamps (docs/loss.md, "Numerics"). Both keep float32 finite for 1/eta <= 32, |A| <= 10 and
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
    """Per-token w * f(e^{log r - u}) with the analytic gradient r * f'(x) w.r.t. log r (Eq. 9), log r
    clamped to +-log_ratio_clamp (zero gradient past it, as torch.clamp's).

    One fused pass: forward stores only the gradient coefficient, so backward is a single multiply
    (the clamp's own backward would be five more ops per call).
    """

    @staticmethod
    def forward(ctx, log_r, u, fn, log_ratio_clamp):
        fx, xfx = fn(log_r.clamp(-log_ratio_clamp, log_ratio_clamp) - u)       # (B, T) each
        w = u.exp()                               # e^{A/eta}, |u| <= MAX_LOG_WEIGHT so finite
        # d loss / d log r = w x f'(x) = r f'(x) (Eq. 9) inside the clamp, 0 outside
        ctx.save_for_backward(w * xfx * (log_r.abs() <= log_ratio_clamp))
        return w * fx                             # Eq. 8 integrand

    @staticmethod
    def backward(ctx, grad_out):
        (coef,) = ctx.saved_tensors
        return grad_out * coef, None, None, None


def _where_valid(valid, x):
    """x where valid, else 0. torch.where, not x * mask: NaN * 0 is NaN, and the gradient of where is
    exactly 0 at the masked positions, so padding values reach neither the loss nor the gradient."""
    return torch.where(valid, x, 0.0)


def aggregate(per_token, mask, agg="token-mean", denom=None):
    """Reduce a (B, T) per-token loss to a scalar (verl's agg_loss modes).

    token-mean:           sum_{b,t} l * m / denom,  denom = valid tokens (default: of this micro-batch).
    seq-mean-token-mean:  sum_b (sum_t l * m / len_b) / denom,  denom = sequences (default: those of
                          this micro-batch with >= 1 valid token, as verl's agg_loss).
    seq-mean-token-sum:   sum_b (sum_t l * m) / denom,          denom = sequences (default: as above).
    For gradient accumulation / data parallelism pass the GLOBAL denominator (all ranks and
    micro-batches of the optimiser step), so every micro-batch is weighted as in one big batch.
    Positions where mask is 0 contribute nothing, whatever per_token holds there (NaN, inf). A
    fractional mask weighs its tokens (bandit.py passes its exact expectations' pi_old as weights= instead).
    """
    return _reduce(_where_valid(mask > 0, per_token) * mask, mask, agg, denom)


def _reduce(masked, mask, agg, denom):
    """aggregate() of a (B, T) per-token loss that is already weighted by mask (so 0 at padding).

    The losses below call it directly: they zero their inputs at padding before any arithmetic, so
    their per-token values there are finite and times mask are exactly 0; the extra where of
    aggregate() would be one more pass over (B, T) and one more backward node per call.
    """
    if agg == "token-mean":
        if denom is None:
            denom = mask.sum()
            denom = torch.where(denom > 0, denom, torch.ones_like(denom))  # all padding: 0, not 0/0
        return masked.sum() / denom
    seq = masked.sum(-1)                                              # (B,)
    if agg == "seq-mean-token-mean":
        seq = seq / mask.sum(-1).clamp_min(1)
    elif agg != "seq-mean-token-sum":
        raise ValueError(f"unknown agg {agg!r}; choose from {AGGREGATIONS}")
    # verl agg_loss: a response with no valid token is not one of the sequences averaged over
    d = (mask > 0).any(-1).sum().clamp_min(1) if denom is None else denom
    return seq.sum() / d


def _masked_mean(x, mask, n):
    return (_where_valid(mask > 0, x) * mask).sum() / n


def _lad_token_terms(logp, old_logp, advantages, mask, divergence, eta, ratio, log_ratio_clamp,
                     max_log_weight):
    """lad_token_loss's (B, T) loss plus the log-space terms lad_loss reports (no extra pass)."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose from {sorted(DIVERGENCES)}")
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    valid = mask > 0                                                            # (B, T) bool
    mask = mask.to(logp.dtype)
    adv = advantages if advantages.dim() == 2 else advantages[:, None]          # (B, T) or (B, 1)
    # Padding (and a response without valid tokens) may hold NaN/inf: zero it before any arithmetic,
    # since the custom backward multiplies by e^{A/eta} and 0 * NaN would reach the gradient.
    adv = _where_valid(valid if adv.shape[-1] == mask.shape[-1] else valid.any(-1, keepdim=True),
                       adv.detach().to(logp.dtype))
    log_r_tok = _where_valid(valid, logp - old_logp.detach())                  # (B, T), 0 at padding
    if ratio == "seq":
        n_tok = mask.sum(-1, keepdim=True).clamp_min(1)                         # (B, 1)
        log_r_tok = (log_r_tok * mask).sum(-1, keepdim=True) / n_tok            # (B, 1)
        if adv.shape[-1] != 1:
            adv = (adv * mask).sum(-1, keepdim=True) / n_tok
    elif ratio != "token":
        raise ValueError(f"unknown ratio {ratio!r}; choose 'token' or 'seq'")
    adv_scaled_raw = adv.detach().to(logp.dtype) / eta                          # A/eta (Eq. 5 exponent)
    adv_scaled = adv_scaled_raw.clamp(-max_log_weight, max_log_weight)
    per_tok = _LADTokenLoss.apply(log_r_tok, adv_scaled, DIVERGENCES[divergence], log_ratio_clamp)  # Eq. 8, (B, T)
    if per_tok.shape != mask.shape:
        per_tok = per_tok.expand_as(mask)
    return per_tok, mask, log_r_tok, adv_scaled_raw, adv_scaled


def lad_token_loss(logp, old_logp, advantages, mask, *, divergence="js", eta=0.25, ratio="token",
                   log_ratio_clamp=LOG_RATIO_CLAMP, max_log_weight=MAX_LOG_WEIGHT):
    """Per-token practical LAD loss (paper Eq. 8 integrand), (B, T), before any aggregation.

    Token t of response b: e^{A_b/eta} * f(r_t * e^{-A_b/eta}), whose gradient w.r.t. log r_t is
    r_t * f'(x) (Eq. 9). Arguments as lad_loss. Padded positions are not zeroed: reduce with the
    mask (aggregate(), or a framework's own, e.g. verl's agg_loss). This is the hook for frameworks
    that aggregate themselves; lad_loss = aggregate(lad_token_loss(...) * weights, mask, agg, denom).
    """
    return _lad_token_terms(logp, old_logp, advantages, mask, divergence, eta, ratio,
                            log_ratio_clamp, max_log_weight)[0]


def lad_loss(logp, old_logp, advantages, mask, *, divergence="js", eta=0.25, ratio="token",
             agg="token-mean", denom=None, weights=None, log_ratio_clamp=LOG_RATIO_CLAMP,
             max_log_weight=MAX_LOG_WEIGHT, with_stats=True):
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
    Returns (loss scalar, dict of detached float tensors). The per-token loss is lad_token_loss.
    with_stats=False returns (loss, {}) and skips the stats (every loss here takes it: the stats are
    ~30 small ops, which dominate on tiny inputs such as bandit.py's 48,000 calls per run).
    """
    per_tok, mask, log_r_tok, adv_scaled_raw, adv_scaled = _lad_token_terms(
        logp, old_logp, advantages, mask, divergence, eta, ratio, log_ratio_clamp, max_log_weight)
    if weights is not None:
        per_tok = per_tok * _where_valid(mask > 0, weights.detach().to(per_tok.dtype))
    loss = _reduce(per_tok * mask, mask, agg, denom)                            # finite at padding

    if not with_stats:
        return loss, {}
    with torch.no_grad():
        n = mask.sum().clamp_min(1)
        log_r_all = log_r_tok.expand_as(mask)                                   # (B, T)
        adv_all = adv_scaled.expand_as(mask)                                    # A/eta, clamped
        stats = {
            "loss/ratio_mean": _masked_mean(log_r_all.clamp(-log_ratio_clamp, log_ratio_clamp).exp(), mask, n),
            "loss/log_ratio_abs_mean": _masked_mean(log_r_all.abs(), mask, n),
            "loss/log_x_mean": _masked_mean(log_r_all - adv_all, mask, n),      # log x = log r - A/eta
            "loss/weight_mean": _masked_mean(adv_all.exp(), mask, n),           # e^{A/eta}
            "loss/weight_clamp_frac": _masked_mean((adv_scaled_raw.abs() > max_log_weight).expand_as(mask).to(mask.dtype), mask, n),
            "loss/log_ratio_clamp_frac": _masked_mean((log_r_all.abs() > log_ratio_clamp).to(mask.dtype), mask, n),
            "loss/value": loss.detach(),
        }
    return loss, stats


def group_advantages(rewards, group_size, *, std_normalize=True, eps=1e-6):
    """GRPO advantages: A = (R - mean_group) / (std_group + eps), std with Bessel's correction.

    rewards: (N,) with N = groups * group_size, consecutive responses of one prompt together.
    std_normalize=False gives Dr.GRPO (mean-centred only). Groups whose rewards are all equal
    (including groups of size 1) get advantage exactly 0. Returns (advantages (N,), degenerate
    (N / group_size,) bool): degenerate marks those zero-variance groups.
    """
    r = rewards.reshape(-1, group_size).to(torch.float64)                       # (G, K)
    # GRPO (Shao et al. 2024, Eq. 3's outcome supervision); verl compute_grpo_outcome_advantage: eps 1e-6
    centred = r - r.mean(-1, keepdim=True)
    degenerate = (r == r[:, :1]).all(-1)                                         # (G,)
    if std_normalize and group_size > 1:
        centred = centred / (r.std(-1, keepdim=True, unbiased=True) + eps)
    adv = torch.where(degenerate[:, None], torch.zeros_like(centred), centred)
    return adv.reshape(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32), degenerate


# ----------------------------------------------------------------------------------------------------
# TRAINING (the torchrun entry point). main() is the algorithm; everything after it is plumbing.
# Imports are here, not at the top of the file, so that the LOSS section above runs alone.
# ----------------------------------------------------------------------------------------------------

import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager, nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402

import torch.distributed as dist  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

import data  # noqa: E402
import memplan  # noqa: E402
import metrics  # noqa: E402
import rollout  # noqa: E402
import tasks  # noqa: E402
import tiny  # noqa: E402
from baselines import BASELINES, BaselineArgs, baseline_loss, check_knobs  # noqa: E402
from common import UsageError, parse_args, seed_for  # noqa: E402
from eval import generate_rows, score_rows  # noqa: E402
from policy import build_trainer, find_checkpoint, make_batch, needs_reference, prompt_mask_of, save_checkpoint  # noqa: E402


@dataclasses.dataclass
class Args(BaselineArgs):
    """LAD (or a baseline) training: the embedded default (tiny Qwen2, builtin-sum), or a real model and data file."""

    CHOICES = {"loss": ["lad", *BASELINES], "flowrl_ref": ["init", "old"], "divergence": sorted(DIVERGENCES),
               "ratio": ["token", "seq"], "engine": ["auto", "hf", "vllm"], "wandb": ["disabled", "offline", "online"],
               "chat": ["auto", "true", "false"], "grader": list(tasks.GRADERS), "save_dtype": ["auto", "bf16", "fp32"],
               "underfilled": ["auto", "error", "train"]}

    loss: str = "lad"
    """objective: lad (paper Eq. 8); the paper's baselines: grpo (DAPO clipped surrogate, clip-higher), flowrl
    (trajectory balance with a learned log Z), clip-cov, kl-cov (Cui et al. 2025), entadv (Cheng et al. 2025)"""
    divergence: str = "js"
    """LAD's f (paper Table 5): kl, rkl, jf, tv, hd, js; js is the paper's main choice (Sec. 5)"""
    inv_eta: float = 4.0
    """1/eta, inverse temperature of the advantage distribution (Eq. 5); paper's best 4 (Table 6)"""
    ratio: str = "token"
    """LAD ratio: token (per-token r, verl's recipe the paper follows) or seq (length-normalised)"""
    flowrl_ref: str = "init"
    """flowrl: pi_ref = init (the frozen initial policy, the authors' code; one extra no-grad forward) or old
    (pi_old, paper Eq. 18: no extra model)"""
    model: str = ""
    """HF model folder (or a hub id already in the local cache); empty = the tiny model warm-started on the task"""
    train_data: str = "builtin-sum"
    """builtin-sum, builtin-code (tasks.py's built-in tasks; code runs in the sandbox) or a .jsonl/.parquet file:
    math (problem+answer, or DAPO-style prompt messages + reward_model.ground_truth) or code (LiveCodeBench/
    DeepCoder, LeetCode, TACO/APPS, EvalPlus, verl-style rows: docs/sandbox.md)"""
    eval_data: str = ""
    """held-out file (same formats) for periodic evaluation; empty = a built-in task's heldout split, none for files"""
    prompt_template: str = "boxed"
    """prompt of file rows with a 'problem' field: a name (boxed, dapo, raw: data.TEMPLATES) or a string with
    {problem}; code rows use the code template, built-in prompts and verl/DAPO chat rows are used as they are.
    Saved with every checkpoint (prompt.json), so that eval.py scores it in the format it was trained in"""
    chat: str = "auto"
    """wrap prompts in the tokenizer's chat template: auto (when it has one), true, false (eval.py: the same flag)"""
    grader: str = "ours"
    """math reward's grader: ours (verifier.py), math-verify (HF's package), dapo (verl's math_dapo, 'Answer:'
    lines); docs/verifier.md compares them and says which the paper's protocol implies (eval.py: the same flag)"""
    group_size: int = 8
    """responses per prompt (G; paper App. C.2: 8)"""
    prompts_per_step: int = 16
    """prompts per rollout step over ALL ranks (paper: 256); must be divisible by the world size"""
    updates_per_rollout: int = 4
    """optimiser steps per rollout batch (mini-batches; paper App. C.2: 8)"""
    micro_batch: int = 64
    """responses per forward/backward on one rank (gradient accumulation inside a mini-batch)"""
    micro_batch_tokens: int = 0
    """instead of --micro-batch: a token budget per forward on one rank, padded prompt + response tokens
    (rows x longest row), as verl's use_dynamic_bsz / ppo_max_token_len_per_gpu; 0 = off. Long and short
    responses then get micro-batches of the same memory, and the gradient is the same (global denominators)"""
    max_new_tokens: int = 0
    """response length cap in tokens; 0 = the built-in task's (tasks.py: 12 for builtin-sum, 32 for builtin-code),
    1024 for files (paper: 8192)"""
    max_position_embeddings: int = 0
    """raise the model's context to N tokens (its config, and the vLLM engine's: verl's
    override_config.max_position_embeddings), for prompt + --max-new-tokens beyond it; 0 = the model's own"""
    temperature: float = 1.0
    """sampling temperature (paper: 1.0); the trainer's log-probs use the same (as verl)"""
    top_p: float = 1.0
    """nucleus sampling (1.0 = off)"""
    lr: float = 3e-4
    """AdamW learning rate, constant after the warmup (paper: 1e-6 for 7B; the tiny model needs far more)"""
    warmup_steps: int = 0
    """linear warmup of the lr over the first N optimiser steps (step k: lr (k+1)/N), then constant; 0 = none,
    as the paper and the entropy-mechanism scripts (warmup_style constant); verl's DAPO recipe: 10 rollout steps"""
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
    """wandb mode: disabled (default), offline (a local run folder under --out, no network), online"""
    wandb_project: str = "lad"
    """wandb project name"""
    dynamic_sampling: bool = True
    """drop groups whose responses are all correct or all wrong and draw more prompts until the step holds
    --prompts-per-step groups (DAPO's filter_groups on acc; paper App. C.2)"""
    max_sample_rounds: int = 10
    """dynamic sampling: at most this many generate rounds per step, each drawing the rank's full share of
    prompts (DAPO's max_num_gen_batches = 10, gen_batch_size = train_batch_size in the entropy-mechanism scripts)"""
    underfilled: str = "auto"
    """when --max-sample-rounds cannot fill the batch: error (stop, naming the zero-variance fraction, as DAPO),
    train (train on the groups kept, with a warning and rollout/underfilled), or auto: error, unless the
    training set holds fewer prompts than one step's rounds draw (the built-in tasks): then train"""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment: the last L tokens before --max-new-tokens cost up to --overlong-penalty,
    linearly (Yu et al. 2025, Eq. 13); 0 = off, as the entropy-mechanism scripts (enable_overlong_buffer False)"""
    overlong_penalty: float = 1.0
    """the reward subtracted at --max-new-tokens under --overlong-buffer (DAPO's overlong_penalty_factor, 1.0)"""
    mask_truncated: bool = False
    """responses cut at --max-new-tokens contribute no loss (TRL's mask_truncated_completions; their group's
    advantages still count them); off, as the entropy-mechanism scripts"""
    eval_every: int = 50
    """evaluate on held-out prompts every N steps (and at step 0 and the end); 0 = never"""
    eval_k: int = 16
    """samples per held-out prompt (Avg@k, Pass@k, distinct correct answers)"""
    eval_prompts: int = 0
    """held-out prompts used per evaluation (first N); 0 = all"""
    save_every: int = 50
    """checkpoint every N steps (and at the end); 0 = only at the end"""
    save_dtype: str = "auto"
    """dtype of the saved weights: bf16, fp32, or auto = the compute dtype (bf16 with --bf16, or --fsdp on a GPU;
    else fp32). A 7B model is 15 GB in bf16, 30 GB in fp32; a run resumed from bf16 weights is not bit-equal"""
    save_optimizer: bool = True
    """save AdamW's state with each checkpoint (fp32, 2x the fp32 weights: 61 GB for 7B); without it a resume
    needs --fresh-optimizer true"""
    keep_last: int = 0
    """keep only the N newest checkpoints (older ones are removed once a new one is complete); 0 = keep all"""
    fresh_optimizer: bool = False
    """with --resume: start AdamW afresh (allowed, and needed, for a checkpoint saved with --save-optimizer false)"""
    logprob_chunk: int = 1024
    """response tokens per log-softmax chunk (bounds the float32 logits held at once)"""
    gen_batch: int = 512
    """sequences per HF generate() call"""
    vllm_tp: int = 1
    """vLLM tensor-parallel size: each group of this many consecutive ranks shares one vLLM instance"""
    gpu_memory_utilization: float = 0.4
    """fraction of each GPU vLLM may take while awake (weights + KV cache); it sleeps during updates"""
    tis_cap: float = 0.0
    """truncated IS: scale each token's loss by min(exp(logp_old - logp_engine), C); 0 = off (docs/gpu.md: C = 2)"""
    fsdp: bool = False
    """FSDP2 (fully_shard per decoder layer + root): shards over torchrun ranks; bf16 compute with fp32 master
    weights on GPU, also in one process (python lad.py); either engine"""
    bf16: bool = False
    """bf16 autocast compute with float32 master weights and optimiser (torch.autocast around every forward;
    the log-softmax and the loss stay float32); on GPU or CPU, with or without --fsdp"""
    activation_checkpointing: bool = False
    """recompute each decoder layer's activations in backward (less memory, about a third more compute)"""
    plan: bool = False
    """print this run's per-GPU memory plan (memplan.py: each phase's peak, whether it fits) and exit: 0 it
    fits, 1 it does not (the plan names flags that would make it fit); needs no GPU, no vLLM, no weights"""
    world_size: int = 0
    """with --plan: the run's GPUs (0 = torchrun's WORLD_SIZE, 1 without torchrun)"""
    gpu_memory_gb: float = 0.0
    """with --plan: memory of one GPU in GiB (0 = this machine's GPU; an 80 GB A100 is 80.0, an H100 79.6)"""
    prompt_tokens: int = 0
    """with --plan: the longest prompt in tokens (0 = measured: --train-data's prompts with the model's tokenizer)"""
    ignore_plan: bool = False
    """on a GPU, start a run even when its memory plan (printed at start) says it does not fit"""
    weak_sandbox: bool = False
    """code rewards without bubblewrap (only the resource limits and audit hook; warns every run): for hosts
    that cannot create user namespaces. Default off: code rewards refuse to run without bubblewrap"""


def main(args):
    """Train; returns the run folder. Every rank runs this; ranks meet only in the collectives named below."""
    args = resolve_args(args)
    ctx = Ranks.from_env()
    check_args(args, ctx.world)
    ckpt = find_checkpoint(args.resume) if args.resume else None
    task = tasks.builtin(args.train_data)
    train, held = load_data(args, task)                        # a bad file fails here, before any model
    model_path = str(ckpt) if ckpt else args.model or tiny.default_model_dir(task or tasks.SUM, 0, ctx.say)
    if ctx.device.type == "cuda" and not memory_plan(args, ctx, model_path, train).fits and not args.ignore_plan:
        raise UsageError("the memory plan above says this run does not fit this GPU: its flags make it fit "
                         "(or --ignore-plan true)")
    init_distributed(args, ctx)                                # torchrun's process group (one-rank FSDP2: its own)
    tr, start, cursor = build_trainer(args, ctx, model_path, ckpt)
    train, held, facts = encode_data(args, tr, train, held)
    args = resolve_underfilled(args, len(train))
    engine, facts["engine_resolved"] = build_engine(args, ctx, tr, model_path, train + (held or []))
    out = open_run(args, ctx, ckpt, {"model_path": model_path, "params": sum(p.numel() for p in tr.lm.parameters()),
                                     **facts})
    log = open_log(args, ctx, out, start)
    if held is not None and args.eval_every > 0 and start == 0:
        log(0, evaluate(args, ctx, engine, tr.tok, held, 0))
    bar = tqdm(total=args.steps, initial=start, desc="train", dynamic_ncols=True, disable=ctx.rank != 0)
    filler = (train[0]["ids"], [tr.tok.eos_token_id])          # the weight-0 row that pads a short rank's batch
    for step in range(start, args.steps):
        t_step = time.perf_counter()
        # 1. Rollout: G responses to each of this rank's prompts, each rewarded (tasks.judge). DAPO's dynamic
        #    sampling drops groups all correct or all wrong (no advantage) and draws until the batch is full.
        groups, cursor, sums, maxes = sample_groups(args, ctx, engine, tr.tok, train, cursor, step)
        engine.sleep()
        # 2. Advantages: the A of Eq. 5, GRPO's normalisation within each group of G responses. Every rank then
        #    pads its batch with weight-0 rows to the largest rank's size, so all run the same forwards.
        rewards = torch.tensor([x for g in groups for x in g.rewards], dtype=torch.float32)
        adv = group_advantages(rewards, args.group_size)[0] if groups else rewards
        batch = pad_to_largest_rank(Batch.of(groups, adv, tr.tok.pad_token_id, args.mask_truncated), filler, ctx)
        # 3. log pi_old of every sample, recomputed by the trainer without gradient (as verl); pi_ref's where
        #    the loss needs it (FlowRL, GRPO with --kl-coef)
        with phase("logprob", maxes, ctx):
            old, tis, s_old, m_old = old_logprobs(args, ctx, tr.policy, batch)
            ref = ref_logprobs(args, ctx, tr.reference, batch) if tr.reference is not None else None
        # 4. K optimiser steps, one per mini-batch of a shuffled order; micro-batches accumulate gradients over
        #    the GLOBAL count of the mini-batch's tokens (FlowRL: responses), so any split over ranks and
        #    micro-batches gives the gradient of one token-mean over the whole mini-batch.
        with phase("update", maxes, ctx):
            tr.policy.train()
            n = batch.n_samples                               # padding rows stay last, out of the shuffle
            order = torch.randperm(n, generator=torch.Generator().manual_seed(
                seed_for("shuffle", args.seed, step, ctx.rank))).tolist() + list(range(n, len(batch)))
            minis = [order[u::args.updates_per_rollout] for u in range(args.updates_per_rollout)]
            denoms = global_denominators(batch, minis, "response" if args.loss == "flowrl" else "token", ctx)
            upd, grad_norms = {"stats_n": 0.0, "objective_sum": 0.0}, []
            for mb, denom in zip(minis, denoms):
                if denom == 0:
                    continue                                  # no rank has a token here: all skip together
                micro = micro_batches(args, ctx, batch, mb)
                for j, idx in enumerate(micro):
                    x = batch.inputs(idx, ctx.device, prompt_mask=args.loss == "flowrl")
                    # DDP averages gradients over ranks at the last micro-batch's backward only
                    with tr.policy.no_sync() if j < len(micro) - 1 and ctx.ddp else nullcontext():
                        logp, entropy, log_z = tr.policy(x.ids, x.attn, x.pos, x.tgt, x.valid,
                                                         prompt_mask=x.prompt_mask)      # (B, T), (B, T), (B,)
                        T = logp.shape[1]
                        tis_w = None if tis is None else tis[idx, :T]
                        if args.loss == "lad":        # Eq. 8 with eta = 1 / --inv-eta, token-mean over denom
                            loss, stats = lad_loss(logp, old[idx, :T], x.adv, x.mask, divergence=args.divergence,
                                                   eta=1.0 / args.inv_eta, ratio=args.ratio, denom=denom,
                                                   weights=tis_w)
                        else:                         # the paper's baselines, same inputs (baselines.py)
                            loss, stats = baseline_loss(args, logp, old[idx, :T], x.adv, x.mask, denom=denom,
                                                        weights=tis_w, entropy=entropy, log_z=log_z,
                                                        ref_logp=None if ref is None else ref[idx, :T],
                                                        generator=tr.generator)
                        loss.backward()
                    accumulate(upd, stats, loss, weight=1.0 if x.trained else 0.0)
                grad_norm = torch.nn.utils.clip_grad_norm_(tr.policy.parameters(), args.clip_grad)
                grad_norms.append(float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor")
                                        else grad_norm))                        # FSDP2: a DTensor
                tr.opt.step()
                tr.opt.zero_grad(set_to_none=True)
                tr.sched.step()                               # --warmup-steps: the lr of the next step
        # 5. Weight sync: the new weights into the engine, in place (the HF engine samples from lm itself)
        with phase("sync", maxes, ctx):
            push_weights(engine, tr.lm)
        maxes.update(m_old, step_s=time.perf_counter() - t_step)
        # 6. Metrics: sums and maxima over ranks by name (rank 0 logs); held-out evaluation; checkpoint
        s, mx = reduce_metrics({**sums, **s_old, **upd}, maxes, ctx)
        m = step_metrics(s, mx, grad_norms, tr.opt.param_groups[0]["lr"], args, ctx)
        if held is not None and args.eval_every > 0 and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            te = time.perf_counter()
            m.update(evaluate(args, ctx, engine, tr.tok, held, step + 1), **{"perf/eval_s": time.perf_counter() - te})
        log(step + 1, m)
        show_progress(bar, m)
        if (args.save_every and (step + 1) % args.save_every == 0) or step + 1 == args.steps:
            save_checkpoint(args, ctx, tr, out, step + 1, cursor)
    bar.close()
    ctx.say(f"done: {out}")
    log(None, None)
    if hasattr(engine, "close"):
        engine.close()
    if ctx.world == 1 and dist_on():   # the one-rank group of --fsdp (vLLM's close may have ended it)
        dist.destroy_process_group()
    return out


# ----------------------------------------------------------------------------------------------------
# The command line: Args above, its checks, the defaults that depend on other flags
# ----------------------------------------------------------------------------------------------------

def check_args(a, world):
    """UsageError (one line, exit 2 on every rank) for a bad flag value, before anything is loaded."""
    try:
        check_knobs(a)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if a.group_size < 2:
        raise UsageError(f"--group-size must be >= 2 (group advantages need a spread), got {a.group_size}")
    if a.prompts_per_step < 1 or a.prompts_per_step % world:
        raise UsageError(f"--prompts-per-step {a.prompts_per_step} must be a positive multiple of the "
                         f"world size {world} (every rank takes the same number of prompts)")
    if a.micro_batch_tokens < 0:
        raise UsageError(f"--micro-batch-tokens must be >= 0 (0 = count by --micro-batch), got {a.micro_batch_tokens}")
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
    if a.wandb != "disabled" and importlib.util.find_spec("wandb") is None:
        raise UsageError(f"--wandb {a.wandb} needs the wandb package (pip install wandb); or --wandb disabled")
    for name in ("train_data", "eval_data"):
        v = getattr(a, name)
        if v and v not in tasks.BUILTIN and not Path(v).is_file():
            raise UsageError(f"--{name.replace('_', '-')}: data file not found: {v}")
    if a.vllm_tp < 1 or world % a.vllm_tp:
        raise UsageError(f"--vllm-tp {a.vllm_tp} must be >= 1 and divide the world size {world}")
    if not 0 < a.gpu_memory_utilization < 1:
        raise UsageError(f"--gpu-memory-utilization must be in (0, 1), got {a.gpu_memory_utilization}")
    if a.tis_cap < 0:
        raise UsageError(f"--tis-cap must be >= 0 (0 = off), got {a.tis_cap}")
    if a.prompt_template not in data.TEMPLATES and "{problem}" not in a.prompt_template:
        raise UsageError(f"--prompt-template must be one of {', '.join(data.TEMPLATES)} or contain {{problem}}")
    for name in ("warmup_steps", "overlong_buffer", "max_position_embeddings", "world_size", "prompt_tokens"):
        if getattr(a, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    if a.overlong_buffer >= a.max_new_tokens:
        raise UsageError(f"--overlong-buffer {a.overlong_buffer} must be below --max-new-tokens {a.max_new_tokens}")
    if a.gpu_memory_gb < 0:
        raise UsageError(f"--gpu-memory-gb must be >= 0 (0 = this machine's GPU), got {a.gpu_memory_gb}")
    if a.overlong_penalty < 0:
        raise UsageError(f"--overlong-penalty must be >= 0, got {a.overlong_penalty}")
    if a.eval_data in tasks.BUILTIN:
        raise UsageError("--eval-data takes a file; the built-in tasks' heldout split is used when it is empty")
    if a.loss == "flowrl" and a.tis_cap > 0:
        raise UsageError("--tis-cap weighs tokens; FlowRL's loss is per response (its own weight w is the summed "
                         "log ratio to pi_old): use --tis-cap 0 with --loss flowrl")
    if a.keep_last < 0:
        raise UsageError(f"--keep-last must be >= 0 (0 = keep every checkpoint), got {a.keep_last}")
    if a.fresh_optimizer and not a.resume:
        raise UsageError("--fresh-optimizer true only applies with --resume")
    if a.loss == "flowrl" and a.fsdp:
        raise UsageError("--loss flowrl with --fsdp true is not supported (the log Z head is outside the sharded "
                         "model's checkpoint); use DDP (--fsdp false) under torchrun")


def resolve_args(a):
    """The defaults that depend on other flags, filled in once (config.json logs the resolved values):
    --train-data's older names, and --max-new-tokens 0 (a built-in task's own limit, else 1024)."""
    task = tasks.builtin(a.train_data, "lad.py")
    return dataclasses.replace(a, train_data=task.name if task else a.train_data,
                               max_new_tokens=a.max_new_tokens or (task.new_tokens if task else 1024))


def resolve_underfilled(a, n_prompts):
    """--underfilled auto: DAPO's error, unless one step's --max-sample-rounds x --prompts-per-step draws
    exceed the n_prompts training prompts (built-in tasks: 85 and 10). Then later rounds only redraw prompts
    already tried, so a policy that has converged on them cannot fill a batch however long it draws, and
    the step trains on the groups it kept (rollout/underfilled counts it)."""
    if a.underfilled != "auto":
        return a
    return dataclasses.replace(a, underfilled="train" if n_prompts < a.max_sample_rounds * a.prompts_per_step else "error")


# ----------------------------------------------------------------------------------------------------
# Ranks: torchrun's environment and the collectives (all reductions of the loop are here)
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Ranks:
    """This process's place in the job: torchrun's RANK/LOCAL_RANK/WORLD_SIZE, one process without it."""
    rank: int
    world: int
    local_rank: int
    local_world: int
    device: torch.device
    ddp: bool = False                  # set by build_trainer: the policy is DDP-wrapped (world > 1, no FSDP)

    @classmethod
    def from_env(cls):
        e = os.environ
        return cls(int(e.get("RANK", "0")), int(e.get("WORLD_SIZE", "1")), int(e.get("LOCAL_RANK", "0")),
                   int(e.get("LOCAL_WORLD_SIZE", "1")),
                   torch.device(f"cuda:{e.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"))

    def say(self, msg):
        """A progress line from rank 0 only."""
        if self.rank == 0:
            print(msg, flush=True)


def init_distributed(args, ctx):
    """Each rank's CPU threads (the cores shared by the local ranks), then the process group: torchrun's
    (env://) for world > 1; for one process under --fsdp, an in-process one (fully_shard needs a group;
    HashStore: no port, no network)."""
    if ctx.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world))
    else:
        torch.cuda.set_device(ctx.device)
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    if ctx.world > 1:
        dist.init_process_group(backend)
    elif args.fsdp:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    # every rank must run the same batch geometry; one all_gather, every rank sees the same verdict
    geo = (args.prompts_per_step, args.group_size, args.updates_per_rollout, args.micro_batch, args.steps, args.loss)
    if len(set(all_gather_obj(geo))) != 1:
        raise UsageError(f"incompatible batch settings across ranks: {all_gather_obj(geo)}")


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


@contextmanager
def phase(name, maxes, ctx):
    """Time a phase of the step into maxes["perf/<name>_s"] (added up when it runs several times) and, on a
    GPU, its peak allocated memory into maxes["perf/<name>_peak_gb"] (torch.cuda.max_memory_allocated since
    the phase began): the per-phase figures docs/metrics.md defines and bench/gpu_step.py checks the memory
    plan against. Both are maxima over ranks once reduced."""
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        maxes[f"perf/{name}_s"] = maxes.get(f"perf/{name}_s", 0.0) + time.perf_counter() - t0
        if cuda:
            peak = torch.cuda.max_memory_allocated(ctx.device) / 2 ** 30
            maxes[f"perf/{name}_peak_gb"] = max(maxes.get(f"perf/{name}_peak_gb", 0.0), peak)


def reduce_metrics(sums: dict, maxes: dict, ctx):
    """Sums and maxima over ranks, by name: one all_reduce each. Every rank has the same keys (the loss,
    engine and task kind decide them), so sorted keys line the values up."""
    ks, km = sorted(sums), sorted(maxes)
    s = all_reduce(torch.tensor([float(sums[k]) for k in ks], dtype=torch.float64, device=ctx.device))
    m = all_reduce(torch.tensor([float(maxes[k]) for k in km], dtype=torch.float64, device=ctx.device),
                   dist.ReduceOp.MAX if dist_on() else None)
    return dict(zip(ks, s.tolist())), dict(zip(km, m.tolist()))


def global_denominators(batch, minis, unit, ctx):
    """Per mini-batch, the token-mean denominator of its optimiser step, made global with ONE all_reduce:
    the valid tokens (unit "token"; FlowRL's "response": responses with >= 1 token) of the mini-batch's
    trained rows on ALL ranks, divided by the world size. Why divide: DDP averages gradients over ranks, so
    a rank's loss sum_t l_t / (G / W) becomes, after the average, sum over all ranks' tokens / G -- the
    token-mean of the whole mini-batch, as if one process ran it, however tokens are spread over ranks."""
    size = [min(len(r), 1) if unit == "response" else len(r) for r in batch.responses]
    local = [float(sum(size[i] for i in mb if batch.trained[i])) for mb in minis]
    t = all_reduce(torch.tensor(local, dtype=torch.float64, device=ctx.device))
    return [x / ctx.world if x else 0.0 for x in t.tolist()]


# ----------------------------------------------------------------------------------------------------
# Data: rows (checked before any model is built), their order, prompts encoded
# ----------------------------------------------------------------------------------------------------

def load_data(args, task):
    """Train and held-out rows, identical on every rank (a bad file fails on all of them, before any model is
    built or collective run), and their judges' requirements checked (tasks.require: code needs the sandbox).
    Returns (train, held-out or None)."""
    if task is not None:
        train = tasks.builtin_rows(task, "train")
        held = tasks.builtin_rows(task, "heldout") if not args.eval_data else None
    else:
        train, held = data.load_rows(args.train_data, args.prompt_template), None
    if args.eval_data:
        held = data.load_rows(args.eval_data, args.prompt_template)
    try:                                           # refuse now, with the fix, not after the warm start
        tasks.require({r["kind"] for r in train + (held or [])}, weak_sandbox=args.weak_sandbox)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return train, held


def encode_data(args, tr, train, held):
    """Prompt token ids of every row (data.encode_rows: the chat template where the tokenizer has one), prompts
    that leave no room for --max-new-tokens in the model's context skipped and counted. Returns (train,
    held-out, facts for config.json)."""
    ctx_len = getattr(tr.lm.config, "max_position_embeddings", None) or 10 ** 9
    limit = ctx_len - args.max_new_tokens
    if limit < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} leaves no room in the model's context ({ctx_len} "
                         f"tokens): --max-position-embeddings N raises it (docs/gpu.md says when that is safe)")
    train, skipped = data.encode_rows(train, tr.tok, args.chat, limit, args.train_data)
    if held is not None:
        held = data.encode_rows(held, tr.tok, args.chat, limit, args.eval_data or "heldout")[0]
        held = held[:args.eval_prompts] if args.eval_prompts else held
    return train, held, {"train_prompts": len(train), "train_prompts_skipped_too_long": skipped,
                         "heldout_prompts": len(held) if held else 0, "prompt_limit": limit,
                         "chat_template_used": data.use_chat_template(tr.tok, args.chat)}


def row_for(rank_index, rank, world, n, seed):
    """The data order: an epoch-wise permutation of all rows (seeded), interleaved across ranks, so that
    the whole order is a function of (seed, rank, cursor): resume needs only the cursor."""
    g = rank_index * world + rank
    epoch, pos = divmod(g, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed_for("data", seed, epoch)))
    return int(perm[pos])


# ----------------------------------------------------------------------------------------------------
# One step's phases: rollout groups, the flat batch and its rank padding, old log-probs, weight sync
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Group:
    """One prompt's G responses: its row, the engine's samples, their texts and verdicts."""
    row: dict
    samples: list
    texts: list
    rewards: list
    reasons: list


def sample_groups(args, ctx, engine, tok, train, cursor, step):
    """Phase 1: this rank's share of the step's prompts, G responses each, judged (tasks.judge), with DAPO's
    overlong penalty added to the reward (--overlong-buffer) and DAPO's dynamic sampling: a group whose
    responses are all correct or all wrong has no advantage and is dropped, and each round draws the rank's
    full share of prompts again (DAPO's gen_batch_size = train_batch_size) until it holds its share, for at
    most --max-sample-rounds rounds (ranks agree on each round with one all_reduce). Still short then:
    --underfilled error stops every rank, naming the zero-variance fraction; train goes on with what was kept.
    Returns (groups, the new cursor, sums, maxes) for the step's metrics."""
    per_rank, G = args.prompts_per_step // ctx.world, args.group_size
    kind = train[0]["kind"]
    kept = []
    sums = dict.fromkeys(("reward", "correct", "responses", "drawn", "dropped", "zero_var", "resp_len", "truncated", "distinct",
                          "overlong_penalty", "masked", "underfilled", *(f"reason_{r}" for r in tasks.REASONS[kind])), 0.0)
    maxes = {"resp_len_max": 0, "sample_rounds": 0}
    for rnd in range(args.max_sample_rounds if args.dynamic_sampling else 1):
        if rnd > 0 and all_reduce(torch.tensor([float(per_rank - len(kept))], dtype=torch.float64, device=ctx.device),
                                  dist.ReduceOp.MAX if dist_on() else None).item() <= 0:
            break                                              # every rank holds its share
        maxes["sample_rounds"] = rnd + 1                      # a full rank draws too: a tensor-parallel
        rows = [train[row_for(cursor + i, ctx.rank, ctx.world, len(train), args.seed)] for i in range(per_rank)]
        cursor += per_rank                                     # vLLM group generates together
        with phase("rollout", maxes, ctx):
            samples = engine.generate([r["ids"] for r in rows], G, temperature=args.temperature, top_p=args.top_p,
                                      max_new_tokens=args.max_new_tokens,
                                      seed=seed_for("rollout", args.seed, step, ctx.rank, rnd))
        with phase("reward", maxes, ctx):
            texts = tok.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
            verdicts = tasks.judge(texts, [rows[s.prompt_index]["gold"] for s in samples], kind,
                                   weak_sandbox=args.weak_sandbox, grader=args.grader)
        for v in verdicts:
            sums[f"reason_{v.reason}"] += 1
        sums["drawn"] += len(rows)
        for i, r in enumerate(rows):
            sl = slice(i * G, (i + 1) * G)
            correct = [v.reward > 0 for v in verdicts[sl]]
            penalty = [overlong_penalty(len(s.response_ids), args) for s in samples[sl]]
            g = Group(r, samples[sl], texts[sl], [v.reward + p for v, p in zip(verdicts[sl], penalty)],
                      [v.reason for v in verdicts[sl]])
            sums["responses"] += G
            sums["reward"] += sum(g.rewards)
            sums["correct"] += sum(correct)
            sums["overlong_penalty"] += sum(penalty)
            sums["resp_len"] += sum(len(s.response_ids) for s in g.samples)
            maxes["resp_len_max"] = max(maxes["resp_len_max"], max(len(s.response_ids) for s in g.samples))
            sums["truncated"] += sum(s.truncated for s in g.samples)
            sums["distinct"] += len({tasks.answer_key(t, kind) for t, c in zip(g.texts, correct) if c} - {None})
            sums["zero_var"] += len(set(correct)) == 1
            if args.dynamic_sampling and len(set(correct)) == 1:   # DAPO filter_groups, metric acc
                sums["dropped"] += 1
            else:
                kept.append(g)
    kept = kept[:per_rank]
    sums["kept"] = len(kept)
    sums["masked"] = sum(s.truncated for g in kept for s in g.samples) if args.mask_truncated else 0.0
    if args.dynamic_sampling:
        short = all_reduce(torch.tensor([float(per_rank - len(kept))], dtype=torch.float64, device=ctx.device),
                           dist.ReduceOp.MAX if dist_on() else None).item()
        if short > 0 and args.underfilled == "error":
            raise UsageError(f"step {step + 1}: {args.max_sample_rounds} sample rounds did not fill the batch (a rank "
                             f"holds {len(kept)} of {per_rank} groups here): {sums['zero_var'] / sums['drawn']:.0%} of "
                             f"the prompts drawn had responses all correct or all wrong; the data may be too easy or too "
                             f"hard for the model (--max-sample-rounds, or --underfilled train to go on)")
        sums["underfilled"] = float(len(kept) < per_rank)
        if short > 0 and ctx.rank == 0:
            print(f"lad.py: WARNING: step {step + 1}: dynamic sampling kept {len(kept)} of {per_rank} groups on rank 0 "
                  f"after {args.max_sample_rounds} rounds; training on what was kept (--underfilled train)",
                  file=sys.stderr, flush=True)
    return kept, cursor, sums, maxes


def overlong_penalty(n_tokens, args):
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13; verl's DAPO reward manager): 0 up to
    --max-new-tokens - L tokens, then falling linearly to -P at --max-new-tokens (L = --overlong-buffer,
    P = --overlong-penalty); 0 when off."""
    if not args.overlong_buffer:
        return 0.0
    return min(-(n_tokens - (args.max_new_tokens - args.overlong_buffer)) / args.overlong_buffer * args.overlong_penalty, 0.0)


@dataclasses.dataclass
class Batch:
    """One step's flat rollout batch on this rank. Row i is prompts[i] + responses[i] with advantage adv[i];
    trained[i] says whether its tokens are in the loss: False for the rows that only pad this rank to the
    others' size (rows n_samples and after) and, with --mask-truncated, for truncated responses."""
    prompts: list
    responses: list
    adv: torch.Tensor                  # (N,) float32
    engine_logp: list                  # per row the engine's log-probs of its response tokens, or None
    trained: list
    n_samples: int
    pad_id: int

    @classmethod
    def of(cls, groups, adv, pad_id, mask_truncated=False):
        samples = [(g.row["ids"], s) for g in groups for s in g.samples]
        return cls([p for p, _ in samples], [s.response_ids for _, s in samples], adv,
                   [s.logprobs for _, s in samples], [not (mask_truncated and s.truncated) for _, s in samples],
                   len(samples), pad_id)

    def __len__(self):
        return len(self.prompts)

    def width(self):
        """T: the longest response (at least 1), the width of the (N, T) per-token tensors of the step."""
        return max([len(r) for r in self.responses] + [1])

    def inputs(self, idx, device, prompt_mask=False):
        items = [(self.prompts[i], self.responses[i]) for i in idx]
        ids, attn, pos, tgt, valid = make_batch(items, self.pad_id, device)
        trained = torch.tensor([float(self.trained[i]) for i in idx], device=device)
        return Micro(ids, attn, pos, tgt, valid, valid.float() * trained[:, None], self.adv[list(idx)].to(device),
                     any(self.trained[i] for i in idx),
                     prompt_mask_of(items, ids.shape[1], device) if prompt_mask else None)


@dataclasses.dataclass
class Micro:
    """The tensors of one micro-batch (Batch.inputs): ids/attn (B, L) right-padded prompt + response; pos, tgt,
    valid (B, T) as Policy.forward takes them; mask (B, T) the loss mask (valid tokens of trained rows); adv (B,);
    trained: whether any row is; prompt_mask (B, L) the prompt positions (FlowRL's log Z) or None."""
    ids: torch.Tensor
    attn: torch.Tensor
    pos: torch.Tensor
    tgt: torch.Tensor
    valid: torch.Tensor
    mask: torch.Tensor
    adv: torch.Tensor
    trained: bool
    prompt_mask: torch.Tensor | None


def pad_to_largest_rank(batch, filler, ctx):
    """Rank lock-step, the one mechanism: DDP's gradient averaging and FSDP2's all-gathers are collectives
    inside forward and backward, so every rank must run the same micro-batches. One all_reduce (max) of the
    row count; a shorter rank appends `filler` rows (prompt ids, response ids), not trained: they run
    through the forwards but lie outside every loss mask and denominator, so they change no number."""
    n = int(all_reduce(torch.tensor([float(len(batch))], dtype=torch.float64, device=ctx.device),
                       dist.ReduceOp.MAX if dist_on() else None).item())
    k = n - len(batch)
    if k > 0:
        batch.prompts += [filler[0]] * k
        batch.responses += [filler[1]] * k
        batch.adv = torch.cat([batch.adv, torch.zeros(k, dtype=batch.adv.dtype)])
        batch.engine_logp += [[0.0] * len(filler[1])] * k
        batch.trained += [False] * k
    return batch


def micro_batches(args, ctx, batch, rows):
    """Split `rows` (a mini-batch, or every row for the log-prob passes) into forward/backward micro-batches:
    consecutive runs of --micro-batch rows, or with --micro-batch-tokens N, rows sorted by length and packed
    while (rows x longest prompt + response) <= N (a row longer than N alone). Rank lock-step, part two: a
    token budget gives ranks different counts, so one all_reduce (max) agrees on the count and a rank with
    fewer splits its largest micro-batches (every rank has as many rows per mini-batch, so it always can)."""
    if not args.micro_batch_tokens:
        return [rows[i:i + args.micro_batch] for i in range(0, len(rows), args.micro_batch)]
    size = {i: len(batch.prompts[i]) + len(batch.responses[i]) for i in rows}
    micro = []
    for i in sorted(rows, key=lambda i: -size[i]):
        if micro and (len(micro[-1]) + 1) * size[micro[-1][0]] <= args.micro_batch_tokens:
            micro[-1].append(i)                                # the first row of each is its longest
        else:
            micro.append([i])
    n = int(all_reduce(torch.tensor([float(len(micro))], dtype=torch.float64, device=ctx.device),
                       dist.ReduceOp.MAX if dist_on() else None).item())
    while len(micro) < n:
        big = max((k for k in range(len(micro)) if len(micro[k]) > 1), key=lambda k: len(micro[k]) * size[micro[k][0]])
        m = micro.pop(big)
        micro += [m[:len(m) // 2], m[len(m) // 2:]]
    return micro


def logprob_passes(args, ctx, policy, batch):
    """Every row's log pi(y_t) and entropy under `policy`, without gradient, one micro-batch at a time (in row
    order; by --micro-batch-tokens when set): yields (row indices, Micro, logp (B, T), entropy (B, T)), float32."""
    for idx in micro_batches(args, ctx, batch, list(range(len(batch)))):
        x = batch.inputs(idx, ctx.device)
        with torch.no_grad():
            lp, en, _ = policy(x.ids, x.attn, x.pos, x.tgt, x.valid)
        yield idx, x, lp.float(), en.float()


def old_logprobs(args, ctx, policy, batch):
    """Phase 3: log pi_old (N, T) of every row, recomputed by the trainer (as verl; not the engine's), the
    entropy of the policy at each response token (train/entropy) and, where the engine returned its own
    log-probs, the rollout/trainer mismatch and with --tis-cap the truncated-IS weights (docs/gpu.md).
    Returns (old (N, T), tis (N, T) or None, sums, maxes)."""
    N, T = len(batch), batch.width()
    old = torch.zeros(N, T, device=ctx.device)
    with_engine = all(lp is not None for lp, r in zip(batch.engine_logp, batch.trained) if r)
    tis = torch.zeros(N, T, device=ctx.device) if with_engine and args.tis_cap > 0 else None
    sums, maxes = {"ent": 0.0, "ent_n": 0.0}, {}
    for idx, x, lp, en in logprob_passes(args, ctx, policy, batch):
        t = lp.shape[1]
        old[idx, :t] = lp
        if with_engine:
            elp = torch.zeros_like(lp)
            for b, i in enumerate(idx):
                elp[b, :len(batch.engine_logp[i])] = torch.tensor(batch.engine_logp[i], dtype=torch.float32)
            w_tis, st = rollout.rollout_mismatch(lp, elp, x.mask, args.tis_cap)
            if tis is not None:
                tis[idx, :t] = w_tis
            for k, v in st.items():
                if k.endswith("_max"):
                    maxes[k] = max(maxes.get(k, 0.0), v)
                else:
                    sums[k] = sums.get(k, 0.0) + v
        if x.trained:
            m = x.mask > 0
            sums["ent"] += float(en[m].sum())
            sums["ent_n"] += int(m.sum())
    return old, tis, sums, maxes


def ref_logprobs(args, ctx, reference, batch):
    """log pi_ref (N, T) of every row under the frozen initial policy (FlowRL's reference, GRPO's KL anchor)."""
    ref = torch.zeros(len(batch), batch.width(), device=ctx.device)
    for idx, _, lp, _ in logprob_passes(args, ctx, reference, batch):
        ref[idx, :lp.shape[1]] = lp
    if args.fsdp:      # FSDP2 keeps a root unit gathered after its forward; no backward will reshard this one
        reference.reshard()
    return ref


def accumulate(upd, stats, loss, weight):
    """The update's figures: each micro-batch's loss stats and objective, weighted (a micro-batch of padding
    rows only weighs 0), summed by name; step_metrics divides by stats_n."""
    for k, v in stats.items():
        if k != "loss/value":
            upd[k] = upd.get(k, 0.0) + weight * float(v)
    upd["stats_n"] += weight
    upd["objective_sum"] += weight * float(loss.detach())


def push_weights(engine, lm):
    """Phase 5: the new weights into the engine (a no-op for the HF engine sampling from `lm` itself; under
    FSDP it fills its rollout copy). Cast before the gather: bf16 halves the traffic. vLLM wakes after the
    sync, so its KV cache comes back last (docs/gpu.md)."""
    eng_dtype = getattr(engine, "dtype", None)
    engine.sync_weights(rollout.hf_named_tensors(lm, dtype=getattr(torch, eng_dtype) if eng_dtype else None))
    engine.wake()


def build_engine(args, ctx, tr, model_path, rows):
    """The rollout engine (rollout.py); --engine auto is resolved here once, so its reason is logged."""
    kind, why = args.engine, ""
    if kind == "auto":
        usable, reason = rollout.vllm_status()
        kind, why = ("vllm" if usable else "hf"), f" (auto: {reason})"
    ctx_len = getattr(tr.lm.config, "max_position_embeddings", None) or 10 ** 9
    engine, kind = rollout.make_engine(kind, model=tr.lm, tokenizer=tr.tok, model_path=model_path,
                                       seed=args.seed + ctx.rank, batch_size=args.gen_batch,
                                       tensor_parallel_size=args.vllm_tp,
                                       gpu_memory_utilization=args.gpu_memory_utilization,
                                       max_position_embeddings=args.max_position_embeddings,
                                       max_model_len=min(ctx_len, max(len(r["ids"]) for r in rows) + args.max_new_tokens))
    return engine, kind + why


def evaluate(args, ctx, engine, tok, held, step):
    """Held-out figures at `step`: eval.py's pipeline (generate_rows, score_rows, metrics.problem_values) on
    this rank's share of the prompts, gathered; the names are eval.py's (docs/metrics.md)."""
    mine = held[ctx.rank::ctx.world]
    rows = generate_rows(engine, tok, mine, n=args.eval_k, temperature=args.temperature, top_p=args.top_p,
                         max_new_tokens=args.max_new_tokens, seed=seed_for("eval", args.seed, step + 1, ctx.rank),
                         batch_size=max(1, len(mine)))
    score_rows(rows, weak_sandbox=args.weak_sandbox, grader=args.grader)
    ks = metrics.default_ks(args.eval_k)
    per = [metrics.problem_values(rows[i:i + args.eval_k], ks) for i in range(0, len(rows), args.eval_k)]
    vals = [v for part in all_gather_obj(per) for v in part]
    return {**metrics.mean_values(vals), "eval/n": args.eval_k, "eval/prompts": len(vals)}


# ----------------------------------------------------------------------------------------------------
# The run's record: config.json, metrics.jsonl (rank 0), wandb, the progress bar
# ----------------------------------------------------------------------------------------------------

def step_metrics(s, mx, grad_norms, lr, args, ctx):
    """The logged figures of one step from the reduced sums s and maxima mx (docs/metrics.md defines each)."""
    m = {"train/reward_mean": s["reward"] / s["responses"], "train/accuracy": s["correct"] / s["responses"],
         "train/distinct_correct": s["distinct"] / s["drawn"],
         "train/entropy": s["ent"] / s["ent_n"] if s["ent_n"] else float("nan"),
         "train/lr": lr, "train/grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else 0.0,
         "rollout/zero_var_frac": s["zero_var"] / s["drawn"], "rollout/prompts_drawn": s["drawn"],
         "rollout/sample_rounds": mx["sample_rounds"], "rollout/underfilled": s["underfilled"],
         "rollout/overlong_penalty_mean": s["overlong_penalty"] / s["responses"],
         "rollout/truncated_masked_frac": s["masked"] / max(s["kept"] * args.group_size, 1.0),
         "rollout/groups_kept": s["kept"], "rollout/response_len_mean": s["resp_len"] / s["responses"],
         "rollout/response_len_max": mx["resp_len_max"], "rollout/truncation_rate": s["truncated"] / s["responses"],
         "perf/step_s": mx["step_s"], "perf/tokens_per_s": s["resp_len"] / mx["step_s"]}
    m.update({k: v for k, v in mx.items() if k.startswith("perf/")})
    m.update({f"rollout/{k}_frac": v / s["responses"] for k, v in s.items() if k.startswith("reason_")})
    if s["stats_n"]:
        m.update({k: v / s["stats_n"] for k, v in s.items() if k.startswith("loss/")})
    if grad_norms:                     # per rank over global / world tokens: the ranks' sum is world x the objective
        m["loss/objective"] = s["objective_sum"] / len(grad_norms) / ctx.world
    if "rollout/tokens" in s:          # rollout/trainer mismatch (docs/gpu.md)
        n_tok = max(s["rollout/tokens"], 1.0)
        m["rollout/logp_diff_mean"] = s["rollout/logp_diff_sum"] / n_tok
        m["rollout/logp_diff_max"] = mx["rollout/logp_diff_max"]
        if "rollout/tis_weight_sum" in s:
            m["rollout/tis_weight_mean"] = s["rollout/tis_weight_sum"] / n_tok
            m["rollout/tis_capped_frac"] = s["rollout/tis_capped"] / n_tok
    return m


def open_run(args, ctx, ckpt, facts):
    """The run folder (rank 0's name for every rank), its config.json (every setting, resolved, and the run's
    facts: model path, parameters, engine, prompt counts) and a one-line summary; returns the folder."""
    out = args.out or (str(ckpt.parent) if ckpt is not None else
                       f"runs/{args.loss}{'-' + args.divergence if args.loss == 'lad' else ''}-s{args.seed}-"
                       f"{time.strftime('%Y%m%d-%H%M%S')}")
    out = all_gather_obj(out)[0]
    Path(out).mkdir(parents=True, exist_ok=True)
    cfg = {**dataclasses.asdict(args), "world_size": ctx.world, **facts, "out": out, "torch": torch.__version__}
    if ctx.rank == 0:
        (Path(out) / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
        print(f"lad.py: {args.loss}{'/' + args.divergence if args.loss == 'lad' else ''}, {ctx.world} rank(s), "
              f"engine {cfg['engine_resolved']}, model {cfg['model_path']} ({cfg['params'] / 1e6:.2f}M params), "
              f"{cfg['train_prompts']} train prompts ({cfg['train_prompts_skipped_too_long']} skipped: longer than "
              f"{cfg['prompt_limit']} tokens), out {out}", flush=True)
    return out


def open_log(args, ctx, out, start):
    """log(step, metrics): rank 0 appends a row to out/metrics.jsonl (and to wandb); log(None, None) closes it.
    Rows of a resumed run past its checkpoint (`start`) are dropped first: each step is logged once."""
    if ctx.rank != 0:
        return lambda step, m: None
    path = Path(out) / "metrics.jsonl"
    if path.exists():                  # a run killed after its checkpoint logged steps it will now redo
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= start]
        path.write_text("".join(ln + "\n" for ln in keep))
    fh = open(path, "a")
    wb = None
    if args.wandb != "disabled":
        import wandb

        wb = wandb.init(project=args.wandb_project, mode=args.wandb, dir=out,
                        config=json.loads((Path(out) / "config.json").read_text()))

    def log(step, m):
        if m is None:                  # the end of the run
            fh.close()
            if wb is not None:
                wb.finish()
            return
        row = {"step": step, **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}}
        fh.write(json.dumps(row) + "\n")                      # NaN -> null: strict JSON
        fh.flush()
        if wb is not None:
            wb.log(m, step=step)
    return log


def show_progress(bar, m):
    bar.update(1)
    bar.set_postfix(reward=f"{m['train/reward_mean']:.3f}", zv=f"{m['rollout/zero_var_frac']:.2f}",
                    ent=f"{m['train/entropy']:.2f}", dist=f"{m['train/distinct_correct']:.2f}",
                    s=f"{m['perf/step_s']:.2f}", refresh=False)
    if "eval/avg@n" in m and not bar.disable:
        n = m["eval/n"]
        bar.write(f"eval avg@{n} {m['eval/avg@n']:.3f}  pass@{n} {m[f'eval/pass@{n}']:.3f}  "
                  f"distinct correct {m['eval/distinct_answers']:.2f}")


def memory_plan(args, ctx, model_path, train):
    """memplan's plan of this run, printed by rank 0: the model's config (no weights), the run's flags, the
    GPU (this one, or --world-size x --gpu-memory-gb) and the longest prompt (--prompt-tokens, else measured
    with the model's tokenizer)."""
    gpu = args.gpu_memory_gb or (torch.cuda.get_device_properties(ctx.device).total_memory / 2 ** 30
                                 if ctx.device.type == "cuda" else 0.0)
    if not gpu:
        raise UsageError("--plan true on a machine without a GPU needs --gpu-memory-gb (one GPU's memory, GiB)")
    try:
        cfg = memplan.load_config(model_path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    prompt = args.prompt_tokens or max(len(r["ids"]) for r in data.encode_rows(
        train, AutoTokenizer.from_pretrained(model_path), args.chat, 10 ** 9, args.train_data)[0])
    plan = memplan.plan(cfg, memplan.settings_from_args(args, args.world_size or ctx.world, gpu, prompt,
                                                        needs_reference(args)))
    ctx.say(memplan.format_plan(plan))
    return plan


def plan_only(args):
    """--plan true: print the plan and return the exit code, 0 (fits) or 1 (does not)."""
    args = resolve_args(args)
    ctx = Ranks.from_env()
    check_args(args, args.world_size or ctx.world)
    task = tasks.builtin(args.train_data)
    train, _ = load_data(args, task)
    model_path = args.model or tiny.default_model_dir(task or tasks.SUM, 0, ctx.say)
    return 0 if memory_plan(args, ctx, model_path, train).fits else 1


def cli(argv=None):
    args = parse_args(Args, argv)
    code = 0
    try:
        if args.plan:
            code = plan_only(args)
        else:
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
