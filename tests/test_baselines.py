"""Tests of baselines.py: GRPO at verl's edges, Clip-Cov, KL-Cov, EntAdv, FlowRL.

Each loss is checked against its definition written out token by token in Python loops (values, and
gradients through autograd on that loop), plus its selection rules and the NaN/inf-padding guarantee.
"""

import math

import pytest
import torch

import baselines
import lad

F64 = dict(dtype=torch.float64)


# The losses take their knobs as required arguments (their defaults live in baselines.BaselineArgs); these
# bind the values the checks below were written for: each method's authors' own (Clip-Cov: clip 1.0/1.0).
def grpo_loss(*a, clip_low=0.2, clip_high=0.28, **k):
    return baselines.grpo_loss(*a, clip_low=clip_low, clip_high=clip_high, **k)


def clip_cov_loss(*a, clip_cov_ratio=2e-4, cov_lb=1.0, cov_ub=5.0, clip_low=1.0, clip_high=1.0, **k):
    return baselines.clip_cov_loss(*a, clip_cov_ratio=clip_cov_ratio, cov_lb=cov_lb, cov_ub=cov_ub,
                                   clip_low=clip_low, clip_high=clip_high, **k)


def kl_cov_loss(*a, kl_cov_ratio=2e-3, kl_coef=1.0, **k):
    return baselines.kl_cov_loss(*a, kl_cov_ratio=kl_cov_ratio, kl_coef=kl_coef, **k)


def entropy_advantage(*a, alpha=0.4, kappa=2.0, **k):
    return baselines.entropy_advantage(*a, alpha=alpha, kappa=kappa, **k)


def entadv_loss(*a, alpha=0.4, kappa=2.0, clip_low=0.2, clip_high=0.28, **k):
    return baselines.entadv_loss(*a, alpha=alpha, kappa=kappa, clip_low=clip_low, clip_high=clip_high, **k)


def flowrl_loss(*a, beta=15.0, **k):
    return baselines.flowrl_loss(*a, beta=beta, **k)


def batch(B=6, T=9, seed=0, scale=1.0, adv_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    logp = (torch.randn(B, T, generator=g, **F64) * scale).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(B, T, generator=g, **F64)
    adv = torch.randn(B, generator=g, **F64) * adv_scale
    mask = (torch.rand(B, T, generator=g) > 0.25).to(torch.float64)
    mask[:, 0] = 1
    return logp, old, adv, mask


def cells(mask):
    return [(b, t) for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t] > 0]


def grad_of(value, logp):
    (g,) = torch.autograd.grad(value, logp)
    return g


def ppo_token(logp_bt, old_bt, a, lo, hi):
    """max(-A r, -A clip(r, 1-lo, 1+hi)) for one token (scalar tensors), and whether the clip is active."""
    r = torch.exp(logp_bt - old_bt)
    unclipped, clipped = -a * r, -a * min(max(r, 1 - lo), 1 + hi)
    return (clipped if clipped > unclipped else unclipped), bool(clipped > unclipped)


def covs(logp, adv, mask):
    """cov per valid token, (A - mean A)(log pi - mean log pi) over the valid tokens, as plain floats."""
    cs = cells(mask)
    a_mean = sum(float(adv[b]) for b, _ in cs) / len(cs)
    l_mean = sum(float(logp[b, t]) for b, t in cs) / len(cs)
    return {(b, t): (float(adv[b]) - a_mean) * (float(logp[b, t]) - l_mean) for b, t in cs}


# ---- GRPO at verl's edges ---------------------------------------------------------------------------

def test_grpo_k3_uses_verls_clamps_value_and_gradient():
    # tokens with d = ref - logp of 0.5, -1, 3 (k3 = 14.1 > 10: clamped), 25 (d clamped to 20, k3 clamped)
    logp = torch.tensor([[0.0, 0.0, 0.0, 0.0]], **F64, requires_grad=True)
    old = torch.zeros(1, 4, **F64)
    ref = torch.tensor([[0.5, -1.0, 3.0, 25.0]], **F64)
    adv = torch.zeros(1, **F64)                                            # isolate the KL term
    loss, st = grpo_loss(logp, old, adv, torch.ones(1, 4, **F64), ref_logp=ref, kl_coef=0.5)
    k3 = [math.exp(d) - d - 1 for d in (0.5, -1.0)] + [10.0, 10.0]
    assert loss.item() == pytest.approx(0.5 * sum(k3) / 4, rel=1e-12)
    g = grad_of(loss, logp)
    # d k3 / d logp = -(e^d - 1) inside the clamps, 0 where a clamp binds
    assert g[0, :2].tolist() == pytest.approx([-0.5 * (math.exp(d) - 1) / 4 for d in (0.5, -1.0)], rel=1e-12)
    assert g[0, 2] == 0 and g[0, 3] == 0
    assert st["loss/kl_clamp_frac"].item() == 0.5


