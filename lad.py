"""LAD: Learning Advantage Distribution for Reasoning (Li & Li, 2026) -- loss and training loop.

Implements the practical LAD objective (paper Sec. 3.2, Eq. 8; divergences of Table 5)

    L = E_{y ~ pi_old} [ e^{A/eta} * f( r * e^{-A/eta} ) ],   r = pi_theta(y|x) / pi_old(y|x)

whose gradient is f'(x) * r * grad log pi_theta (Eq. 9), next to the baselines it is compared with
(GRPO/DAPO clipped surrogate, FlowRL, Clip-Cov, KL-Cov, EntAdv), group-normalised advantages, and the
RL training loop.

The "LOSS" section below is self-contained (only `torch`): copy it into verl, TRL or OpenRLHF as is.
The "TRAINING" section is the torchrun entry point: a flat loop in `main` calling one named phase per
line (sample_groups, build_batch, old_logprobs, update_policy, push_weights, reduce_metrics, evaluate,
save_checkpoint); the shared parts live in common.py (command line, seeds), data.py (rows, prompts,
task kinds), metrics.py (held-out metrics), rollout.py (engines) and verifier.py (rewards).

Commands
    CPU, one process:   python lad.py --divergence js
    CPU, two ranks:     torchrun --nproc_per_node=2 lad.py --divergence js
    1 GPU:              python lad.py --divergence js --model <hf-path> --train-data <file>
    1 GPU, bf16:        python lad.py --fsdp true --model <hf-path> --train-data <file>   (one-rank FSDP2)
    8 GPUs:             torchrun --nproc_per_node=8 lad.py --divergence js --model <hf-path> --train-data <file>
    8 GPUs, FSDP2:      torchrun --nproc_per_node=8 lad.py --fsdp true --engine vllm --model <hf-path> ...
                        (--engine hf without vLLM: each rank samples from an unsharded bf16 copy)
    Baselines:          add --loss grpo | flowrl | clip-cov | kl-cov | entadv (the paper's Tables 1, 2, 4)

Deliberately left out
    - a learned critic (PPO/GAE): advantages are group-normalised outcome rewards, as in the paper;
    - reference-model KL for LAD: the paper uses none (its trust region is pi_old, Eq. 2);
    - a KL term in FlowRL: the authors' script sets use_kl_loss, but their actor code has it commented out;
    - FlowRL under --fsdp true (refused: the log Z head is outside the sharded checkpoint).
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


# verl core_algos kl_penalty_forward, "low_var_kl"/"k3": the log ratio and k3 itself are clamped there
K3_LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


def _token_inputs(logp, old_logp, advantages, mask, log_ratio_clamp):
    """The per-token inputs every PPO-family loss below shares, NaN-safe at padding.

    Returns valid (B, T) bool; m (B, T) float mask; adv (B, T) detached, 0 at padding; lp (B, T) logp
    with 0 at padding (keeps its graph); log_r (B, T) = lp - old, unclamped, 0 at padding; r (B, T) =
    e^{log_r clamped to +-log_ratio_clamp}. Cleaning happens before any arithmetic so no NaN/inf at a
    masked position can enter a product whose backward would multiply it by a zero gradient.
    """
    valid = mask > 0                                                            # (B, T)
    m = mask.to(logp.dtype)
    adv = advantages if advantages.dim() == 2 else advantages[:, None]          # (B, T) or (B, 1)
    adv = _where_valid(valid, adv.detach().to(logp.dtype))                      # (B, T)
    lp = _where_valid(valid, logp)                                              # (B, T)
    log_r = lp - _where_valid(valid, old_logp.detach().to(logp.dtype))          # (B, T)
    # verl compute_policy_loss_vanilla: the log ratio is clamped to +-20 before exp (float32 safety)
    r = log_r.clamp(-log_ratio_clamp, log_ratio_clamp).exp()                   # (B, T)
    return valid, m, adv, lp, log_r, r


def _ppo_clipped(adv, r, clip_low, clip_high):
    """PPO's clipped surrogate as a loss (B, T) and where its clipped branch is the max (B, T) bool."""
    pg1 = -adv * r
    # PPO (Schulman et al. 2017, Eq. 7) with DAPO's decoupled clip-higher (Yu et al. 2025, Eq. 10)
    pg2 = -adv * r.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(pg1, pg2), pg2 > pg1


def _token_weights(weights, valid, dtype):
    return None if weights is None else _where_valid(valid, weights.detach().to(dtype))   # (B, T)


def _ratio_stats(r, log_r, m, n):
    return {"loss/ratio_mean": _masked_mean(r, m, n), "loss/log_ratio_abs_mean": _masked_mean(log_r.abs(), m, n)}


def grpo_loss(logp, old_logp, advantages, mask, *, clip_low=0.2, clip_high=0.28, dual_clip=None,
              ref_logp=None, kl_coef=0.0, agg="token-mean", denom=None, weights=None,
              log_ratio_clamp=LOG_RATIO_CLAMP, with_stats=True):
    """GRPO / DAPO clipped surrogate (PPO clip with clip-higher), optional dual-clip and k3 KL, as verl.

    Per token: max(-A r, -A clip(r, 1-clip_low, 1+clip_high)); with dual_clip=c (> 1), min(that, -A c)
    where A < 0 (dual-clip PPO, Ye et al. 2020). verl's vanilla loss always applies it with
    clip_ratio_c = 3 by default; DAPO's and the entropy-mechanism authors' run scripts set 10.
    ref_logp (B, T) with kl_coef > 0 adds kl_coef * k3 with verl's "low_var_kl" clamps: d = ref - logp
    clamped to +-20, k3 = e^d - d - 1 clamped to [-10, 10] (no KL gradient past either clamp).
    weights (B, T) or (B, 1), e.g. truncated IS: scale the policy-gradient term only, not the KL term
    (verl multiplies pg_losses by rollout_is_weights and adds its KL loss unweighted).
    Shapes, agg, denom as lad_loss. Masked positions may hold NaN or inf: they reach neither the loss
    nor the gradient. Stats: loss/ratio_mean, loss/log_ratio_abs_mean, loss/clip_frac(_high, _low),
    loss/dual_clip_frac (with dual_clip), loss/kl_mean and loss/kl_clamp_frac (with the KL), loss/value.
    """
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (verl asserts clip_ratio_c > 1), got {dual_clip}")
    valid, m, adv, lp, log_r, r = _token_inputs(logp, old_logp, advantages, mask, log_ratio_clamp)
    pg_c, clipped = _ppo_clipped(adv, r, clip_low, clip_high)                   # (B, T)
    pg = pg_c
    if dual_clip is not None:
        pg3 = -adv * dual_clip
        # dual-clip (Ye et al. 2020; verl compute_policy_loss_vanilla): for A < 0 the loss is capped at -A c
        pg = torch.where(adv < 0, torch.minimum(pg_c, pg3), pg_c)
    tis = _token_weights(weights, valid, lp.dtype)
    per_tok = pg if tis is None else pg * tis                                   # TIS on the PG term only
    use_kl = ref_logp is not None and kl_coef > 0
    if use_kl:
        d_raw = _where_valid(valid, ref_logp.detach().to(lp.dtype)) - lp        # (B, T), log(pi_ref/pi)
        d = d_raw.clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
        # k3 = e^d - d - 1 (Schulman, "Approximating KL divergence"), clamped as verl's low_var_kl
        k3_raw = d.exp() - d - 1.0
        k3 = k3_raw.clamp(-K3_CLAMP, K3_CLAMP)
        per_tok = per_tok + kl_coef * k3
    loss = _reduce(per_tok * m, m, agg, denom)                                  # 0 at padding

    if not with_stats:
        return loss, {}
    with torch.no_grad():
        n = m.sum().clamp_min(1)
        cl = clipped.to(m.dtype)                                                # clipped branch wins
        stats = {**_ratio_stats(r, log_r, m, n),
                 "loss/clip_frac": _masked_mean(cl, m, n),
                 "loss/clip_frac_high": _masked_mean(cl * (adv > 0), m, n),
                 "loss/clip_frac_low": _masked_mean(cl * (adv < 0), m, n),
                 "loss/value": loss.detach()}
        if dual_clip is not None:
            stats["loss/dual_clip_frac"] = _masked_mean(((adv < 0) & (pg_c > pg3)).to(m.dtype), m, n)
        if use_kl:
            stats["loss/kl_mean"] = _masked_mean(k3, m, n)
            stats["loss/kl_clamp_frac"] = _masked_mean(((d_raw.abs() > K3_LOG_RATIO_CLAMP) | (k3_raw > K3_CLAMP)).to(m.dtype), m, n)
    return loss, stats


def _token_cov(adv, lp, m):
    """(B, T) per-token covariance term of Clip-Cov/KL-Cov over the valid tokens of this micro-batch.

    adv, lp are 0 at padding (from _token_inputs), so plain sums are masked sums. log pi is detached:
    the term only selects tokens.
    """
    n = m.sum().clamp_min(1)
    lp_d = lp.detach()
    # Cui et al. 2025 (Entropy Mechanism, Sec. 4): Cov(y_i) = (log pi(y_i) - mean_j log pi(y_j)) * (A(y_i) - mean_j A(y_j));
    # verl compute_policy_loss_clip_cov / _kl_cov take both means over the valid tokens of the micro-batch
    return (adv - adv.sum() / n) * (lp_d - lp_d.sum() / n) * m


