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
    8 GPUs:             torchrun --nproc_per_node=8 lad.py --divergence js --model <hf-path> --train-data <file>
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
