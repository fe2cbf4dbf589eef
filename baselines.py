"""baselines.py -- the paper's baselines as pure loss functions of tensors, in lad.py's calling convention.

The LAD paper compares against GRPO/DAPO (Sec. 4.2; DAPO's clip-higher and dynamic sampling for every
method, App. C.2), FlowRL (Zhu et al. 2025; LAD's App. B.5 derives it as a special case), and three
entropy-preserving regularisers: Clip-Cov and KL-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for
Reasoning LMs") and EntAdv (Cheng et al. 2025). Each is written from its authors' code (verl's
core_algos.py for GRPO/DAPO/Clip-Cov/KL-Cov; the FlowRL authors' verl fork) and cites it line by line.

Calling convention (the same as lad.lad_loss, so a comparison is one flag of lad.py):
    loss, stats = fn(logp, old_logp, advantages, mask, *, <method knobs>, agg, denom, weights, ...)
    logp, old_logp, mask: (B, T) response tokens, right-padded, mask 1 on valid tokens; advantages (B,)
    or (B, T); denom: the global denominator (lad.py passes the whole mini-batch's); weights: optional
    detached per-token multipliers (truncated IS). Padding may hold NaN/inf: it reaches neither the loss
    nor the gradient. stats: detached scalars under "loss/...".
The knobs of every method are declared once, in BaselineArgs (lad.py's and bandit.py's Args inherit it);
`baseline_loss` binds them for lad.py's loop. Like lad.py's LOSS section, this file needs only torch:
copy it as is.

Commands: none (a module; `python lad.py --loss grpo|flowrl|clip-cov|kl-cov|entadv`, `python bandit.py`).
Deliberately left out: PPO's value function (advantages are GRPO's group-normalised rewards, as in the
paper), verl's other policy losses (GSPO, GPG, ...), a KL term in FlowRL (the authors' actor code has it
commented out).
"""

from __future__ import annotations

import dataclasses
import math

import torch

# Shapes: B = responses in the micro-batch, T = response tokens (right-padded).

LOG_RATIO_CLAMP = 20.0
"""|log r| clamp before exp, as verl's compute_policy_loss_vanilla (float32 safety); lad.py uses the same."""


def _where_valid(valid, x):
    """x where valid, else 0: unlike x * mask, NaN/inf at masked positions reach neither value nor gradient."""
    return torch.where(valid, x, 0.0)


def _reduce(masked, mask, agg, denom):
    """verl's agg_loss of a (B, T) per-token loss already zeroed at padding (see lad.aggregate, the same
    rule; repeated here so that this file needs only torch). token-mean: sum / denom (default: valid
    tokens); seq-mean-token-mean / seq-mean-token-sum: per-response mean / sum, summed over responses /
    denom (default: responses with >= 1 valid token)."""
    if agg == "token-mean":
        if denom is None:
            denom = mask.sum()
            denom = torch.where(denom > 0, denom, torch.ones_like(denom))  # all padding: 0, not 0/0
        return masked.sum() / denom
    seq = masked.sum(-1)                                              # (B,)
    if agg == "seq-mean-token-mean":
        seq = seq / mask.sum(-1).clamp_min(1)
    elif agg != "seq-mean-token-sum":
        raise ValueError(f"unknown agg {agg!r}")
    d = (mask > 0).any(-1).sum().clamp_min(1) if denom is None else denom
    return seq.sum() / d


def _masked_mean(x, mask, n):
    return (_where_valid(mask > 0, x) * mask).sum() / n


# ----------------------------------------------------------------------------------------------------
# GRPO / DAPO, Clip-Cov, KL-Cov, EntAdv (PPO family: one ratio per token)
# ----------------------------------------------------------------------------------------------------

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