def clip_cov_loss(logp, old_logp, advantages, mask, *, generator, clip_cov_ratio=2e-4, cov_lb=1.0, cov_ub=5.0,
                  clip_low=1.0, clip_high=1.0, agg="token-mean", denom=None, weights=None,
                  log_ratio_clamp=LOG_RATIO_CLAMP, with_stats=True):
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", Sec. 4; verl
    core_algos.compute_policy_loss_clip_cov): the PPO clipped surrogate, except that a few
    high-covariance tokens have their loss and gradient removed.

    Per token cov = (A - mean A)(log pi - mean log pi) over the valid tokens of the micro-batch (log pi
    detached). Eligible: valid tokens with cov_lb < cov < cov_ub whose PPO clipped branch is not already
    active. Of those, max(1, int(clip_cov_ratio * n_valid)) (or all, if fewer) drawn uniformly without
    replacement with `generator` (a torch.Generator, so a resumed run can restore the draw; None uses
    torch's global RNG as verl does) contribute 0 to the loss but stay in the token-mean denominator.
    Defaults clip_cov_ratio 2e-4, bounds (1, 5): verl's code/config defaults and the authors'
    recipe/entropy/{7b,32b}_clip_cov.sh. clip_low = clip_high = 1.0: those scripts' clip_ratio_low/high
    for this method, i.e. PPO's lower clip never binds (r >= 0) and the upper one at r = 2, so the
    covariance clip is the method's main trust region. (The LAD paper, App. C.2, says DAPO's
    clip-higher 0.2/0.28 was applied to all baselines; pass those to reproduce that protocol.)
    No dual-clip: verl's clip_cov loss has none. weights scale every token's loss (verl multiplies
    rollout_is_weights into pg_losses). Other args as grpo_loss; NaN/inf at padding is harmless.
    Stats: loss/ratio_mean, loss/log_ratio_abs_mean, loss/clip_frac (PPO clip active),
    loss/cov_clip_frac (removed / valid), loss/cov_eligible_frac (eligible / valid), loss/cov_mean, loss/value.
    """
    if not clip_cov_ratio > 0:
        raise ValueError(f"clip_cov_ratio must be > 0 (verl asserts it), got {clip_cov_ratio}")
    valid, m, adv, lp, log_r, r = _token_inputs(logp, old_logp, advantages, mask, log_ratio_clamp)
    pg, clipped = _ppo_clipped(adv, r, clip_low, clip_high)                     # (B, T)
    with torch.no_grad():
        cov = _token_cov(adv, lp, m)                                            # (B, T)
        eligible = valid & ~clipped & (cov > cov_lb) & (cov < cov_ub)           # (B, T)
        n_valid = int(valid.sum())
        # verl: clip_num = max(int(clip_cov_ratio * n_valid), 1), a random subset of the eligible tokens
        n_clip = max(int(clip_cov_ratio * n_valid), 1) if n_valid else 0
        idx = eligible.flatten().nonzero().squeeze(-1)                          # (n_eligible,)
        removed = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
        if len(idx) > 0 and n_clip > 0:
            dev = generator.device if generator is not None else "cpu"
            perm = torch.randperm(len(idx), generator=generator, device=dev)[:n_clip].to(idx.device)
            removed[idx[perm]] = True
        removed = removed.view_as(valid)                                        # (B, T)
    # Clip-Cov: the removed tokens' loss is 0 (no gradient); they stay in the denominator
    per_tok = _where_valid(~removed, pg)
    tis = _token_weights(weights, valid, lp.dtype)
    if tis is not None:
        per_tok = per_tok * tis
    loss = _reduce(per_tok * m, m, agg, denom)                                  # 0 at padding

    if not with_stats:
        return loss, {}
    with torch.no_grad():
        n = m.sum().clamp_min(1)
        stats = {**_ratio_stats(r, log_r, m, n),
                 "loss/clip_frac": _masked_mean(clipped.to(m.dtype), m, n),
                 "loss/cov_clip_frac": removed.sum() / n,
                 "loss/cov_eligible_frac": eligible.sum() / n,
                 "loss/cov_mean": cov.sum() / n,
                 "loss/value": loss.detach()}
    return loss, stats


def kl_cov_loss(logp, old_logp, advantages, mask, *, kl_cov_ratio=2e-3, kl_coef=1.0, agg="token-mean",
                denom=None, weights=None, log_ratio_clamp=LOG_RATIO_CLAMP, with_stats=True):
    """KL-Cov (Cui et al. 2025, Sec. 4; verl core_algos.compute_policy_loss_kl_cov): the unclipped
    policy-gradient surrogate -A r, plus kl_coef * |log pi - log pi_old| on the top-k valid tokens by
    covariance, k = max(1, int(kl_cov_ratio * n_valid)) of this micro-batch.

    Cov as in clip_cov_loss. No PPO clip (as verl's kl_cov loss: the penalty is its trust region).
    Defaults are the authors' 7B run (recipe/entropy/7b_kl_cov.sh: kl_cov_ratio=0.002, ppo_kl_coef=1);
    verl's config defaults are kl_cov_ratio 2e-4 (also the authors' 32B script) and ppo_kl_coef 0.1.
    r uses the log ratio clamped to +-log_ratio_clamp; the penalty uses the unclamped |log r| (finite,
    its gradient is bounded), so a token that moved past the clamp is still pulled back.
    weights scale every token's loss, penalty included (verl multiplies rollout_is_weights into
    pg_losses after adding the penalty). Other args as grpo_loss; NaN/inf at padding is harmless.
    Stats: loss/ratio_mean, loss/log_ratio_abs_mean, loss/kl_cov_frac (penalised / valid),
    loss/kl_cov_abs_log_ratio_mean (mean |log r| of the penalised tokens), loss/cov_mean, loss/value.
    """
    if not kl_cov_ratio > 0:
        raise ValueError(f"kl_cov_ratio must be > 0 (verl asserts it), got {kl_cov_ratio}")
    valid, m, adv, lp, log_r, r = _token_inputs(logp, old_logp, advantages, mask, log_ratio_clamp)
    # plain policy gradient, importance-weighted (verl kl_cov: pg_losses1 = -advantages * ratio)
    pg = -adv * r                                                               # (B, T)
    with torch.no_grad():
        cov = _token_cov(adv, lp, m)                                            # (B, T)
        n_valid = int(valid.sum())
        k = max(1, int(n_valid * kl_cov_ratio)) if n_valid else 0
        top = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
        if k > 0:
            ranked = torch.where(valid, cov, torch.full_like(cov, -math.inf)).flatten()
            top[torch.topk(ranked, k).indices] = True
        top = top.view_as(valid)                                                # (B, T)
    # KL-Cov: + coef * |log pi - log pi_old| on the top-k covariance tokens only
    per_tok = pg + _where_valid(top, kl_coef * log_r.abs())
    tis = _token_weights(weights, valid, lp.dtype)
    if tis is not None:
        per_tok = per_tok * tis
    loss = _reduce(per_tok * m, m, agg, denom)                                  # 0 at padding

    if not with_stats:
        return loss, {}
    with torch.no_grad():
        n = m.sum().clamp_min(1)
        stats = {**_ratio_stats(r, log_r, m, n),
                 "loss/kl_cov_frac": top.sum() / n,
                 "loss/kl_cov_abs_log_ratio_mean": _where_valid(top, log_r.abs()).sum() / top.sum().clamp_min(1),
                 "loss/cov_mean": cov.sum() / n,
                 "loss/value": loss.detach()}
    return loss, stats


def entropy_advantage(advantages, entropy, mask, *, alpha=0.4, kappa=2.0):
    """Cheng et al. 2025 ("Reasoning with Exploration: An Entropy Perspective", arXiv 2506.14758) entropy-
    based advantage, (B, T): A_t + min(alpha * H_t, |A_t| / kappa), H_t detached.

    advantages (B,) or (B, T); entropy (B, T) of the current policy at each response position. The cap
    |A|/kappa keeps the bonus from reversing a negative advantage (kappa >= 1: A + |A|/kappa <= 0 for
    A <= 0) and gives a zero advantage no bonus. 0 at padding, whatever the inputs hold there.
    """
    if not alpha >= 0 or not kappa >= 1:
        raise ValueError(f"need alpha >= 0 and kappa >= 1 (else a negative advantage can flip sign), got {alpha}, {kappa}")
    valid = mask > 0                                                            # (B, T)
    dtype = torch.promote_types(advantages.dtype, entropy.dtype)
    adv = advantages if advantages.dim() == 2 else advantages[:, None]
    adv = _where_valid(valid, adv.detach().to(dtype))                           # (B, T)
    h = _where_valid(valid, entropy.detach().to(dtype))                         # (B, T)
    # Cheng et al. 2025, Eq. (psi): psi(H_t) = min(alpha * H_t^detach, |A_t| / kappa); A^E_t = A_t + psi(H_t)
    return adv + torch.minimum(alpha * h, adv.abs() / kappa)


def entadv_loss(logp, old_logp, advantages, mask, entropy, *, alpha=0.4, kappa=2.0, clip_low=0.2,
                clip_high=0.28, dual_clip=None, agg="token-mean", denom=None, weights=None,
                log_ratio_clamp=LOG_RATIO_CLAMP, with_stats=True):
    """EntAdv: grpo_loss on entropy_advantage(advantages, entropy, mask) (Cheng et al. 2025, applied to GRPO).

    entropy (B, T): the current policy's per-token entropy from the same forward as logp (detached
    here). alpha = 0.4, kappa = 2: Cheng et al.'s values for GRPO. clip 0.2/0.28: grpo_loss's (DAPO
    clip-higher, which the LAD paper applies to all baselines, App. C.2). Other args as grpo_loss.
    Stats: grpo_loss's, plus loss/entadv_bonus_mean (mean psi over valid tokens) and
    loss/entadv_bonus_capped_frac (tokens where |A|/kappa < alpha H, i.e. the cap binds).
    """
    shaped = entropy_advantage(advantages, entropy, mask, alpha=alpha, kappa=kappa)   # (B, T)
    loss, stats = grpo_loss(logp, old_logp, shaped.to(logp.dtype), mask, clip_low=clip_low, clip_high=clip_high,
                            dual_clip=dual_clip, agg=agg, denom=denom, weights=weights,
                            log_ratio_clamp=log_ratio_clamp, with_stats=with_stats)
    if not with_stats:
        return loss, {}
    with torch.no_grad():
        valid = mask > 0
        m = mask.to(shaped.dtype)
        n = m.sum().clamp_min(1)
        base = _where_valid(valid, (advantages if advantages.dim() == 2 else advantages[:, None]).to(shaped.dtype))
        h = _where_valid(valid, entropy.to(shaped.dtype))
        stats["loss/entadv_bonus_mean"] = _masked_mean(shaped - base, m, n)
        stats["loss/entadv_bonus_capped_frac"] = _masked_mean((base.abs() / kappa < alpha * h).to(m.dtype), m, n)
    return loss, stats


def flowrl_loss(logp, old_logp, advantages, mask, log_z, *, beta=15.0, ref_logp=None, w_cap=None, denom=None,
                weights=None, log_ratio_clamp=LOG_RATIO_CLAMP, with_stats=True):
    """FlowRL's trajectory-balance loss as its authors run it (Zhu et al. 2025, FlowRL; their verl fork,
    verl/workers/actor/dp_actor.py compute_flowrl_objective; LAD paper App. B.5, Eq. 18).

    Per response b: delta_b = log Z(x_b) + mean_t log pi - beta * mean_t A - mean_t log pi_ref, and
    loss = sum_b w_b * delta_b^2 / denom with w_b = exp(sum_t (log pi - log pi_old)) detached.
    log_z: (B,) from LogZHead on prompt_mean_hidden (gradient flows into it). beta = 15: the authors'
    hard-coded 15 * seq_log_reward. ref_logp (B, T): the frozen initial policy (the authors' reference
    model); None means pi_old (Eq. 18: no extra model or forward).
    w_cap: None (default) leaves w uncapped, as the authors' code (it computes a clipped weight and
    multiplies by the unclipped one); a number caps w at it. Either way log w is clamped to
    log_ratio_clamp before exp: a sum of per-token log ratios over thousands of tokens overflows
    float32's exp past 88.7 (w = inf, then inf * 0 = NaN), so w <= e^20 always; the clamp does not
    bind while the summed log ratio stays under 20 (loss/is_weight_clamp_frac counts rows past it).
    denom: number of responses the loss is averaged over; default: the responses of this micro-batch
    with >= 1 valid token (the authors' torch.mean over the micro-batch). For gradient accumulation
    pass the GLOBAL response count of the mini-batch (the authors' dynamic-batch scaling
    len(micro) / mini-batch size amounts to that). A response with no valid token contributes 0.
    weights: optional (B,) per-response multipliers, detached (a per-token weight has no meaning for
    this sequence-level loss; a (B, T) weight is refused). No agg: the aggregation is the definition.
    Stats: loss/tb_delta_abs_mean, loss/tb_delta_mean, loss/is_weight_mean, loss/is_weight_clamp_frac,
    loss/log_z_mean, loss/value (means over responses with >= 1 valid token).
    """
    valid = mask > 0                                                            # (B, T)
    n_tok = valid.sum(-1)                                                       # (B,)
    row = n_tok > 0                                                             # (B,)
    n_tok = n_tok.clamp_min(1).to(logp.dtype)
    adv = advantages if advantages.dim() == 2 else advantages[:, None]          # (B, T) or (B, 1)
    adv = _where_valid(valid, adv.detach().to(logp.dtype))                      # (B, T)
    lp = _where_valid(valid, logp)                                              # (B, T)
    old = _where_valid(valid, old_logp.detach().to(logp.dtype))                 # (B, T)
    ref = old if ref_logp is None else _where_valid(valid, ref_logp.detach().to(logp.dtype))
    z = _where_valid(row, log_z.reshape(-1).to(logp.dtype))                    # (B,)
    # FlowRL (authors' compute_flowrl_objective): delta = log_z + avg_logpf - 15 * seq_log_reward - avg_logp_ref,
    # the averages masked means over the response tokens; LAD Eq. 18 with beta playing 1/eta
    delta = z + lp.sum(-1) / n_tok - beta * adv.sum(-1) / n_tok - ref.sum(-1) / n_tok   # (B,)
    with torch.no_grad():
        log_w = (lp - old).sum(-1)                                              # (B,) summed log ratio
        cap = log_ratio_clamp if w_cap is None else min(math.log(w_cap), log_ratio_clamp)
        # authors: importance_weight = exp(masked_sum(logpf - logpf_old)).detach(), uncapped
        w = log_w.clamp(max=cap).exp()                                          # (B,)
        if weights is not None:
            if weights.dim() == 2 and weights.shape[-1] != 1:
                raise ValueError("flowrl_loss takes per-response weights (B,) or (B, 1), not per-token (B, T)")
            w = w * weights.detach().reshape(-1).to(w.dtype)
        w = _where_valid(row, w)
    per_resp = _where_valid(row, w * delta ** 2)                                 # (B,)
    d = row.sum().clamp_min(1) if denom is None else denom
    loss = per_resp.sum() / d

    if not with_stats:
        return loss, {}
    with torch.no_grad():
        nr = row.sum().clamp_min(1)
        dl = _where_valid(row, delta.detach())
        stats = {"loss/value": loss.detach(), "loss/tb_delta_abs_mean": dl.abs().sum() / nr,
                 "loss/tb_delta_mean": dl.sum() / nr, "loss/is_weight_mean": w.sum() / nr,
                 "loss/is_weight_clamp_frac": (row & (log_w > cap)).sum() / nr,
                 "loss/log_z_mean": z.detach().sum() / nr}
    return loss, stats


class LogZHead(torch.nn.Module):
    """FlowRL's learned log-partition log Z(x): an MLP on the policy's last hidden state averaged over
    the prompt tokens (prompt_mean_hidden). The authors' ProjZModule (their verl fork,
    verl/workers/fsdp_workers.py; porj_layer=3 in command/training/math/flowrl_7B_math.sh): num_layers - 1
    blocks Linear(H, H)-GELU-LayerNorm(H)-Dropout(0.1), then Linear(H, 1); every width is H, the policy's
    hidden size. They attach it to the actor, so the policy's optimiser (lr, weight decay) trains it.
    forward: (B, H) -> (B,), computed in the head's own dtype (the input is cast to it).
    """

    def __init__(self, hidden_size, dropout=0.1, num_layers=3):
        super().__init__()
        layers = []
        for _ in range(num_layers - 1):
            layers += [torch.nn.Linear(hidden_size, hidden_size), torch.nn.GELU(),
                       torch.nn.LayerNorm(hidden_size), torch.nn.Dropout(dropout)]
        layers.append(torch.nn.Linear(hidden_size, 1))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x):                                                       # x: (B, H)
        return self.net(x.to(self.net[-1].weight.dtype)).squeeze(-1)            # (B,)


def prompt_mean_hidden(hidden, prompt_mask):
    """Mean of hidden (B, L, H) over the positions where prompt_mask (B, L) is 1 -> (B, H); 0 for a row
    with none. Not detached: in the authors' code the TB loss also reaches the policy through log Z
    (their detach is commented out); detach the result to train only the head. The authors average
    over the prompt tokens except the last one (their slice [:, :-response_length - 1]); this averages
    over whatever prompt_mask marks, so clear its last prompt position to reproduce theirs.
    """
    valid = (prompt_mask > 0)[..., None]                                        # (B, L, 1)
    s = _where_valid(valid, hidden).sum(1)                                      # (B, H)
    # verl_F.masked_mean(prompts_last_hidden, prompt_attention_mask, axis=1) in the authors' actor
    return s / valid.sum(1).clamp_min(1).to(hidden.dtype)


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
# TRAINING (the torchrun entry point). The recipe, one rollout step on every rank:
#   1. sample_groups   draw this rank's prompts, G responses each (rollout.py), reward them (data.py's
#                      task kinds -> verifier.py); dynamic sampling: drop zero-variance groups, draw more
#   2. build_batch     group advantages (Eq. 5's A, GRPO normalisation) and the flat sample list
#   3. old_logprobs    log pi_old recomputed by the trainer (no grad), TIS weights, rollout mismatch
#   4. update_policy   updates_per_rollout optimiser steps, one per mini-batch, micro-batches accumulated,
#                      a global token-mean denominator, the loss chosen once (LOSSES) before the loop
#   5. push_weights    the new weights into the engine
#   6. reduce_metrics  sums and maxima over ranks by name; rank 0 logs; evaluate; save_checkpoint
# Ranks meet only in all_reduce/all_gather calls, DDP's gradient mean and FSDP2's collectives; `lockstep`
# is the one mechanism that keeps their forward/backward counts equal.
# ----------------------------------------------------------------------------------------------------

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch.distributed as dist  # noqa: E402

import data  # noqa: E402
from common import UsageError, seed_for  # noqa: E402,F401  (UsageError: lad.UsageError for callers)
from common import parse_args as _parse_cli  # noqa: E402


def parse_args(cls=None, argv=None):
    """lad.py's command line (common.parse_args over its Args; bench scripts pass their own Args)."""
    return _parse_cli(cls or Args, argv)