def test_grpo_tis_weights_scale_the_policy_gradient_only():
    logp, old, adv, mask = batch(seed=1)
    ref = old + 0.2
    w = torch.rand(*old.shape, generator=torch.Generator().manual_seed(3), **F64) + 0.5
    loss, _ = grpo_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.3, weights=w)
    total, n = 0, 0
    for b, t in cells(mask):
        pg, _ = ppo_token(logp[b, t], old[b, t], adv[b], 0.2, 0.28)
        d = ref[b, t] - logp[b, t]
        total = total + w[b, t] * pg + 0.3 * (torch.exp(d) - d - 1)        # the KL term is not weighted
        n += 1
    ref_loss = total / n
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    assert torch.allclose(grad_of(loss, logp), grad_of(ref_loss, logp), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "seq-mean-token-sum"])
def test_sequence_aggregations_average_over_rows_with_a_valid_token(agg):
    per_tok = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], **F64)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]], **F64)          # row 1 has no valid token
    want = (1.5 + 8.0) / 2 if agg == "seq-mean-token-mean" else (3 + 24) / 2
    assert lad.aggregate(per_tok, mask, agg).item() == pytest.approx(want)
    assert lad.aggregate(per_tok, mask, agg, denom=3).item() == pytest.approx(want * 2 / 3)
    # an all-padding micro-batch gives 0, not 0/0
    assert lad.aggregate(per_tok, torch.zeros_like(mask), agg).item() == 0.0
    assert lad.aggregate(per_tok, torch.zeros_like(mask), "token-mean").item() == 0.0


def test_dual_clip_must_exceed_one():
    logp, old, adv, mask = batch()
    with pytest.raises(ValueError):
        grpo_loss(logp, old, adv, mask, dual_clip=1.0)


# ---- NaN / inf in padding, for every loss -----------------------------------------------------------

def _all_losses():
    def ent(shape):
        return torch.rand(*shape, generator=torch.Generator().manual_seed(11), **F64) * 3

    return {
        "lad": lambda p, o, a, m, e, z, w: lad.lad_loss(p, o, a, m, weights=w),
        "lad-seq": lambda p, o, a, m, e, z, w: lad.lad_loss(p, o, a, m, ratio="seq", agg="seq-mean-token-mean"),
        "grpo": lambda p, o, a, m, e, z, w: grpo_loss(p, o, a, m, dual_clip=3.0, ref_logp=o, kl_coef=0.1,
                                                          weights=w),
        "clip-cov": lambda p, o, a, m, e, z, w: clip_cov_loss(
            p, o, a, m, generator=torch.Generator().manual_seed(0), clip_cov_ratio=0.2, cov_lb=-1e9, cov_ub=1e9,
            weights=w),
        "kl-cov": lambda p, o, a, m, e, z, w: kl_cov_loss(p, o, a, m, kl_cov_ratio=0.2, weights=w),
        "entadv": lambda p, o, a, m, e, z, w: entadv_loss(p, o, a, m, e, weights=w),
        "flowrl": lambda p, o, a, m, e, z, w: flowrl_loss(p, o, a, m, z, ref_logp=o),
    }, ent


