"""Tests of the LAD loss, the GRPO/DAPO baseline and group advantages (lad.py LOSS section)."""

import functools
import math

import numpy as np
import pytest
import torch

import baselines
import lad

F64 = dict(dtype=torch.float64)

# f and f' of Table 5, written out independently of lad.py (in x, not log x)
F = {
    "kl": (lambda x: x * x.log(), lambda x: x.log() + 1),
    "rkl": (lambda x: -x.log(), lambda x: -1 / x),
    "jf": (lambda x: (x - 1) * x.log(), lambda x: x.log() + 1 - 1 / x),
    "tv": (lambda x: (x - 1).abs(), lambda x: torch.sign(x - 1)),
    "hd": (lambda x: 0.5 * (x.sqrt() - 1) ** 2, lambda x: 0.5 * (1 - x.rsqrt())),
    "js": (lambda x: 0.5 * (x * x.log() - (x + 1) * torch.log((x + 1) / 2)),
           lambda x: 0.5 * torch.log(2 * x / (x + 1))),
}


def rand_batch(B=6, T=9, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    logp = (torch.randn(B, T, generator=g, **F64) * scale).requires_grad_()
    old = torch.randn(B, T, generator=g, **F64) * scale
    adv = torch.randn(B, generator=g, **F64)
    mask = (torch.rand(B, T, generator=g) > 0.2).to(torch.float64)
    mask[:, 0] = 1
    return logp, old, adv, mask


# ---- Eq. 8 and Eq. 9 ------------------------------------------------------------------------------

@pytest.mark.parametrize("div", sorted(lad.DIVERGENCES))
@pytest.mark.parametrize("eta", [0.25, 1.0])
def test_value_and_gradient_match_eq8_eq9(div, eta):
    logp, old, adv, mask = rand_batch()
    loss, _ = lad.lad_loss(logp, old, adv, mask, divergence=div, eta=eta, agg="seq-mean-token-sum", denom=1.0)
    (grad,) = torch.autograd.grad(loss, logp)
    r = (logp - old).detach().exp()
    w = (adv[:, None] / eta).exp()
    x = r / w
    f, fprime = F[div]
    # Eq. 8: sum of e^{A/eta} f(r e^{-A/eta}) over valid tokens
    assert torch.allclose(loss, (w * f(x) * mask).sum(), rtol=1e-12, atol=1e-10)
    # Eq. 9: d loss / d logp = f'(x) * r on valid tokens, 0 on padding
    assert (grad - fprime(x) * r * mask).abs().max() < 1e-10


@pytest.mark.parametrize("div", sorted(lad.DIVERGENCES))
def test_sequence_ratio_gradient_is_eq9_on_the_mean_log_ratio(div):
    logp, old, adv, mask = rand_batch(seed=1)
    eta = 0.5
    loss, _ = lad.lad_loss(logp, old, adv, mask, divergence=div, eta=eta, ratio="seq",
                           agg="seq-mean-token-mean", denom=1.0)
    (grad,) = torch.autograd.grad(loss, logp)
    n = mask.sum(-1)
    log_r = (((logp - old) * mask).sum(-1) / n).detach()                 # length-normalised
    x = (log_r - adv / eta).exp()
    f, fprime = F[div]
    assert torch.allclose(loss, ((adv / eta).exp() * f(x)).sum(), rtol=1e-12)
    expected = (fprime(x) * log_r.exp() / n)[:, None] * mask              # chain rule through the mean
    assert (grad - expected).abs().max() < 1e-10


@pytest.mark.parametrize("div", sorted(lad.DIVERGENCES))
def test_custom_backward_passes_gradcheck(div):
    logp, old, adv, mask = rand_batch(B=3, T=4, seed=2)
    fn = lambda lp: lad.lad_loss(lp, old, adv, mask, divergence=div, eta=0.7)[0]  # noqa: E731
    if div == "tv":  # |x-1| is not differentiable at x = 1; random inputs stay away from it
        assert ((logp - old - adv[:, None] / 0.7).abs() > 1e-3).all()
    assert torch.autograd.gradcheck(fn, (logp,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("div", sorted(lad.DIVERGENCES))
def test_f_of_one_is_zero_and_strict_divergences_have_zero_gradient_at_the_target(div):
    lx = torch.zeros(5, **F64)
    fx, _ = lad.DIVERGENCES[div](lx)
    assert fx.abs().max() == 0
    adv = torch.linspace(-2, 2, 5, **F64)
    eta = 0.5
    logp = (adv / eta)[:, None].clone().requires_grad_()                   # r = e^{A/eta} exactly
    loss, _ = lad.lad_loss(logp, torch.zeros_like(logp), adv, torch.ones_like(logp), divergence=div, eta=eta)
    (grad,) = torch.autograd.grad(loss, logp)
    if div in lad.STRICT_DIVERGENCES:
        assert grad.abs().max() < 1e-12
    # and in general the gradient there is f'(1) * r: nonzero for kl (+1) and rkl (-1), zero for jf
    fprime_1 = F[div][1](torch.ones(1, **F64))
    assert torch.allclose(grad, fprime_1 * logp.detach().exp() / 5, atol=1e-12)  # token-mean of 5


# ---- Lemma 3.2: the practical loss's optimum is pi_old * e^{A/eta} ----------------------------------

def _minimise_exact_expectation(div, old, adv, eta, steps=1500):
    K = old.numel()
    theta = torch.zeros(K, **F64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-5)
    ones = torch.ones(K, 1, **F64)
    for _ in range(steps):
        logp = torch.log_softmax(theta, 0)[:, None]
        # exact expectation over y ~ pi_old: weights pi_old(y), summed (denom 1)
        loss, _ = lad.lad_loss(logp, old.log()[:, None], adv, ones, divergence=div, eta=eta,
                               weights=old[:, None], denom=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return torch.softmax(theta, 0).detach()


@pytest.mark.parametrize("div", sorted(lad.DIVERGENCES))
def test_lemma_3_2_optimum_is_old_policy_tilted_by_advantage(div):
    g = torch.Generator().manual_seed(3)
    old = torch.softmax(torch.randn(10, generator=g, **F64), 0)
    adv = torch.randn(10, generator=g, **F64)
    eta = 1.0
    if div == "tv":
        # f' of TV is a step, not strictly increasing, so Lemma 3.2's proof needs more: the minimiser
        # is unique only when sum_y pi_old e^{A/eta} = 1 (else any p <= or >= the weights is optimal).
        # Shift A by eta * log Z to make it so; see README "Numerics and caveats".
        adv = adv - eta * torch.log((old * (adv / eta).exp()).sum())
    target = old * (adv / eta).exp()
    target = target / target.sum()
    p = _minimise_exact_expectation(div, old, adv, eta)
    assert 0.5 * (p - target).abs().sum() < 1e-4


def test_tv_minimiser_is_not_unique_without_normalised_weights():
    # The honest caveat behind the shift above: with Z = sum pi_old e^{A/eta} > 1 the TV loss is
    # already at its minimum Z - 1 for a p that is NOT proportional to the weights.
    old = torch.full((4,), 0.25, **F64)
    adv = torch.log(torch.tensor([2.0, 1.0, 1.0, 1.0], **F64))                # weights q = (.5,.25,.25,.25), Z = 1.25
    q = old * adv.exp()
    p_prop = q / q.sum()
    p_other = torch.tensor([0.25, 0.25, 0.25, 0.25], **F64)                 # p <= q elementwise
    val = lambda p: lad.lad_loss(p.log()[:, None], old.log()[:, None], adv, torch.ones(4, 1, **F64),  # noqa: E731
                                 divergence="tv", eta=1.0, weights=old[:, None], denom=1.0)[0]
    assert math.isclose(val(p_prop).item(), 0.25, rel_tol=1e-12)
    assert math.isclose(val(p_other).item(), 0.25, rel_tol=1e-12)


# ---- numerics: extreme inputs, padding -------------------------------------------------------------

@pytest.mark.parametrize("div", sorted(lad.DIVERGENCES))
@pytest.mark.parametrize("ratio", ["token", "seq"])
def test_extreme_inputs_stay_finite_in_float32(div, ratio):
    g = torch.Generator().manual_seed(4)
    B, T = 32, 64
    logp = (torch.rand(B, T, generator=g) * 100 - 50).requires_grad_()     # |log r| up to 50
    old = torch.zeros(B, T)
    adv = torch.rand(B, generator=g) * 20 - 10                              # |A| up to 10
    adv[0], adv[1] = 10.0, -10.0
    mask = torch.ones(B, T)
    loss, stats = lad.lad_loss(logp, old, adv, mask, divergence=div, eta=1 / 32, ratio=ratio)  # 1/eta = 32
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert all(torch.isfinite(v) for v in stats.values())
    assert stats["loss/weight_clamp_frac"] > 0.5                           # |A|/eta > 30 on most rows


def test_clamps_are_reported_and_zero_the_gradient_only_where_documented():
    logp = torch.tensor([[25.0, 1.0, -25.0]], **F64, requires_grad=True)
    old = torch.zeros(1, 3, **F64)
    adv = torch.tensor([40.0], **F64)                                      # A/eta = 40 > MAX_LOG_WEIGHT
    loss, st = lad.lad_loss(logp, old, adv, torch.ones(1, 3, **F64), divergence="js", eta=1.0)
    (grad,) = torch.autograd.grad(loss, logp)
    assert st["loss/weight_clamp_frac"] == 1.0
    assert math.isclose(st["loss/log_ratio_clamp_frac"].item(), 2 / 3)
    assert grad[0, 0] == 0 and grad[0, 2] == 0 and grad[0, 1] != 0         # |log r| > 20: no gradient
    x = math.exp(1.0 - lad.MAX_LOG_WEIGHT)                                  # weight clamped to e^30
    assert math.isclose(grad[0, 1].item(), 0.5 * math.log(2 * x / (x + 1)) * math.e / 3, rel_tol=1e-10)


@pytest.mark.parametrize("div", sorted(lad.DIVERGENCES))
def test_fused_log_ratio_clamp_has_torch_clamps_gradient(div):
    # the clamp lives inside the fused per-token loss; its gradient must be torch.clamp's (1 on the
    # closed interval [-20, 20], 0 outside), the bounds themselves included
    c = lad.LOG_RATIO_CLAMP
    log_r = torch.tensor([[-25.0, -c, -19.5, -1.0, 0.3, 19.5, c, 25.0]], **F64, requires_grad=True)
    u = torch.tensor([[0.2, -0.4, 0.1, 0.7, -0.3, 0.5, -0.2, 0.4]], **F64)
    got = lad._LADTokenLoss.apply(log_r, u, lad.DIVERGENCES[div], c)
    (g_got,) = torch.autograd.grad(got.sum(), log_r)
    lr = log_r.detach().clone().requires_grad_()
    fx, _ = lad.DIVERGENCES[div](lr.clamp(-c, c) - u)
    want = u.exp() * fx                                                    # Eq. 8 integrand, autograd's gradient
    (g_want,) = torch.autograd.grad(want.sum(), lr)
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    # rtol 1e-7: near r = e^20, autograd's derivative of js's and tv's f loses ~1e-9 to cancellation
    assert torch.allclose(g_got, g_want, rtol=1e-7, atol=1e-12)
    assert g_got[0, 0] == 0 and g_got[0, -1] == 0 and (g_got[0, 1:-1] != 0).all()


@pytest.mark.parametrize("div", sorted(lad.DIVERGENCES))
def test_padding_changes_nothing(div):
    logp, old, adv, mask = rand_batch(seed=5)
    logp2 = logp.detach().clone()
    logp2[mask == 0] = 37.0                                                # garbage in padding
    logp2.requires_grad_()
    old2 = old.clone()
    old2[mask == 0] = -41.0
    l1, s1 = lad.lad_loss(logp, old, adv, mask, divergence=div)
    l2, s2 = lad.lad_loss(logp2, old2, adv, mask, divergence=div)
    (g1,) = torch.autograd.grad(l1, logp)
    (g2,) = torch.autograd.grad(l2, logp2)
    assert torch.allclose(l1, l2, rtol=1e-14) and torch.equal(g1, g2)
    assert (g2[mask == 0] == 0).all()
    for k in s1:
        if k != "loss/log_ratio_clamp_frac":
            assert torch.allclose(s1[k], s2[k]), k


@pytest.mark.parametrize("agg", lad.AGGREGATIONS)
@pytest.mark.parametrize("ratio", ["token", "seq"])
def test_results_do_not_depend_on_padding_length(agg, ratio):
    logp, old, adv, mask = rand_batch(seed=6)
    pad = lambda t, v: torch.cat([t.detach(), torch.full((t.shape[0], 13), v, **F64)], 1)  # noqa: E731
    logp_p = pad(logp, 3.0).requires_grad_()
    l1, _ = lad.lad_loss(logp, old, adv, mask, agg=agg, ratio=ratio)
    l2, _ = lad.lad_loss(logp_p, pad(old, -2.0), adv, pad(mask, 0.0), agg=agg, ratio=ratio)
    (g1,) = torch.autograd.grad(l1, logp)
    (g2,) = torch.autograd.grad(l2, logp_p)
    assert torch.allclose(l1, l2, rtol=1e-13)
    assert torch.allclose(g1, g2[:, :9], rtol=1e-12) and (g2[:, 9:] == 0).all()


# ---- aggregation and the global denominator --------------------------------------------------------

def test_aggregations_match_hand_computed_values():
    per_tok = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], **F64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], **F64)
    assert lad.aggregate(per_tok, mask, "token-mean").item() == pytest.approx((1 + 2 + 4 + 5 + 6) / 5)
    assert lad.aggregate(per_tok, mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 5.0) / 2)
    assert lad.aggregate(per_tok, mask, "seq-mean-token-sum").item() == pytest.approx((3 + 15) / 2)
    assert lad.aggregate(per_tok, mask, "token-mean", denom=10).item() == pytest.approx(18 / 10)
    with pytest.raises(ValueError):
        lad.aggregate(per_tok, mask, "token-sum")