def grpo_loss(logp, old_logp, advantages, mask, *, clip_low, clip_high, dual_clip=None,
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


def clip_cov_loss(logp, old_logp, advantages, mask, *, generator, clip_cov_ratio, cov_lb, cov_ub,
                  clip_low, clip_high, agg="token-mean", denom=None, weights=None,
                  log_ratio_clamp=LOG_RATIO_CLAMP, with_stats=True):
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", Sec. 4; verl
    core_algos.compute_policy_loss_clip_cov): the PPO clipped surrogate, except that a few
    high-covariance tokens have their loss and gradient removed.

    Per token cov = (A - mean A)(log pi - mean log pi) over the valid tokens of the micro-batch (log pi
    detached). Eligible: valid tokens with cov_lb < cov < cov_ub whose PPO clipped branch is not already
    active. Of those, max(1, int(clip_cov_ratio * n_valid)) (or all, if fewer) drawn uniformly without
    replacement with `generator` (a torch.Generator, so a resumed run can restore the draw; None uses
    torch's global RNG as verl does) contribute 0 to the loss but stay in the token-mean denominator.
    Knobs (BaselineArgs): clip_cov_ratio 2e-4 and bounds (1, 5), verl's code/config defaults and the
    authors' recipe/entropy/{7b,32b}_clip_cov.sh; the clip is every clipped method's, DAPO's 0.2/0.28, as
    the LAD paper applies it to all baselines (App. C.2). Those scripts use clip_ratio_low/high 1.0/1.0 for
    this method (PPO's lower clip never binds, the upper one at r = 2, so the covariance clip is its main
    trust region): pass clip_low = clip_high = 1.0 to reproduce them.
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


def kl_cov_loss(logp, old_logp, advantages, mask, *, kl_cov_ratio, kl_coef, agg="token-mean",
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


def entropy_advantage(advantages, entropy, mask, *, alpha, kappa):
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


def entadv_loss(logp, old_logp, advantages, mask, entropy, *, alpha, kappa, clip_low,
                clip_high, dual_clip=None, agg="token-mean", denom=None, weights=None,
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


# ----------------------------------------------------------------------------------------------------
# FlowRL (trajectory balance: one term per response) and its learned log Z
# ----------------------------------------------------------------------------------------------------

def flowrl_loss(logp, old_logp, advantages, mask, log_z, *, beta, ref_logp=None, w_cap=None, denom=None,
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




# ----------------------------------------------------------------------------------------------------
# The knobs, declared once (lad.py's and bandit.py's Args inherit these fields and their flags), and the
# binding lad.py's loop calls
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class BaselineArgs:
    """The baselines' knobs. Defaults: the values the paper's protocol implies (DAPO clip-higher for every
    clipped method, App. C.2) and each method's authors' run scripts."""

    clip_low: float = 0.2
    """grpo, entadv, clip-cov: PPO clip epsilon below 1 (DAPO clip-higher recipe, paper App. C.2)"""
    clip_high: float = 0.28
    """grpo, entadv, clip-cov: PPO clip epsilon above 1 (DAPO clip-higher; Clip-Cov's authors use 1.0/1.0)"""
    dual_clip: float = 10.0
    """grpo, entadv: dual-clip c (> 1), a negative-advantage token's loss capped at -A c; 0 = off. 10: the
    entropy-mechanism run scripts the paper's protocol follows (clip_ratio_c=10; verl's default is 3)"""
    kl_coef: float = 0.0
    """grpo: weight of the k3 KL to the frozen initial policy (verl use_kl_loss, low_var_kl); 0 = off, as DAPO"""
    flowrl_beta: float = 15.0
    """flowrl: reward scale beta in delta = log Z + mean log pi - beta mean A - mean log pi_ref (authors' 15)"""
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


BASELINES = ("grpo", "flowrl", "clip-cov", "kl-cov", "entadv")


def check_knobs(a) -> None:
    """ValueError (one line) for knob values the methods' authors' code would refuse or that change a
    method's meaning; `a` is any object with BaselineArgs' fields."""
    if a.dual_clip != 0 and not a.dual_clip > 1:
        raise ValueError(f"--dual-clip must be > 1 (dual-clip PPO caps -A r at -A c), or 0 = off; got {a.dual_clip}")
    for name in ("kl_coef", "flowrl_beta", "flowrl_w_cap", "entadv_alpha", "kl_cov_coef", "clip_low", "clip_high"):
        if not getattr(a, name) >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    for name in ("clip_cov_ratio", "kl_cov_ratio"):
        if not 0 < getattr(a, name) <= 1:
            raise ValueError(f"--{name.replace('_', '-')} is a fraction of the valid tokens, in (0, 1]; got {getattr(a, name)}")
    if not a.clip_cov_lb < a.clip_cov_ub:
        raise ValueError(f"--clip-cov-lb {a.clip_cov_lb} must be below --clip-cov-ub {a.clip_cov_ub}")
    if not a.entadv_kappa >= 1:
        raise ValueError(f"--entadv-kappa must be >= 1 (else A + |A|/kappa flips a negative advantage), got {a.entadv_kappa}")


def baseline_loss(a, logp, old_logp, advantages, mask, *, denom, weights=None, entropy=None, log_z=None,
                  ref_logp=None, generator=None):
    """The loss of --loss a.loss (one of BASELINES) with its knobs from `a` (BaselineArgs' fields).

    denom: the global denominator (tokens; FlowRL: responses). entropy (B, T): the update forward's,
    for EntAdv; log_z (B,): FlowRL's LogZHead; ref_logp (B, T): pi_ref where needs_reference(a);
    generator: Clip-Cov's draw. Every clipped method gets the same clip (paper App. C.2).
    """
    if a.loss == "grpo":
        return grpo_loss(logp, old_logp, advantages, mask, clip_low=a.clip_low, clip_high=a.clip_high,
                         dual_clip=a.dual_clip or None, ref_logp=ref_logp, kl_coef=a.kl_coef, denom=denom,
                         weights=weights)
    if a.loss == "flowrl":
        return flowrl_loss(logp, old_logp, advantages, mask, log_z, beta=a.flowrl_beta, ref_logp=ref_logp,
                           w_cap=a.flowrl_w_cap or None, denom=denom, weights=weights)
    if a.loss == "clip-cov":
        return clip_cov_loss(logp, old_logp, advantages, mask, generator=generator, clip_cov_ratio=a.clip_cov_ratio,
                             cov_lb=a.clip_cov_lb, cov_ub=a.clip_cov_ub, clip_low=a.clip_low,
                             clip_high=a.clip_high, denom=denom, weights=weights)
    if a.loss == "kl-cov":
        return kl_cov_loss(logp, old_logp, advantages, mask, kl_cov_ratio=a.kl_cov_ratio, kl_coef=a.kl_cov_coef,
                           denom=denom, weights=weights)
    if a.loss == "entadv":
        return entadv_loss(logp, old_logp, advantages, mask, entropy, alpha=a.entadv_alpha, kappa=a.entadv_kappa,
                           clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip or None,
                           denom=denom, weights=weights)
    raise ValueError(f"unknown baseline {a.loss!r}; choose from {BASELINES}")