@dataclasses.dataclass
class Args:
    """LAD / GRPO training on the embedded default (tiny Qwen2, built-in 'sum' task) or a real model."""

    CHOICES = {"loss": ["lad", "grpo", "flowrl", "clip-cov", "kl-cov", "entadv"], "flowrl_ref": ["init", "old"],
               "divergence": sorted(DIVERGENCES), "ratio": ["token", "seq"],
               "engine": ["auto", "hf", "vllm"], "wandb": ["disabled", "offline", "online"],
               "chat": ["auto", "true", "false"]}

    loss: str = "lad"
    """objective: lad (paper Eq. 8); the paper's baselines: grpo (DAPO clipped surrogate, clip-higher), flowrl
    (trajectory balance with a learned log Z), clip-cov, kl-cov (Cui et al. 2025), entadv (Cheng et al. 2025)"""
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
    dual_clip: float = 10.0
    """grpo/entadv: dual-clip c (> 1), a negative-advantage token's loss capped at -A c; 0 = off. 10: the
    entropy-mechanism run scripts the paper's protocol follows (clip_ratio_c=10; verl's default is 3)"""
    kl_coef: float = 0.0
    """grpo: k3 KL to the frozen initial policy (verl use_kl_loss, low_var_kl); 0 = off, as DAPO and the paper"""
    flowrl_beta: float = 15.0
    """flowrl: reward scale beta in delta = log Z + mean log pi - beta mean A - mean log pi_ref (authors' 15)"""
    flowrl_ref: str = "init"
    """flowrl: pi_ref = init (the frozen initial policy, the authors' code; one extra no-grad forward) or old
    (pi_old, paper Eq. 18: no extra model)"""
    flowrl_w_cap: float = 0.0
    """flowrl: cap on the importance weight w = exp(sum_t log r); 0 = uncapped, as the authors' code"""
    clip_cov_ratio: float = 2e-4
    """clip-cov: fraction of valid tokens whose loss is removed (verl default; authors' 7b/32b_clip_cov.sh)"""
    clip_cov_lb: float = 1.0
    """clip-cov: lower covariance bound of the eligible tokens (verl default, authors' scripts)"""
    clip_cov_ub: float = 5.0
    """clip-cov: upper covariance bound of the eligible tokens (verl default, authors' scripts)"""
    kl_cov_ratio: float = 2e-3
    """kl-cov: fraction k of valid tokens (top by covariance) that get the penalty (authors' 7b_kl_cov.sh)"""
    kl_cov_coef: float = 1.0
    """kl-cov: coefficient of |log pi - log pi_old| on those tokens (authors' 7b_kl_cov.sh; verl default 0.1)"""
    entadv_alpha: float = 0.4
    """entadv: alpha in A + min(alpha H_t, |A| / kappa) (Cheng et al. 2025's value for GRPO)"""
    entadv_kappa: float = 2.0
    """entadv: kappa in that cap, >= 1 (Cheng et al. 2025's value for GRPO)"""
    model: str = ""
    """HF model folder (or a hub id already in the local cache); empty = the tiny warm-started model"""
    train_data: str = "builtin"
    """'builtin' (tiny.py's 'sum' task), 'builtin-code' (tiny.py's code task: programs run in the sandbox) or a
    .jsonl/.parquet file: math (problem+answer, or DAPO-style prompt messages + reward_model.ground_truth) or
    code (LiveCodeBench/DeepCoder, LeetCode, TACO/APPS, EvalPlus, verl-style rows: README "Code rewards")"""
    eval_data: str = ""
    """held-out file (same formats) for periodic evaluation; empty = the built-in task's heldout split for
    builtin and builtin-code, none otherwise"""
    prompt_template: str = data.TEMPLATES["boxed"]
    """template for file rows with a 'problem' field; {problem} is replaced (built-in prompts are used as is)"""
    chat: str = "auto"
    """wrap prompts in the tokenizer's chat template: auto (when it has one), true, false (eval.py: the same flag)"""
    group_size: int = 8
    """responses per prompt (G; paper App. C.2: 8)"""
    prompts_per_step: int = 16
    """prompts per rollout step over ALL ranks (paper: 256); must be divisible by the world size"""
    updates_per_rollout: int = 4
    """optimiser steps per rollout batch (mini-batches; paper App. C.2: 8)"""
    micro_batch: int = 64
    """responses per forward/backward on one rank (gradient accumulation inside a mini-batch)"""
    max_new_tokens: int = 0
    """response length cap in tokens; 0 = the task's: 12 for builtin (answers <= 8), 32 for builtin-code
    (a fenced print(a+b) is 26), 1024 for files (paper: 8192)"""
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
    """wandb mode: disabled (default), offline (a local run folder under --out, no network), online"""
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
    gpu_memory_utilization: float = 0.4
    """fraction of each GPU vLLM may take while awake (weights + KV cache); it sleeps during updates"""
    tis_cap: float = 0.0
    """truncated IS: scale each token's loss by min(exp(logp_old - logp_engine), C); 0 = off (README: C = 2)"""
    fsdp: bool = False
    """FSDP2 (fully_shard per decoder layer + root): shards over torchrun ranks; bf16 compute with fp32 master
    weights on GPU, also in one process (python lad.py); either engine"""
    activation_checkpointing: bool = False
    """recompute each decoder layer's activations in backward (less memory, about a third more compute)"""
    weak_sandbox: bool = False
    """code rewards without bubblewrap (only the resource limits and audit hook; warns every run): for hosts
    that cannot create user namespaces. Default off: code rewards refuse to run without bubblewrap"""



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
        if v and v not in BUILTIN_TASKS and not Path(v).is_file():
            raise UsageError(f"--{name.replace('_', '-')}: data file not found: {v}")
    if a.vllm_tp < 1 or world % a.vllm_tp:
        raise UsageError(f"--vllm-tp {a.vllm_tp} must be >= 1 and divide the world size {world}")
    if not 0 < a.gpu_memory_utilization < 1:
        raise UsageError(f"--gpu-memory-utilization must be in (0, 1), got {a.gpu_memory_utilization}")
    if a.tis_cap < 0:
        raise UsageError(f"--tis-cap must be >= 0 (0 = off), got {a.tis_cap}")
    if a.train_data not in BUILTIN_TASKS and "{problem}" not in a.prompt_template:
        raise UsageError("--prompt-template must contain {problem}")
    if a.eval_data in BUILTIN_TASKS:
        raise UsageError("--eval-data takes a file; the built-in tasks' heldout split is used when it is empty")
    if a.dual_clip != 0 and not a.dual_clip > 1:
        raise UsageError(f"--dual-clip must be > 1 (dual-clip PPO caps -A r at -A c), or 0 = off; got {a.dual_clip}")
    for name in ("kl_coef", "flowrl_beta", "flowrl_w_cap", "entadv_alpha", "kl_cov_coef"):
        if getattr(a, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    for name in ("clip_cov_ratio", "kl_cov_ratio"):
        if not 0 < getattr(a, name) <= 1:
            raise UsageError(f"--{name.replace('_', '-')} is a fraction of the valid tokens, in (0, 1]; got {getattr(a, name)}")
    if not a.clip_cov_lb < a.clip_cov_ub:
        raise UsageError(f"--clip-cov-lb {a.clip_cov_lb} must be below --clip-cov-ub {a.clip_cov_ub}")
    if a.entadv_kappa < 1:
        raise UsageError(f"--entadv-kappa must be >= 1 (else A + |A|/kappa flips a negative advantage), got {a.entadv_kappa}")
    if a.loss == "flowrl" and a.tis_cap > 0:
        raise UsageError("--tis-cap weighs tokens; FlowRL's loss is per response (its own weight w is the summed "
                         "log ratio to pi_old): use --tis-cap 0 with --loss flowrl")
    if a.loss == "flowrl" and a.fsdp:
        raise UsageError("--loss flowrl with --fsdp true is not supported (the log Z head is outside the sharded "
                         "model's checkpoint); use DDP (--fsdp false) under torchrun")


BUILTIN_TASKS = {"builtin": "sum", "builtin-code": "code"}   # --train-data name -> tiny.py task


def resolve_args(a):
    """The defaults that depend on other flags, filled in once (config.json logs the resolved values).
    --max-new-tokens 0: a built-in task's own limit (data.BUILTIN_NEW_TOKENS), else 1024."""
    task = BUILTIN_TASKS.get(a.train_data)
    return dataclasses.replace(a, max_new_tokens=a.max_new_tokens or data.BUILTIN_NEW_TOKENS.get(task, 1024))


# ----------------------------------------------------------------------------------------------------
# The loss, chosen once: --loss name -> a function (logp, old_logp, adv, mask, *, denom, weights, **needs)
# -> (loss, stats). `needs` names what the loop must hand it beyond that (loss_needs), `unit` what its
# denominator counts (tokens, or responses for FlowRL's per-response loss). Every baseline runs with the
# same lr, batch and steps as LAD; clip-higher 0.2/0.28 applies to every clipped one (paper App. C.2).
# Adding a method: a pure function in the LOSS section, one entry here, its flags in Args.
# ----------------------------------------------------------------------------------------------------

LOSSES = {
    # Eq. 8 with eta = 1/inv_eta; token-mean over the global mini-batch (denom from global_denominators)
    "lad": lambda a, g: functools.partial(lad_loss, divergence=a.divergence, eta=1.0 / a.inv_eta, ratio=a.ratio),
    # DAPO clipped surrogate with clip-higher (paper App. C.2), dual-clip and optional k3 KL as verl
    "grpo": lambda a, g: functools.partial(grpo_loss, clip_low=a.clip_low, clip_high=a.clip_high,
                                           dual_clip=a.dual_clip or None, kl_coef=a.kl_coef),
    # FlowRL trajectory balance (Zhu et al. 2025; paper Eq. 18), per response
    "flowrl": lambda a, g: functools.partial(flowrl_loss, beta=a.flowrl_beta, w_cap=a.flowrl_w_cap or None),
    # Clip-Cov (Cui et al. 2025): PPO clip at --clip-low/--clip-high, a seeded draw of high-cov tokens removed
    "clip-cov": lambda a, g: functools.partial(clip_cov_loss, generator=g, clip_cov_ratio=a.clip_cov_ratio,
                                               cov_lb=a.clip_cov_lb, cov_ub=a.clip_cov_ub,
                                               clip_low=a.clip_low, clip_high=a.clip_high),
    # KL-Cov (Cui et al. 2025): unclipped -A r, |log r| penalty on the top-k tokens by covariance
    "kl-cov": lambda a, g: functools.partial(kl_cov_loss, kl_cov_ratio=a.kl_cov_ratio, kl_coef=a.kl_cov_coef),
    # EntAdv (Cheng et al. 2025): GRPO on A + min(alpha H_t, |A| / kappa)
    "entadv": lambda a, g: functools.partial(entadv_loss, alpha=a.entadv_alpha, kappa=a.entadv_kappa,
                                             clip_low=a.clip_low, clip_high=a.clip_high,
                                             dual_clip=a.dual_clip or None),
}


def loss_needs(args):
    """What update_policy must pass the chosen loss beyond (logp, old, adv, mask, denom, weights):
    entropy (the update forward's, detached), log_z (the LogZHead on the prompt), ref_logp (the frozen
    initial policy's log-probs, phase 3)."""
    return {"entadv": ("entropy",),
            "flowrl": ("log_z",) + (("ref_logp",) if args.flowrl_ref == "init" else ()),
            "grpo": ("ref_logp",) if args.kl_coef > 0 else ()}.get(args.loss, ())


def make_loss(args, generator=None):
    """The loss of --loss with its flags bound. generator: Clip-Cov's draw (the loop passes one per rank
    and checkpoints it); None: a fresh one seeded from --seed."""
    if generator is None:
        generator = torch.Generator().manual_seed(seed_for("clipcov", args.seed))
    fn = LOSSES[args.loss](args, generator)
    fn.needs, fn.unit = loss_needs(args), "response" if args.loss == "flowrl" else "token"
    return fn


# ----------------------------------------------------------------------------------------------------
# Data order and the flat batch
# ----------------------------------------------------------------------------------------------------


def row_for(rank_index, rank, world, n, seed):
    """The data order: an epoch-wise permutation of all rows (seeded), interleaved across ranks, so that
    the whole order is a function of (seed, rank, cursor): resume needs only the cursor."""
    g = rank_index * world + rank
    epoch, pos = divmod(g, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed_for("data", seed, epoch)))
    return int(perm[pos])