@pytest.mark.parametrize("loss_name", ["lad", "grpo"])
@pytest.mark.parametrize("agg", lad.AGGREGATIONS)
def test_micro_batches_with_the_global_denominator_equal_one_big_batch(loss_name, agg):
    logp, old, adv, mask = rand_batch(B=8, T=11, seed=7)
    fn = lad.lad_loss if loss_name == "lad" else functools.partial(baselines.grpo_loss, clip_low=0.2, clip_high=0.28)
    full, _ = fn(logp, old, adv, mask, agg=agg)
    (g_full,) = torch.autograd.grad(full, logp)
    # the denominator is computed once for the whole step: valid tokens, or sequences
    denom = mask.sum() if agg == "token-mean" else mask.shape[0]
    total = sum(fn(logp[i:i + 3], old[i:i + 3], adv[i:i + 3], mask[i:i + 3], agg=agg, denom=denom)[0]
                for i in range(0, 8, 3))
    (g_mb,) = torch.autograd.grad(total, logp)
    assert torch.allclose(full, total, rtol=1e-12) and torch.allclose(g_full, g_mb, rtol=1e-12)


def test_unknown_names_raise():
    logp, old, adv, mask = rand_batch()
    for kw in [dict(divergence="hellinger"), dict(ratio="sequence"), dict(eta=0.0), dict(agg="mean")]:
        with pytest.raises(ValueError):
            lad.lad_loss(logp, old, adv, mask, **kw)