@pytest.mark.parametrize("name", ["lad", "lad-seq", "grpo", "clip-cov", "kl-cov", "entadv", "flowrl"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_in_padding_gives_the_clean_loss_and_finite_gradients(name, bad):
    losses, ent = _all_losses()
    fn = losses[name]
    logp, old, adv, mask = batch(B=5, T=8, seed=4)
    mask[4] = 0                                                            # a response with no valid token
    e = ent(old.shape)
    w = torch.rand(*old.shape, generator=torch.Generator().manual_seed(5), **F64) + 0.5
    z = torch.randn(5, generator=torch.Generator().manual_seed(6), **F64)
    pad = mask == 0

    def dirty(t):
        t = t.detach().clone()
        t[pad] = bad
        return t

    adv_d = adv.clone()
    adv_d[4] = bad
    z_d = z.clone()
    z_d[4] = bad
    clean, _ = fn(logp, old, adv, mask, e, z, w)
    logp_d = dirty(logp).requires_grad_()
    loss, stats = fn(logp_d, dirty(old), adv_d, mask, dirty(e), z_d, dirty(w))
    g_clean, g = grad_of(clean, logp), grad_of(loss, logp_d)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert all(torch.isfinite(v) for v in stats.values()), stats
    assert (g[pad] == 0).all()
    assert torch.allclose(loss, clean, rtol=1e-12) and torch.allclose(g, g_clean, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("name", ["lad", "lad-seq", "grpo", "clip-cov", "kl-cov", "entadv", "flowrl"])
def test_with_stats_false_gives_the_same_loss_and_gradient_and_no_stats(name):
    losses, ent = _all_losses()
    logp, old, adv, mask = batch(B=5, T=8, seed=9)
    e, z = ent(old.shape), torch.randn(5, generator=torch.Generator().manual_seed(3), **F64)
    w = torch.rand(*old.shape, generator=torch.Generator().manual_seed(2), **F64) + 0.5
    full, stats = losses[name](logp, old, adv, mask, e, z, w)
    module = lad if name.startswith("lad") else baselines
    fn_name = {"lad": "lad_loss", "lad-seq": "lad_loss", "grpo": "grpo_loss", "clip-cov": "clip_cov_loss",
               "kl-cov": "kl_cov_loss", "entadv": "entadv_loss", "flowrl": "flowrl_loss"}[name]
    orig = getattr(module, fn_name)
    try:    # the same call with with_stats=False
        setattr(module, fn_name, lambda *a, **k: orig(*a, **k, with_stats=False))
        bare, none = losses[name](logp, old, adv, mask, e, z, w)
    finally:
        setattr(module, fn_name, orig)
    assert stats and none == {}
    assert torch.equal(full, bare) and torch.equal(grad_of(full, logp), grad_of(bare, logp))


# ---- Clip-Cov ---------------------------------------------------------------------------------------

def _clip_cov_case(seed=7):
    # log pi spread and advantages large enough that many tokens have cov in (1, 5)
    logp, old, adv, mask = batch(B=8, T=12, seed=seed, scale=1.5, adv_scale=1.5)
    return logp, old, adv, mask


def test_clip_cov_removes_only_eligible_unclipped_tokens_and_matches_the_definition():
    logp, old, adv, mask = _clip_cov_case()
    lo = hi = 0.2                                                          # so that PPO clips some tokens
    ratio = 0.05
    loss, st = clip_cov_loss(logp, old, adv, mask, generator=torch.Generator().manual_seed(1),
                                 clip_cov_ratio=ratio, clip_low=lo, clip_high=hi)
    g = grad_of(loss, logp)
    cov = covs(logp.detach(), adv, mask)
    n = len(cov)
    eligible, clipped_any = set(), False
    for (b, t), c in cov.items():
        _, clipped = ppo_token(logp[b, t], old[b, t], adv[b], lo, hi)
        clipped_any |= clipped
        if 1.0 < c < 5.0 and not clipped:
            eligible.add((b, t))
    # removed = valid, unclipped tokens whose gradient vanished (A != 0 everywhere here)
    removed = {(b, t) for (b, t) in cov if g[b, t] == 0 and not ppo_token(logp[b, t], old[b, t], adv[b], lo, hi)[1]}
    want_n = min(max(1, int(ratio * n)), len(eligible))
    assert clipped_any and len(eligible) > want_n > 1                      # every rule is exercised
    assert removed <= eligible and len(removed) == want_n
    assert st["loss/cov_clip_frac"].item() == pytest.approx(want_n / n)
    assert st["loss/cov_eligible_frac"].item() == pytest.approx(len(eligible) / n)
    # the rest is the PPO surrogate; removed tokens stay in the denominator n
    total = sum(ppo_token(logp[b, t], old[b, t], adv[b], lo, hi)[0] for b, t in cov if (b, t) not in removed)
    ref = total / n
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(g, grad_of(ref, logp), rtol=1e-10, atol=1e-15)


def _selection(logp, old, adv, mask, seed, **kw):
    loss, _ = clip_cov_loss(logp, old, adv, mask, generator=torch.Generator().manual_seed(seed), **kw)
    g = grad_of(loss, logp)
    return frozenset(map(tuple, ((g == 0) & (mask > 0)).nonzero().tolist()))


def test_clip_cov_selection_is_uniform_over_eligible_tokens_and_seeded():
    # 2 responses, A = +-1: every token is unclipped at r = 1, and cov = (A - 0)(log pi - mean) is
    # in (1, 5) exactly for the tokens whose log pi sits 1..5 on the advantage's side of the mean
    logp = torch.tensor([[2.0, 3.0, 4.0, 0.5, -0.5, 0.2, 1.5], [-2.0, -3.0, -1.5, 0.4, -0.2, 6.0, -4.5]], **F64)
    logp = (logp - logp.mean()).requires_grad_()
    old = logp.detach().clone()
    adv = torch.tensor([1.0, -1.0], **F64)
    mask = torch.ones(2, 7, **F64)
    cov = covs(logp.detach(), adv, mask)
    eligible = {k for k, c in cov.items() if 1 < c < 5}
    kw = dict(clip_cov_ratio=3 / 14 + 1e-9)                                # int(ratio * 14) = 3 tokens
    assert len(eligible) == 8 and len(cov) - len(eligible) == 6
    counts = {k: 0 for k in cov}
    seen = set()
    runs = 1400
    for seed in range(runs):
        sel = _selection(logp, old, adv, mask, seed, **kw)
        assert len(sel) == 3 and sel <= eligible
        seen.add(sel)
        for k in sel:
            counts[k] += 1
    expected = runs * 3 / 8                                                # each eligible token: 3/8 of the runs
    chi2 = sum((counts[k] - expected) ** 2 / expected for k in eligible)
    assert chi2 < 24.3                                                     # chi-square, 7 dof: p = 0.001
    assert len(seen) == math.comb(8, 3)                                    # every 3-subset occurs
    assert _selection(logp, old, adv, mask, 5, **kw) == _selection(logp, old, adv, mask, 5, **kw)
    # the count: at least one token; all eligible ones when fewer than asked
    assert len(_selection(logp, old, adv, mask, 0, clip_cov_ratio=1e-6)) == 1
    assert _selection(logp, old, adv, mask, 0, clip_cov_ratio=0.9) == eligible


def test_clip_cov_generator_state_is_what_a_resume_restores():
    logp, old, adv, mask = _clip_cov_case(seed=8)
    g = torch.Generator().manual_seed(3)
    clip_cov_loss(logp, old, adv, mask, generator=g, clip_cov_ratio=0.02)
    state = g.get_state()
    a = clip_cov_loss(logp, old, adv, mask, generator=g, clip_cov_ratio=0.02)[0]
    g2 = torch.Generator()
    g2.set_state(state)
    b = clip_cov_loss(logp, old, adv, mask, generator=g2, clip_cov_ratio=0.02)[0]
    assert torch.equal(grad_of(a, logp), grad_of(b, logp))


# ---- KL-Cov -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio,coef", [(2e-3, 1.0), (0.1, 0.5)])
def test_kl_cov_penalises_exactly_the_top_k_tokens_by_covariance(ratio, coef):
    logp, old, adv, mask = batch(B=8, T=12, seed=9, scale=1.5)
    loss, st = kl_cov_loss(logp, old, adv, mask, kl_cov_ratio=ratio, kl_coef=coef)
    cov = covs(logp.detach(), adv, mask)
    n = len(cov)
    k = max(1, int(n * ratio))
    top = set(sorted(cov, key=cov.get, reverse=True)[:k])
    total = 0
    for b, t in cov:
        lr = logp[b, t] - old[b, t]
        total = total - adv[b] * torch.exp(lr)                             # no PPO clip
        if (b, t) in top:
            total = total + coef * lr.abs()
    ref = total / n
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(grad_of(loss, logp), grad_of(ref, logp), rtol=1e-10, atol=1e-15)
    assert st["loss/kl_cov_frac"].item() == pytest.approx(k / n)
    mean_abs = sum(abs(float(logp[b, t].detach() - old[b, t])) for b, t in top) / k
    assert st["loss/kl_cov_abs_log_ratio_mean"].item() == pytest.approx(mean_abs, rel=1e-12)


def test_knob_defaults_are_the_authors_runs():
    d = baselines.BaselineArgs()
    assert (d.kl_cov_ratio, d.kl_cov_coef) == (0.002, 1.0)                # recipe/entropy/7b_kl_cov.sh
    assert (d.clip_cov_ratio, d.clip_cov_lb, d.clip_cov_ub) == (2e-4, 1.0, 5.0)   # verl defaults, 7b/32b_clip_cov.sh
    assert (d.clip_low, d.clip_high, d.dual_clip) == (0.2, 0.28, 10.0)     # DAPO clip-higher for all (App. C.2)
    assert (d.entadv_alpha, d.entadv_kappa, d.flowrl_beta) == (0.4, 2.0, 15.0)


# ---- EntAdv -----------------------------------------------------------------------------------------

def test_entropy_advantage_and_entadv_loss_match_the_definition():
    logp, old, adv, mask = batch(B=6, T=9, seed=12, adv_scale=1.5)
    ent = torch.rand(6, 9, generator=torch.Generator().manual_seed(2), **F64) * 4
    alpha, kappa = 0.4, 2.0
    shaped = entropy_advantage(adv, ent, mask, alpha=alpha, kappa=kappa)
    loss, st = entadv_loss(logp, old, adv, mask, ent, alpha=alpha, kappa=kappa)
    total, capped = 0, 0
    for b, t in cells(mask):
        a = float(adv[b])
        a_e = a + min(alpha * float(ent[b, t]), abs(a) / kappa)           # Cheng et al.'s psi
        assert shaped[b, t].item() == pytest.approx(a_e, rel=1e-12)
        capped += abs(a) / kappa < alpha * float(ent[b, t])
        total = total + ppo_token(logp[b, t], old[b, t], a_e, 0.2, 0.28)[0]
    n = len(cells(mask))
    ref = total / n
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(grad_of(loss, logp), grad_of(ref, logp), rtol=1e-10, atol=1e-15)
    assert 0 < capped < n and st["loss/entadv_bonus_capped_frac"].item() == pytest.approx(capped / n)
    assert (shaped[mask == 0] == 0).all()


def test_entropy_advantage_never_flips_a_negative_advantage():
    g = torch.Generator().manual_seed(13)
    adv = torch.cat([-torch.rand(500, generator=g, **F64) * 5, -torch.rand(500, generator=g, **F64) * 1e-3,
                     torch.zeros(10, **F64), torch.rand(500, generator=g, **F64)])
    ent = torch.rand(adv.shape[0], 3, generator=g, **F64) * 20             # entropies far above |A|
    mask = torch.ones(adv.shape[0], 3, **F64)
    for kappa in (1.0, 2.0, 10.0):
        shaped = entropy_advantage(adv, ent, mask, alpha=0.4, kappa=kappa)
        a = adv[:, None].expand_as(shaped)
        assert (shaped[a < 0] <= 0).all() and (shaped[a == 0] == 0).all() and (shaped >= a).all()
    with pytest.raises(ValueError):
        entropy_advantage(adv, ent, mask, kappa=0.5)                   # could flip: refused


def test_entadv_at_alpha_zero_is_grpo():
    logp, old, adv, mask = batch(seed=14)
    ent = torch.rand(*old.shape, **F64)
    a, _ = entadv_loss(logp, old, adv, mask, ent, alpha=0.0, dual_clip=3.0)
    b, _ = grpo_loss(logp, old, adv, mask, dual_clip=3.0)
    assert torch.equal(a, b) and torch.equal(grad_of(a, logp), grad_of(b, logp))


# ---- FlowRL -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_ref", [False, True])
def test_flowrl_matches_the_authors_objective(with_ref):
    logp, old, adv, mask = batch(B=5, T=7, seed=15, scale=0.5)
    ref_lp = old - 0.4 if with_ref else None
    log_z = torch.randn(5, generator=torch.Generator().manual_seed(1), **F64).requires_grad_()
    loss, st = flowrl_loss(logp, old, adv, mask, log_z, beta=15.0, ref_logp=ref_lp)
    total = 0
    for b in range(5):
        ts = [t for t in range(7) if mask[b, t] > 0]
        ref_row = old if ref_lp is None else ref_lp                        # None: pi_old (Eq. 18)
        mean_lp = sum(logp[b, t] for t in ts) / len(ts)
        delta = log_z[b] + mean_lp - 15.0 * float(adv[b]) - sum(float(ref_row[b, t]) for t in ts) / len(ts)
        w = math.exp(sum(float(logp[b, t].detach() - old[b, t]) for t in ts))      # uncapped, detached
        total = total + w * delta ** 2
    ref = total / 5
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    g, gz = torch.autograd.grad(loss, (logp, log_z))
    g_ref, gz_ref = torch.autograd.grad(ref, (logp, log_z))
    assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-15) and torch.allclose(gz, gz_ref, rtol=1e-10)
    assert st["loss/is_weight_clamp_frac"].item() == 0


def test_flowrl_weight_cap_and_the_overflow_clamp():
    B, T = 4, 600
    logp = torch.full((B, T), 0.2, requires_grad=True)                    # float32, summed log ratio 120
    old = torch.zeros(B, T)
    adv, mask, z = torch.ones(B), torch.ones(B, T), torch.zeros(B)
    loss, st = flowrl_loss(logp, old, adv, mask, z)                   # uncapped: e^120 would be inf
    assert torch.isfinite(loss) and torch.isfinite(grad_of(loss, logp)).all()
    assert st["loss/is_weight_clamp_frac"].item() == 1.0
    assert st["loss/is_weight_mean"].item() == pytest.approx(math.exp(baselines.LOG_RATIO_CLAMP), rel=1e-5)
    _, st = flowrl_loss(logp, old, adv, mask, z, w_cap=10.0)
    assert st["loss/is_weight_mean"].item() == pytest.approx(10.0, rel=1e-6)
    with pytest.raises(ValueError):
        flowrl_loss(logp, old, adv, mask, z, weights=torch.ones(B, T))


def test_flowrl_global_response_denominator_equals_one_big_batch():
    logp, old, adv, mask = batch(B=8, T=6, seed=16, scale=0.3)
    z = torch.randn(8, generator=torch.Generator().manual_seed(2), **F64)
    full, _ = flowrl_loss(logp, old, adv, mask, z)
    parts = sum(flowrl_loss(logp[i:i + 3], old[i:i + 3], adv[i:i + 3], mask[i:i + 3], z[i:i + 3], denom=8)[0]
                for i in range(0, 8, 3))
    assert torch.allclose(full, parts, rtol=1e-12)
    assert torch.allclose(grad_of(full, logp), grad_of(parts, logp), rtol=1e-12)


def test_log_z_head_shapes_and_structure():
    head = baselines.LogZHead(16)
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "GELU", "LayerNorm", "Dropout"] * 2 + ["Linear"]
    assert [m.out_features for m in head.net if isinstance(m, torch.nn.Linear)] == [16, 16, 1]
    assert head.net[3].p == 0.1
    hidden = torch.randn(3, 5, 16)
    pm = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    hidden[pm == 0] = math.nan                                             # padding cannot leak
    pooled = baselines.prompt_mean_hidden(hidden, pm)
    assert pooled.shape == (3, 16) and torch.isfinite(pooled).all()
    assert torch.allclose(pooled[0], hidden[0, :3].mean(0)) and torch.allclose(pooled[1], hidden[1, 0])
    assert head(pooled).shape == (3,)
    assert head(pooled.double()).dtype == torch.float32                    # computed in the head's dtype


def test_flowrl_delta_shrinks_when_log_z_head_and_a_policy_parameter_are_optimised():
    torch.manual_seed(0)
    B, L, T, H = 6, 5, 8, 12
    hidden = torch.randn(B, L, H)                                          # a fixed batch of prompts
    pm = torch.ones(B, L)
    base = -torch.rand(B, T) * 2
    old = base.clone()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.2, -0.8])
    mask = torch.ones(B, T)
    mask[1, 5:] = 0
    head = baselines.LogZHead(H).eval()                                          # dropout off: its noise floors delta
    theta = torch.zeros(B, T, requires_grad=True)                          # the "policy": a per-token shift
    opt = torch.optim.Adam([*head.parameters(), theta], lr=1e-2)
    first = None
    for _ in range(60):
        log_z = head(baselines.prompt_mean_hidden(hidden, pm))
        loss, st = flowrl_loss(base + theta, old, adv, mask, log_z, beta=2.0)
        first = st["loss/tb_delta_abs_mean"].item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 0.5 and st["loss/tb_delta_abs_mean"].item() < 0.05 * first
