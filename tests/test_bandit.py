"""Tests for bandit.py (paper Sec. 4.1): convergence in exact-expectation mode, Eq. 7 vs Eq. 8
(Theorem B.1), the exact-mode weighting built on lad.py's and baselines.py's losses, worker splitting, CLI errors."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bandit  # noqa: E402
import baselines  # noqa: E402
import lad  # noqa: E402

SMOOTH = ["kl", "rkl", "jf", "hd", "js"]  # TV's f = |x - 1| has no derivative at x = 1


def _short(methods, **kw):
    """A short exact-expectation run, one pi_old phase; lr raised so that 300 steps suffice."""
    base = dict(methods=methods, steps=300, exact=True, n_refresh=0, lr=0.05, seeds=1, workers=1,
                progress=False)
    a = bandit.Args(**{**base, **kw})
    return bandit.train(a, bandit.check_args(a))


def test_lad_js_matches_advantage_distribution_exact():
    res = _short("lad-js")
    tv = float(res["metrics"]["train/tv"][0, 0])
    assert tv < 0.1, tv
    assert float(res["metrics"]["train/modes"][0, 0]) == 3


def test_every_divergence_moves_toward_p_a():
    methods = [f"lad-{d}" for d in lad.DIVERGENCES] + ["lad-theory", "flowrl"]
    res = _short(",".join(methods), steps=150)
    tv0 = 0.5 * float((res["p_a"] - 1.0 / 50).abs().sum())    # uniform start: P_pi is uniform
    for i, m in enumerate(methods):
        tv = float(res["metrics"]["train/tv"][i, 0])
        assert tv < 0.75 * tv0, (m, tv, tv0)


def _policies(K, seed, eps_r):
    g = torch.Generator().manual_seed(seed)
    old = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64), -1)
    logp = torch.log_softmax(old + eps_r * torch.randn(K, generator=g, dtype=torch.float64), -1)
    return old, logp


def _practical(logp, old, adv, w, div):
    loss, _ = lad.lad_loss(logp[:, None], old[:, None], adv, w[:, None], divergence=div, eta=1.0, denom=1.0)
    return loss


def test_theory_equals_practical_when_pi_old_uniform():
    # With sum_y e^{A/eta} = K (--adv-const norm) and a uniform pi_old, Z_A = Z_pi = K, so Eq. 7 and
    # the exact expectation of Eq. 8 are the same function of theta: values and gradients agree.
    args = bandit.Args(adv_const="norm")
    adv, _ = bandit.advantage(args)
    K = args.arms
    old = torch.full((K,), -math.log(K), dtype=torch.float64)
    q = old.exp()
    for div in lad.DIVERGENCES:
        theta = torch.randn(K, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        logp = torch.log_softmax(theta, -1)
        th = bandit.lad_theory_per_arm(logp, old, adv, 1.0, div).sum()
        g_th, = torch.autograd.grad(th, theta)
        pr = _practical(torch.log_softmax(theta, -1), old, adv, q, div)
        g_pr, = torch.autograd.grad(pr, theta)
        torch.testing.assert_close(th, pr, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g_th, g_pr, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("div", SMOOTH)
def test_theory_and_practical_agree_to_first_order(div):
    # Theorem B.1: near r = 1 and small A the gap is small. Expanding f around 1, Eq. 7 has no
    # first-order term and Eq. 8's is -f'(1) E_{pi_old}[A/eta], so with A centred under pi_old
    # (as GRPO's advantages are) the gap is O(eps^2): halving eps divides it by ~4. With an
    # uncentred A the gap is first order (halving divides by ~2) exactly when f'(1) != 0 (kl, rkl),
    # which shows the test can tell the two orders apart.
    K = 50
    g = torch.Generator().manual_seed(0)
    a = torch.randn(K, generator=g, dtype=torch.float64)
    fprime1 = float(lad.DIVERGENCES[div](torch.zeros(1, dtype=torch.float64))[1])   # 1 * f'(1)

    def gap(eps, centred):
        old, logp = _policies(K, 3, eps)
        q = old.exp()
        adv = eps * ((a - (q * a).sum()) if centred else (a + 1.0))
        th = bandit.lad_theory_per_arm(logp, old, adv, 1.0, div).sum()
        return abs(float(th - _practical(logp, old, adv, q, div)))

    second, first = (3.3, 4.7), (1.7, 2.3)
    for centred, (lo, hi) in ((True, second), (False, first if abs(fprime1) > 1e-12 else second)):
        ratio = gap(0.02, centred) / gap(0.01, centred)
        assert lo < ratio < hi, (div, centred, ratio)


def test_exact_mode_weighting_of_lad_py_losses():
    # Exact mode passes pi_old as lad_loss/grpo_loss's weights= with denom=1 (a weighted sum) and folds
    # K q into flowrl_loss's importance weight; check both against the sums written out.
    K = 50
    old, logp = _policies(K, 5, 0.3)
    q = torch.softmax(torch.randn(K, dtype=torch.float64, generator=torch.Generator().manual_seed(2)), -1)
    adv, _ = bandit.advantage(bandit.Args())
    for div, fn in lad.DIVERGENCES.items():
        want = (q * (adv.exp() * fn(logp - old - adv)[0])).sum()
        torch.testing.assert_close(_practical(logp, old, adv, q, div), want)
    got, _ = baselines.flowrl_loss(logp[:, None], old[:, None] - (K * q).log()[:, None], adv, torch.ones(K, 1),
                             torch.full((K,), 0.3, dtype=torch.float64), beta=1.0, ref_logp=old[:, None],
                             w_cap=math.inf)
    delta = 0.3 + logp - adv - old
    torch.testing.assert_close(got, (q * (logp - old).exp() * delta ** 2).sum())


def test_workers_give_identical_results():
    a = bandit.Args(methods="grpo,flowrl,lad-js", steps=40, seeds=2, progress=False)
    one = bandit.train(a, bandit.check_args(a))
    two = bandit.run(bandit.Args(**{**a.__dict__, "workers": 2}), bandit.check_args(a))
    torch.testing.assert_close(one["logp"], two["logp"], rtol=0, atol=0)


def test_entropy_baselines_run_deterministic_and_split_independent():
    """clip-cov, kl-cov, entadv (baselines.py's functions on one-token actions): finite metrics, the same result
    in one process and split over two, and a second run of clip-cov reproduces its random draws."""
    a = bandit.Args(methods="clip-cov,kl-cov,entadv,grpo", steps=60, seeds=2, progress=False,
                    clip_cov_ratio=0.2, kl_cov_ratio=0.2, clip_cov_lb=-100.0, clip_cov_ub=100.0)
    one = bandit.train(a, bandit.check_args(a))
    again = bandit.train(a, bandit.check_args(a))
    two = bandit.run(bandit.Args(**{**a.__dict__, "workers": 2}), bandit.check_args(a))
    assert torch.isfinite(one["logp"]).all()
    torch.testing.assert_close(one["logp"], again["logp"], rtol=0, atol=0)
    torch.testing.assert_close(one["logp"], two["logp"], rtol=0, atol=0)
    for i in range(3):          # each baseline's own branch changed the result relative to GRPO's
        assert (one["logp"][i] - one["logp"][3]).abs().max() > 1e-6


def test_clip_cov_draw_depends_on_the_seed_generator(monkeypatch):
    a = bandit.Args(methods="clip-cov", steps=60, seeds=1, progress=False, clip_cov_ratio=0.2,
                    clip_cov_lb=-100.0, clip_cov_ub=100.0, workers=1)
    x = bandit.train(a, ["clip-cov"])["logp"]
    monkeypatch.setattr(bandit, "CLIPCOV_SEED", bandit.CLIPCOV_SEED + 1)
    y = bandit.train(a, ["clip-cov"])["logp"]
    assert (x - y).abs().max() > 0                        # the draw (not only the samples) matters


def test_entadv_in_the_bandit_never_flips_a_negative_advantage():
    adv = torch.tensor([-2.0, -0.1, 0.0, 0.3, 1.5], dtype=torch.float64)
    h = torch.full((5, 1), math.log(50), dtype=torch.float64)               # the uniform start's entropy
    out = baselines.entropy_advantage(adv, h, torch.ones(5, 1, dtype=torch.float64), alpha=0.4, kappa=2.0)[:, 0]
    assert (out[adv < 0] <= 0).all() and out[2] == 0 and (out[adv > 0] >= adv[adv > 0]).all()


def test_adam_step_is_torch_adam():
    a, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    mine = [a.clone().requires_grad_(), b.clone().requires_grad_()]
    ref = [a.clone().requires_grad_(), b.clone().requires_grad_()]
    opt = torch.optim.Adam(ref, lr=5e-3, betas=(0.9, 0.999), eps=1e-8)
    state = {}
    for step in range(30):
        for ps in (mine, ref):
            for p in ps:
                p.grad = None
            loss = (ps[0] ** 2).sum().sin() + (ps[1].exp().sum() if step % 3 else 0)   # b unused every 3rd step
            loss.backward()
        bandit.adam_step(mine, state, 5e-3)
        opt.step()
        if step == 20:                                       # --reset-adam
            state.clear()
            opt.state.clear()
    for x, y in zip(mine, ref):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)
    assert (mine[0] - a).abs().max() > 1e-3


def test_sampled_only_baselines_refuse_exact():
    with pytest.raises(ValueError, match="no --exact version"):
        bandit.check_args(bandit.Args(methods="clip-cov", exact=True))
    assert "clip-cov" not in bandit.check_args(bandit.Args(exact=True))
    assert {"clip-cov", "kl-cov", "entadv"} <= set(bandit.check_args(bandit.Args()))


def test_main_writes_outputs(tmp_path, capsys):
    bandit.main(["--steps", "20", "--seeds", "2", "--out", str(tmp_path), "--progress", "false", "--workers", "1"])
    out = capsys.readouterr().out
    run_dir = Path(out.split("run folder: ")[1].split()[0])
    for name in ("config.json", "results.json", "bandit.png", "bandit_fig2.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert "lad-theory" in out and "grpo" in out


@pytest.mark.parametrize("argv, msg", [
    (["--methods", "lad-foo"], "unknown method"),
    (["--eta", "0"], "--eta must be > 0"),
    (["--eta", "-1"], "--eta must be > 0"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--steps", "-3"], "--steps must be a positive integer"),
])
def test_bad_arguments_exit_with_message(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        bandit.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_bad_argument_from_the_command_line_has_no_traceback():
    p = subprocess.run([sys.executable, str(ROOT / "bandit.py"), "--methods", "grpo,nope"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "unknown method" in p.stderr, p.stderr


def test_side_by_side_reports_a_failed_figure_process():
    def fail():
        raise ValueError("drawing failed on purpose")
    ran = []
    with pytest.raises(RuntimeError, match="fail failed in its process"):
        bandit.side_by_side([(ran.append, 1), (fail,)])
    assert ran == [1]                                                      # the first call runs here