# ---- GRPO / DAPO -----------------------------------------------------------------------------------

def _grpo_reference(logp, old, adv, mask, lo, hi, c):
    """Direct per-element implementation of the clipped objective (numpy, no vectorised max/min)."""
    lp, od, m = logp.detach().numpy(), old.numpy(), mask.numpy()
    total, clipped, n = 0.0, 0, 0
    for b in range(lp.shape[0]):
        a = adv[b].item()
        for t in range(lp.shape[1]):
            if not m[b, t]:
                continue
            r = math.exp(lp[b, t] - od[b, t])
            unclipped = -a * r
            clipped_obj = -a * min(max(r, 1 - lo), 1 + hi)
            val = max(unclipped, clipped_obj)
            if c is not None and a < 0:
                val = min(val, -a * c)
            clipped += clipped_obj > unclipped
            total += val
            n += 1
    return total / n, clipped / n


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_grpo_loss_matches_direct_clipped_objective(dual_clip):
    logp, old, adv, mask = rand_batch(B=10, T=12, seed=8, scale=0.5)
    adv = adv * 2
    loss, st = baselines.grpo_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=dual_clip)
    ref, clip_frac = _grpo_reference(logp, old, adv, mask, 0.2, 0.28, dual_clip)
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    assert st["loss/clip_frac"].item() == pytest.approx(clip_frac)
    assert 0 < clip_frac < 1                                                # the case is exercised
    assert st["loss/clip_frac"].item() == pytest.approx(
        st["loss/clip_frac_high"].item() + st["loss/clip_frac_low"].item())
    # which tokens count as clipped: exactly those with zero gradient from the PPO term
    (grad,) = torch.autograd.grad(loss, logp)
    r = (logp - old).detach().exp()
    a = adv[:, None].expand_as(r)
    clipped = ((a > 0) & (r > 1.28)) | ((a < 0) & (r < 0.8))
    if dual_clip is not None:
        clipped = clipped | ((a < 0) & (r > dual_clip))
    assert ((grad == 0) == (clipped | (mask == 0))).all()