# ----------------------------------------------------------------------------------------------------
# Log-probs of response tokens: chunked log-softmax over response positions only
# ----------------------------------------------------------------------------------------------------


class Policy(torch.nn.Module):
    """An HF causal LM whose forward returns log pi(y_t | x, y_<t) and the entropy of each response
    token, computing the LM head and log-softmax chunk by chunk over response positions only, so the
    float32 logits held at once are (logprob_chunk, vocab), never (batch, length, vocab). With grad
    enabled each chunk is checkpointed (its logits are recomputed in backward instead of kept).
    log_z_head: FlowRL's LogZHead, a submodule here so that DDP averages its gradients with the model's
    and the one optimiser trains both (as the authors attach it to the actor)."""

    def __init__(self, lm, chunk, temperature, log_z_head=None):
        super().__init__()
        self.lm, self.chunk, self.temperature = lm, chunk, temperature
        self.log_z_head = log_z_head

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

    def forward(self, ids, attn, pos, tgt, valid, prompt_mask=None):
        """ids/attn (B, L) right-padded prompt+response; pos (B, T) index of the hidden state that
        predicts response token t (prompt_len + t - 1); tgt (B, T) the tokens; valid (B, T) bool.
        Returns logp (B, T), entropy (B, T); with prompt_mask (B, L) also log Z (B,) of log_z_head."""
        hidden = self.lm.base_model(input_ids=ids, attention_mask=attn).last_hidden_state   # (B, L, H)
        log_z = None if prompt_mask is None else self.log_z_head(prompt_mean_hidden(hidden, prompt_mask))
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
        return (logp, ent) if log_z is None else (logp, ent, log_z)


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



def prompt_mask_of(items, L, device):
    """(B, L) 1 at the prompt positions of make_batch's rows (the prompt comes first in each)."""
    plen = torch.tensor([len(p) for p, _ in items], device=device)
    return (torch.arange(L, device=device)[None] < plen[:, None]).float()


def pad_to(rows, T):
    """Stack per-sample (t,) tensors into (B, T): cut or zero-pad each to T."""
    return torch.stack([r[:T] if r.shape[0] >= T else torch.nn.functional.pad(r, (0, T - r.shape[0])) for r in rows])




# ----------------------------------------------------------------------------------------------------
# Rank lock-step (the one mechanism): a phase whose forwards or backwards are collectives (DDP's gradient
# mean, FSDP2's all-gathers) runs the same number of them on every rank -- the maximum over ranks -- and a
# rank short of real work runs filler work that weighs 0. The algorithm's lines then read as one process.
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


def lockstep(counts, device):
    """Per phase (or mini-batch) the number of forwards every rank runs: the max over ranks (one all_reduce)."""
    t = torch.tensor([float(c) for c in counts], dtype=torch.float64, device=device)
    if dist_on():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(x) for x in t.tolist()]


def reduce_metrics(sums: dict, maxes: dict, device):
    """Sums and maxima over ranks, by name: one all_reduce each. Every rank has the same keys (the loss,
    engine and config decide them), so sorted keys line the values up."""
    ks, km = sorted(sums), sorted(maxes)
    s = all_reduce(torch.tensor([float(sums[k]) for k in ks], dtype=torch.float64, device=device))
    m = torch.tensor([float(maxes[k]) for k in km], dtype=torch.float64, device=device)
    if dist_on():
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return dict(zip(ks, s.tolist())), dict(zip(km, m.tolist()))


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
    """FSDP2: each decoder layer is one unit (its all-gather overlaps the previous layer's
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


def save_checkpoint(out, step, lm, tok, opt, cursor, rank, world, args, state=None, rank_state=None):
    """The HF folder, trainer.pt (optimiser, step, args and `state`: the method's extra state, e.g. the log
    Z head, the reference model's path) and rank{r}.pt (cursor, RNGs and `rank_state`, e.g. Clip-Cov's
    generator)."""
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
                    "args": dataclasses.asdict(args), **(state or {})}, ck / "trainer.pt")
    torch.save({"cursor": cursor, "torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None, **(rank_state or {})},
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
# The phases of one rollout step (explicit inputs and outputs; no state kept between calls)
# ----------------------------------------------------------------------------------------------------


def sample_groups(engine, tok, train, cursor, step, args, rank, world, device):
    """Phase 1: G responses for each of this rank's prompts, rewarded, with dynamic sampling (DAPO): groups
    whose rewards are all equal carry no advantage and are dropped; more prompts are drawn, for at most
    max_sample_rounds rounds (agreed across ranks: one all_reduce per round).
    Returns (kept groups [(row, samples, rewards)], a spare dropped group, the new cursor, sums, times)."""
    per_rank, G = args.prompts_per_step // world, args.group_size
    kept, spare = [], None
    sums = dict.fromkeys(("reward", "correct", "responses", "drawn", "dropped", "resp_len", "truncated",
                          "distinct"), 0.0)
    resp_len_max, times = 0, {"rollout": 0.0, "reward": 0.0}
    for rnd in range(args.max_sample_rounds):
        need = per_rank - len(kept) if (rnd == 0 or args.dynamic_sampling) else 0
        if rnd > 0 and lockstep([need], device)[0] == 0:
            break
        if need <= 0:
            continue
        rows = []
        for _ in range(need):
            rows.append(train[row_for(cursor, rank, world, len(train), args.seed)])
            cursor += 1
        t0 = time.perf_counter()
        samples = engine.generate([r["ids"] for r in rows], G, temperature=args.temperature, top_p=args.top_p,
                                  max_new_tokens=args.max_new_tokens, seed=seed_for("rollout", args.seed, step, rank, rnd))
        times["rollout"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        texts = tok.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
        kind = rows[0]["kind"]
        verdicts = data.reward_verdicts(texts, [rows[s.prompt_index]["gold"] for s in samples], kind,
                                        weak_sandbox=args.weak_sandbox)
        rewards = [x for x, _ in verdicts]
        times["reward"] += time.perf_counter() - t0
        if kind == "code":             # every rank has the same keys: all start at 0 (reduce_metrics)
            import sandbox

            for reason in sandbox.REASONS:
                sums[f"code_{reason}"] = sums.get(f"code_{reason}", 0.0) + sum(v == reason for _, v in verdicts)
        sums["drawn"] += len(rows)
        for i, r in enumerate(rows):
            grp, rw, tx = samples[i * G:(i + 1) * G], rewards[i * G:(i + 1) * G], texts[i * G:(i + 1) * G]
            sums["responses"] += G
            sums["reward"] += sum(rw)
            sums["correct"] += sum(x > 0 for x in rw)
            sums["resp_len"] += sum(len(s.response_ids) for s in grp)
            resp_len_max = max(resp_len_max, max(len(s.response_ids) for s in grp))
            sums["truncated"] += sum(s.truncated for s in grp)
            sums["distinct"] += len({data.answer_key(t, kind) for t, x in zip(tx, rw) if x > 0} - {None})
            if args.dynamic_sampling and len(set(rw)) == 1:
                sums["dropped"] += 1
                spare = spare or (r, grp, rw)
            else:
                kept.append((r, grp, rw))
        if not args.dynamic_sampling:
            break
    kept = kept[:per_rank]
    sums["kept"] = len(kept)
    return kept, spare, cursor, sums, {"resp_len_max": resp_len_max}, times


def build_batch(kept, spare, G):
    """Phase 2: GRPO advantages per group (the paper's estimator) and the flat sample list.
    Returns {"items": [(prompt_ids, response_ids)], "adv": [A], "engine_logp": [...], "real": n}; a rank
    that kept nothing trains on one sample of its spare group, weighted 0 (lockstep's filler)."""
    items, adv, eng_lp = [], [], []
    if kept:
        a, _ = group_advantages(torch.tensor([x for _, _, rw in kept for x in rw], dtype=torch.float32), G)
        adv = a.tolist()
        items = [(r["ids"], s.response_ids) for r, grp, _ in kept for s in grp]
        eng_lp = [s.logprobs for _, grp, _ in kept for s in grp]
    real = len(items)
    if not items:
        r, grp, _ = spare
        items, adv, eng_lp = [(r["ids"], grp[0].response_ids)], [0.0], [grp[0].logprobs]
    return {"items": items, "adv": adv, "engine_logp": eng_lp, "real": real}


def old_logprobs(policy, batch, micro_batch, pad_id, device, tis_cap=0.0, autocast=contextlib.nullcontext):
    """Phase 3: log pi_old of every sample, recomputed by the trainer without gradient (as verl), the
    entropy estimate, and -- where the engine returned its own log-probs -- the truncated-IS weights and
    the rollout/trainer mismatch (README "vllm"). Returns (old [(T,)], tis [(T,)] or None, sums, maxes)."""
    import rollout

    items, real = batch["items"], batch["real"]
    eng_lp = batch["engine_logp"]
    with_engine_lp = all(x is not None for x in eng_lp)
    n_real = -(-len(items) // micro_batch)
    (n_fwd,) = lockstep([n_real], device)
    old, tis, sums, maxes = [], [], {"ent": 0.0, "ent_n": 0.0}, {}
    with torch.no_grad(), autocast():
        for j in range(n_fwd):
            lo = j * micro_batch
            if lo >= len(items):           # lockstep filler: a forward whose result is unused
                policy(*make_batch(items[:1], pad_id, device))
                continue
            ids, attn, pos, tgt, valid = make_batch(items[lo:lo + micro_batch], pad_id, device)
            lp, en = policy(ids, attn, pos, tgt, valid)
            lp, en = lp.float(), en.float()
            old += list(lp)
            if with_engine_lp:
                elp = torch.zeros_like(lp)
                for b, x in enumerate(eng_lp[lo:lo + micro_batch]):
                    elp[b, :len(x)] = torch.tensor(x, dtype=torch.float32)
                w_tis, st = rollout.rollout_mismatch(lp, elp, valid.float() * float(lo < real), tis_cap)
                tis += list(w_tis) if w_tis is not None else []
                for k, v in st.items():
                    if k.endswith("_max"):
                        maxes[k] = max(maxes.get(k, 0.0), v)
                    else:
                        sums[k] = sums.get(k, 0.0) + v
            if lo < real:
                sums["ent"] += float(en[valid].sum())
                sums["ent_n"] += int(valid.sum())
    return old, (tis if tis_cap > 0 and tis else None), sums, maxes


def update_policy(fwd, params, opt, batch, old, tis, loss_fn, *, updates_per_rollout, micro_batch, clip_grad,
                  pad_id, device, world, shuffle_seed, no_sync=None, autocast=contextlib.nullcontext, ref=None):
    """Phase 4: updates_per_rollout AdamW steps, each on one mini-batch of a shuffled order, accumulated
    over micro-batches, with a GLOBAL denominator (global_denominators: all ranks and micro-batches of the
    optimiser step) counting what loss_fn.unit says: valid tokens (token-mean), or for FlowRL responses
    with >= 1 token. bench/step_ratio.py and bench/gpu_step.py call this function.
    fwd: the (possibly DDP/FSDP-wrapped) Policy; no_sync: DDP's context for all but the last micro-batch;
    ref: the frozen initial policy's log-probs [(T,)] where loss_fn.needs "ref_logp".
    Returns (sums of the loss stats weighted by sample weight, with "stats_n" their weight and
    "objective_sum" the sum of the micro-batch objectives; the grad norm of each optimiser step)."""
    items, adv, real = batch["items"], batch["adv"], batch["real"]
    needs = getattr(loss_fn, "needs", ())
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
    minis = [order[i::updates_per_rollout] for i in range(updates_per_rollout)]
    per_response = getattr(loss_fn, "unit", "token") == "response"
    lens = [min(len(r), 1) if per_response else len(r) for _, r in items]    # what one sample adds to denom
    scale = 1.0 if real else 0.0       # a rank that kept nothing: all its work is filler
    denoms, global_tokens = global_denominators([float(sum(lens[i] for i in mb)) * scale for mb in minis],
                                                world, device)
    n_micro = lockstep([-(-len(mb) // micro_batch) for mb in minis], device)
    sums, grad_norms = {"stats_n": 0.0, "objective_sum": 0.0}, []
    for u, mb in enumerate(minis):
        if global_tokens[u] == 0:
            continue                   # no rank has a token here: all skip together (same numbers)
        micro = [mb[i:i + micro_batch] for i in range(0, len(mb), micro_batch)]
        for j in range(n_micro[u]):
            real_micro = j < len(micro)
            mi = micro[j] if real_micro else [order[0]]                  # lockstep filler: weight 0
            w = scale if real_micro else 0.0
            last = j == n_micro[u] - 1
            with (contextlib.nullcontext() if last or no_sync is None else no_sync()), autocast():
                ids, attn, pos, tgt, valid = make_batch([items[i] for i in mi], pad_id, device)
                pm = prompt_mask_of([items[i] for i in mi], ids.shape[1], device) if "log_z" in needs else None
                logp, ent, *log_z = fwd(ids, attn, pos, tgt, valid, prompt_mask=pm)         # (B, T) x2 [, (B,)]
                T = logp.shape[1]
                old_lp = pad_to([old[i] for i in mi], T)                                      # (B, T)
                a = torch.tensor([adv[i] for i in mi], dtype=torch.float32, device=device)     # (B,)
                tis_w = None if tis is None else pad_to([tis[i] for i in mi], T)
                given = {"entropy": ent, "log_z": log_z[0].float() if log_z else None,
                         "ref_logp": pad_to([ref[i] for i in mi], T) if "ref_logp" in needs else None}
                loss, st = loss_fn(logp.float(), old_lp, a, valid.float(), denom=denoms[u], weights=tis_w,
                                   **{k: given[k] for k in needs})
                (loss * w).backward()
            for k, v in st.items():           # weighted by w: a filler adds nothing
                if k != "loss/value":
                    sums[k] = sums.get(k, 0.0) + w * float(v)
            sums["stats_n"] += w
            sums["objective_sum"] += w * float(loss.detach())
        gn = torch.nn.utils.clip_grad_norm_(params, clip_grad)
        grad_norms.append(float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn))   # FSDP2: a DTensor
        opt.step()
        opt.zero_grad(set_to_none=True)
    return sums, grad_norms


def push_weights(engine, lm):
    """Phase 5: the new weights into the engine (a no-op for the HF engine sampling from `lm` itself; under
    FSDP it fills its rollout copy). Cast before the gather: bf16 halves the traffic. vLLM wakes after the
    sync, so its KV cache comes back last (README "vllm")."""
    import rollout

    eng_dtype = getattr(engine, "dtype", None)
    engine.sync_weights(rollout.hf_named_tensors(lm, dtype=getattr(torch, eng_dtype) if eng_dtype else None))
    engine.wake()


def step_metrics(s, mx, grad_norms, lr):
    """Phase 6: the logged figures of one step from the reduced sums s and maxima mx (README "Metrics")."""
    m = {"train/reward_mean": s["reward"] / s["responses"], "train/accuracy": s["correct"] / s["responses"],
         "train/distinct_correct": s["distinct"] / s["drawn"],
         "train/entropy": s["ent"] / s["ent_n"] if s["ent_n"] else float("nan"),
         "train/lr": lr, "train/grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else 0.0,
         "rollout/zero_var_frac": s["dropped"] / s["drawn"], "rollout/prompts_drawn": s["drawn"],
         "rollout/groups_kept": s["kept"], "rollout/response_len_mean": s["resp_len"] / s["responses"],
         "rollout/response_len_max": mx["resp_len_max"], "rollout/truncation_rate": s["truncated"] / s["responses"],
         "perf/step_s": mx["step_s"], "perf/tokens_per_s": s["resp_len"] / mx["step_s"]}
    m.update({k: v for k, v in mx.items() if k.startswith("perf/")})
    if s["stats_n"]:
        m.update({k: v / s["stats_n"] for k, v in s.items() if k.startswith("loss/")})
    if grad_norms:                     # each micro-batch loss is already over the global denominator
        m["loss/objective"] = s["objective_sum"] / len(grad_norms)
    if "code_ok" in s:                 # code rewards: each sandbox verdict's share of the step's responses
        import sandbox

        m["rollout/code_pass_rate"] = s["code_ok"] / s["responses"]
        m.update({f"rollout/code_{r}_frac": s[f"code_{r}"] / s["responses"] for r in sandbox.REASONS if r != "ok"})
    if "rollout/tokens" in s:          # rollout/trainer mismatch (README "vllm")
        n_tok = max(s["rollout/tokens"], 1.0)
        m["rollout/logp_diff_mean"] = s["rollout/logp_diff_sum"] / n_tok
        m["rollout/logp_diff_max"] = mx["rollout/logp_diff_max"]
        if "rollout/tis_weight_sum" in s:
            m["rollout/tis_weight_mean"] = s["rollout/tis_weight_sum"] / n_tok
            m["rollout/tis_capped_frac"] = s["rollout/tis_capped"] / n_tok
    return m


def evaluate(engine, rows, args, rank, world, tok, step):
    """Held-out figures (metrics.py: the same functions and names as eval.py's tables) at `step`."""
    import metrics

    mine = rows[rank::world]
    k = args.eval_k
    samples = engine.generate([r["ids"] for r in mine], k, temperature=args.temperature, top_p=args.top_p,
                              max_new_tokens=args.max_new_tokens, seed=seed_for("eval", args.seed, step + 1, rank)) \
        if mine else []
    texts = tok.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
    per = []
    for i, r in enumerate(mine):
        sm, tx = samples[i * k:(i + 1) * k], texts[i * k:(i + 1) * k]
        rw = data.rewards(tx, [r["gold"]] * len(tx), r["kind"], weak_sandbox=args.weak_sandbox)
        per.append([{"reward": float(x), "response": t, "answer": data.answer_key(t, r["kind"]),
                     "num_tokens": len(s.response_ids), "truncated": bool(s.truncated)}
                    for t, x, s in zip(tx, rw, sm)])
    ks = metrics.default_ks(k)
    vals = [metrics.problem_values(p, ks) for part in all_gather_obj(per) for p in part]
    return {**metrics.mean_values(vals), "eval/n": k, "eval/prompts": len(vals)}

# ----------------------------------------------------------------------------------------------------
# Setting up the run: ranks, data (checked before any model is built), model, trainer, state, engine, log
# ----------------------------------------------------------------------------------------------------


def setup_ranks(args):
    """RANK/LOCAL_RANK/WORLD_SIZE from torchrun (one process without it); the process group; threads."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    check_args(args, world)
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    return {"world": world, "rank": rank, "local_rank": local_rank, "local_world": local_world,
            "cuda": cuda, "device": device, "own_group": args.fsdp and world == 1}


def init_process_group(args, rk):
    if not rk["cuda"]:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // rk["local_world"]))
    if rk["world"] > 1 or rk["own_group"]:
        if rk["cuda"]:
            torch.cuda.set_device(rk["device"])
        if rk["own_group"]:
            # fully_shard needs a process group, also of one rank (python lad.py --fsdp true: bf16 compute,
            # fp32 master weights, nothing sharded). Without torchrun there is no MASTER_ADDR; an in-process
            # store needs no port (no race for a free one) and no network.
            dist.init_process_group("nccl" if rk["cuda"] else "gloo", store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group("nccl" if rk["cuda"] else "gloo")
    # every rank must run the same batch geometry; one all_gather, every rank sees the same verdict
    geo = (args.prompts_per_step, args.group_size, args.updates_per_rollout, args.micro_batch, args.steps, args.loss)
    if len(set(all_gather_obj(geo))) != 1:
        raise UsageError(f"incompatible batch settings across ranks: {all_gather_obj(geo)}")


def load_data(args):
    """Train and held-out rows (identical on every rank: a bad file fails on all of them, before any model
    is built or collective run). Returns (train rows, held-out rows or None)."""
    if args.train_data in BUILTIN_TASKS:
        train = data.builtin_rows("train", BUILTIN_TASKS[args.train_data])
        held = data.builtin_rows("heldout", BUILTIN_TASKS[args.train_data]) if not args.eval_data else None
    else:
        train, held = data.load_rows(args.train_data, args.prompt_template), None
    if args.eval_data:
        held = data.load_rows(args.eval_data, args.prompt_template)
    if "code" in {r["kind"] for r in train + (held or [])}:
        import sandbox

        if args.weak_sandbox:
            print("lad.py: WARNING: --weak-sandbox true: model-written programs run WITHOUT bubblewrap (resource "
                  "limits and the audit hook only); do not train on untrusted code like this", file=sys.stderr, flush=True)
        else:
            try:
                sandbox.check_sandbox()            # refuse now, with the fix, not after the warm start
            except sandbox.SandboxUnavailable as e:
                raise UsageError(f"code rewards need the bubblewrap sandbox: {e}") from None
    return train, held


def load_model(args, rk, ckpt):
    """The model path (resume > --model > the tiny default, built once under a file lock, before the thread
    count is cut, so the one rank that builds it uses every core), tokenizer and LM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if ckpt is not None:
        model_path = str(ckpt)
    elif args.model:
        model_path = args.model
    else:
        import tiny

        model_path = tiny.default_model_dir(0, log=print if rk["rank"] == 0 else (lambda *a: None),
                                            task=BUILTIN_TASKS.get(args.train_data, "sum"))
    init_process_group(args, rk)
    if args.model and not Path(args.model).exists() and ckpt is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")                  # no network at run time
    try:
        tok = AutoTokenizer.from_pretrained(model_path)
        lm = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(rk["device"])
    except OSError as e:
        raise UsageError(f"cannot load model {model_path!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model_path, tok, lm


def build_trainer(args, lm, rk):
    """The Policy (log-probs; FlowRL's log Z head inside it), sharded before the optimiser sees its
    parameters (fully_shard swaps them for DTensors), the DDP wrapper (or the Policy itself) and AdamW."""
    head = None
    if "log_z" in loss_needs(args):
        with torch.random.fork_rng(devices=[]):        # the head's init is a function of --seed alone
            torch.manual_seed(seed_for("init", args.seed))
            head = LogZHead(lm.config.hidden_size).to(rk["device"])
    policy = Policy(lm, args.logprob_chunk, args.temperature, log_z_head=head)
    if args.activation_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.fsdp:
        shard_policy(policy, lm, rk["cuda"])
    # one optimiser for the model and the head (the authors train ProjZ with the actor's), model first
    opt = torch.optim.AdamW(list(lm.parameters()) + (list(head.parameters()) if head is not None else []),
                            lr=args.lr, weight_decay=args.weight_decay)
    ddp = torch.nn.parallel.DistributedDataParallel(policy, device_ids=[rk["local_rank"]] if rk["cuda"] else None) \
        if rk["world"] > 1 and not args.fsdp else policy
    return policy, ddp, opt


def load_state(args, ckpt, lm, opt, rk, policy, generator, model_path):
    """Resume (optimiser, step, data cursor, RNG states, the log Z head, Clip-Cov's generator) or a fresh
    start (per-rank seeds) -> (step, cursor, the reference model's path: the run's initial model)."""
    if ckpt is None:
        random.seed(seed_for("init", args.seed, rank=rk["rank"]))
        torch.manual_seed(seed_for("init", args.seed, rank=rk["rank"]))
        return 0, 0, model_path
    st = torch.load(ckpt / "trainer.pt", weights_only=False)
    if st["args"].get("loss", "lad") != args.loss:
        raise UsageError(f"--resume: checkpoint was trained with --loss {st['args'].get('loss')}, not {args.loss}")
    if st["world"] != rk["world"]:
        raise UsageError(f"--resume: checkpoint was written by {st['world']} ranks, this run has {rk['world']}")
    if args.fsdp and not st["args"].get("fsdp", False):
        # its optimiser state is keyed by parameter position; set_optimizer_state_dict needs names
        raise UsageError("--resume: checkpoint was written without --fsdp; resume it with --fsdp false")
    if args.fsdp:                      # a full (gathered) optimiser state, re-sharded on load
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(lm, opt, st["optimizer"], options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(st["optimizer"])
    if policy.log_z_head is not None:
        policy.log_z_head.load_state_dict(st["log_z_head"])
    rs = torch.load(ckpt / f"rank{rk['rank']}.pt", weights_only=False)
    if "clipcov_generator" in rs:
        generator.set_state(rs["clipcov_generator"])
    torch.set_rng_state(rs["torch"])
    random.setstate(rs["python"])
    if rk["cuda"] and rs["cuda"] is not None:
        torch.cuda.set_rng_state_all(rs["cuda"])
    return st["step"], rs["cursor"], st.get("init_model", model_path)


def load_reference(args, rk, path):
    """The frozen initial policy pi_ref (FlowRL's reference, GRPO's KL anchor) from `path`, no gradient;
    None when the loss needs none. Under FSDP it is sharded like the trained model."""
    if "ref_logp" not in loss_needs(args):
        return None
    from transformers import AutoModelForCausalLM

    try:
        ref_lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(rk["device"])
    except OSError as e:
        raise UsageError(f"cannot load the reference (initial) model {path!r}: {str(e).splitlines()[0]}") from None
    ref_lm.requires_grad_(False)
    ref = Policy(ref_lm.eval(), args.logprob_chunk, args.temperature)
    return shard_policy(ref, ref_lm, rk["cuda"]) if args.fsdp else ref


def build_engine(args, lm, tok, model_path, rows, ctx):
    """The rollout engine (rollout.py); --engine auto is resolved here once, so its reason is logged."""
    import rollout

    kind, why = args.engine, ""
    if kind == "auto":
        usable, reason = rollout.vllm_status()
        kind, why = ("vllm" if usable else "hf"), f" (auto: {reason})"
    engine, kind = rollout.make_engine(kind, model=lm, tokenizer=tok, model_path=model_path,
                                       seed=args.seed + int(os.environ.get("RANK", "0")), batch_size=args.gen_batch,
                                       tensor_parallel_size=args.vllm_tp,
                                       gpu_memory_utilization=args.gpu_memory_utilization,
                                       max_model_len=min(ctx, max(len(r["ids"]) for r in rows) + args.max_new_tokens))
    return engine, kind + why


def open_log(out, start, rank, cfg, args):
    """Rank 0's metrics.jsonl (rows past a resumed checkpoint are dropped: each step is logged once) and
    wandb. Returns log(step, metrics)."""
    if rank != 0:
        return lambda step, m: None
    path = Path(out) / "metrics.jsonl"
    if path.exists():                  # a run killed after its checkpoint logged steps it will now redo
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= start]
        path.write_text("".join(ln + "\n" for ln in keep))
    fh = open(path, "a")
    wb = None
    if args.wandb != "disabled":
        import wandb

        wb = wandb.init(project=args.wandb_project, mode=args.wandb, config=cfg, dir=out)

    def log(step, m):
        if m is None:                  # the end of the run
            fh.close()
            if wb is not None:
                wb.finish()
            return
        row = {"step": step, **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}}
        fh.write(json.dumps(row) + "\n")                       # NaN -> null: strict JSON
        fh.flush()
        if wb is not None:
            wb.log(m, step=step)
    return log

# ----------------------------------------------------------------------------------------------------
# main: the recipe of the TRAINING section's opening comment, one named phase per line
# ----------------------------------------------------------------------------------------------------


def main(args):
    import transformers

    transformers.utils.logging.disable_progress_bar()          # our own tqdm bar is the only one
    args = resolve_args(args)
    rk = setup_ranks(args)
    rank, world, device = rk["rank"], rk["world"], rk["device"]
    ckpt = find_checkpoint(args.resume) if args.resume else None
    train, held = load_data(args)                              # bad files fail here, before any model
    model_path, tok, lm = load_model(args, rk, ckpt)
    ctx = getattr(lm.config, "max_position_embeddings", None) or 10 ** 9
    limit = ctx - args.max_new_tokens
    if limit < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} leaves no room in the context ({ctx})")
    train, skipped = data.encode_rows(train, tok, args.chat, limit, args.train_data)
    if held is not None:
        held = data.encode_rows(held, tok, args.chat, limit, args.eval_data or "heldout")[0]
        held = held[:args.eval_prompts] if args.eval_prompts else held
    out = args.out or (str(ckpt.parent) if ckpt is not None else
                       f"runs/{args.loss}{'-' + args.divergence if args.loss == 'lad' else ''}-s{args.seed}-"
                       f"{time.strftime('%Y%m%d-%H%M%S')}")
    out = all_gather_obj(out)[0]                               # rank 0's timestamp for everyone
    Path(out).mkdir(parents=True, exist_ok=True)
    policy, ddp, opt = build_trainer(args, lm, rk)
    clipcov_gen = torch.Generator().manual_seed(seed_for("clipcov", args.seed, rank=rank))   # per rank
    start, cursor, init_model = load_state(args, ckpt, lm, opt, rk, policy, clipcov_gen, model_path)
    ref_policy = load_reference(args, rk, init_model)         # pi_ref: the frozen initial policy, if needed
    engine, engine_kind = build_engine(args, lm, tok, model_path, train + (held or []), ctx)
    cfg = {**dataclasses.asdict(args), "world_size": world, "engine_resolved": engine_kind, "model_path": model_path,
           "out": out, "train_prompts": len(train), "train_prompts_skipped_too_long": skipped,
           "heldout_prompts": len(held) if held else 0, "params": sum(p.numel() for p in lm.parameters()),
           "torch": torch.__version__}
    if rank == 0:
        (Path(out) / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
        print(f"lad.py: {args.loss}{'/' + args.divergence if args.loss == 'lad' else ''}, {world} rank(s), "
              f"engine {engine_kind}, model {model_path} ({cfg['params'] / 1e6:.2f}M params), "
              f"{len(train)} train prompts ({skipped} skipped: longer than {limit} tokens), out {out}", flush=True)
    log = open_log(out, start, rank, cfg, args)
    loss_fn = make_loss(args, clipcov_gen)
    params = list(policy.parameters())                        # the model's and the log Z head's
    do_eval = held is not None and args.eval_every > 0
    if do_eval and start == 0:
        log(0, evaluate(engine, held, args, rank, world, tok, 0))
    bar = progress_bar(rank, start, args.steps)
    for step in range(start, args.steps):
        t_step = time.perf_counter()
        kept, spare, cursor, sums, maxes, times = sample_groups(engine, tok, train, cursor, step, args, rank, world, device)
        engine.sleep()
        batch = build_batch(kept, spare, args.group_size)
        t0 = time.perf_counter()
        old, tis, s_old, m_old = old_logprobs(policy, batch, args.micro_batch, tok.pad_token_id, device, args.tis_cap)
        ref = None if ref_policy is None else old_logprobs(
            ref_policy, {**batch, "engine_logp": [None] * len(batch["items"])}, args.micro_batch, tok.pad_token_id,
            device)[0]
        times["logprob"], t0 = time.perf_counter() - t0, time.perf_counter()
        policy.train()
        s_upd, grad_norms = update_policy(
            ddp, params, opt, batch, old, tis, loss_fn, updates_per_rollout=args.updates_per_rollout,
            micro_batch=args.micro_batch, clip_grad=args.clip_grad, pad_id=tok.pad_token_id, device=device,
            world=world, shuffle_seed=seed_for("shuffle", args.seed, step, rank),
            no_sync=ddp.no_sync if world > 1 and not args.fsdp else None, ref=ref)
        times["update"], t0 = time.perf_counter() - t0, time.perf_counter()
        push_weights(engine, lm)
        times["sync"] = time.perf_counter() - t0
        maxes.update(m_old, step_s=time.perf_counter() - t_step, **{f"perf/{k}_s": v for k, v in times.items()})
        s, mx = reduce_metrics({**sums, **s_old, **s_upd}, maxes, device)
        m = step_metrics(s, mx, grad_norms, opt.param_groups[0]["lr"])
        if do_eval and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            te = time.perf_counter()
            m.update(evaluate(engine, held, args, rank, world, tok, step + 1), **{"perf/eval_s": time.perf_counter() - te})
        log(step + 1, m)
        show_progress(bar, step + 1, m)
        if (args.save_every and (step + 1) % args.save_every == 0) or step + 1 == args.steps:
            save_checkpoint(out, step + 1, lm, tok, opt, cursor, rank, world, args,
                            state={"init_model": init_model, **({"log_z_head": policy.log_z_head.state_dict()}
                                                                if policy.log_z_head is not None else {})},
                            rank_state={"clipcov_generator": clipcov_gen.get_state()})
    finish(bar, log, engine, rk, out)
    return out


def progress_bar(rank, start, steps):
    if rank != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=steps, initial=start, desc="train", dynamic_ncols=True)


def show_progress(bar, step, m):
    if bar is None:
        return
    bar.update(1)
    bar.set_postfix(reward=f"{m['train/reward_mean']:.3f}", zv=f"{m['rollout/zero_var_frac']:.2f}",
                    ent=f"{m['train/entropy']:.2f}", dist=f"{m['train/distinct_correct']:.2f}",
                    s=f"{m['perf/step_s']:.2f}", refresh=False)
    if "eval/avg@n" in m:
        n = m["eval/n"]
        bar.write(f"step {step}: eval avg@{n} {m['eval/avg@n']:.3f}  pass@{n} {m[f'eval/pass@{n}']:.3f}  "
                  f"distinct correct {m['eval/distinct_answers']:.2f}")


def finish(bar, log, engine, rk, out):
    if bar is not None:
        bar.close()
        print(f"done: {out}", flush=True)
    log(None, None)
    if hasattr(engine, "close"):
        engine.close()
    if rk["own_group"] and dist_on():  # the one-rank group main opened (vLLM's close may have done it)
        dist.destroy_process_group()


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