def test_grpo_k3_kl_term():
    logp, old, adv, mask = rand_batch(seed=9)
    # seeded (torch.randn_like drew from the global RNG, so whether the clamp was hit depended on test order)
    ref = 2.0 * torch.randn(old.shape, generator=torch.Generator().manual_seed(19), **F64)
    base, _ = baselines.grpo_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    with_kl, st = baselines.grpo_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, ref_logp=ref, kl_coef=0.1)
    d = ref - logp.detach()
    k3_tok = (d.exp() - d - 1).clamp(max=10.0)                             # verl low_var_kl clamps k3 to 10
    assert ((k3_tok == 10.0) & (mask > 0)).any()                           # the clamp is exercised here
    k3 = (k3_tok * mask).sum() / mask.sum()
    assert with_kl.item() == pytest.approx(base.item() + 0.1 * k3.item(), rel=1e-12)
    assert st["loss/kl_mean"].item() == pytest.approx(k3.item(), rel=1e-12)


# ---- group advantages ------------------------------------------------------------------------------

@pytest.mark.parametrize("std_normalize", [True, False])
def test_group_advantages_match_numpy(std_normalize):
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0.5, 0, 1, 0.25], dtype=torch.float32)
    adv, degenerate = lad.group_advantages(rewards, 4, std_normalize=std_normalize)
    r = rewards.numpy().astype(np.float64).reshape(-1, 4)
    exp = r - r.mean(1, keepdims=True)
    if std_normalize:
        exp = exp / (r.std(1, ddof=1, keepdims=True) + 1e-6)
    exp[np.all(r == r[:, :1], axis=1)] = 0
    assert np.allclose(adv.numpy(), exp.reshape(-1), atol=1e-6)
    assert degenerate.tolist() == [False, True, True, False]


def test_group_advantages_group_of_one_is_zero_and_degenerate():
    adv, degenerate = lad.group_advantages(torch.tensor([1.0, 0.0, 0.5]), 1)
    assert (adv == 0).all() and degenerate.all()
