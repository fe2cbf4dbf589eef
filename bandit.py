"""bandit.py -- the LAD paper's controlled 50-arm bandit (Li & Li 2026, Sec. 4.1, Figures 1 and 2).

A policy pi_theta = softmax(theta / T) over K = 50 arms (theta: a 1 x 50 logit vector) is trained
against a known advantage A(y) whose induced distribution P_A (Eq. 5) has three modes. Every method
trains from the same uniform start with the same samples, vectorised over methods and seeds, and we
measure how well the policy-induced distribution P_pi = (pi_theta / pi_old) / Z_pi (Eq. 4) matches
P_A. Methods (--methods, comma-separated, or "all"):

    grpo         PPO clipped surrogate on group-normalised advantages + KL(pi || pi_old), weight 1
                 (baselines.grpo_loss); with eta = 1 its exact optimum is LAD's, pi* ~ pi_old e^{A/eta}.
    flowrl       trajectory balance with a learned log Z (baselines.flowrl_loss; Appendix B.5, Eq. 18).
    clip-cov     Cui et al. 2025 (baselines.clip_cov_loss): PPO clip on GRPO's advantages; per seed, of the 32
                 samples with cov = (A - mean A)(log pi - mean log pi) in (1, 5) and not clipped,
                 max(1, 2e-4 * 32) = 1 drawn by a seeded generator loses its loss. Sampling only.
    kl-cov       Cui et al. 2025 (baselines.kl_cov_loss): -A r, + |log r| on the top max(1, 2e-3 * 32) = 1
                 sample by cov per seed. Sampling only.
    entadv       Cheng et al. 2025 (baselines.entadv_loss): GRPO clip on A + min(0.4 H, |A| / 2), H the
                 policy's entropy over the 50 arms (the same for every sample of a seed).
                 These three get no KL term (GRPO's KL(pi || pi_old) is GRPO's own recipe here).
    lad-<f>      practical LAD (Eq. 8, lad.lad_loss) for f in kl rkl jf tv hd js (Table 5).
    lad-theory   theoretical LAD (Eq. 7) with exact normalisers Z_A and Z_pi over all 50 arms,
                 divergence --theory-div (f from lad.DIVERGENCES).

The construction (the paper gives only its outline; every choice below is an Args field):
    P_A(y) ~ sum_m w_m N(y; mu_m, sigma_m^2), y = 0..K-1, normalised over the arms; modes at
      arms 10, 25, 40 with weights 0.5, 0.3, 0.2 and sigma 3 (three modes of different heights).
    A(y) = eta * (log P_A(y) - c); by default c = mean_y log P_A(y), so A has mean 0 under the
      uniform start (an advantage is relative to the behaviour policy). --adv-const norm instead
      picks c with sum_y e^{A/eta} = K, for which Eq. 7 and Eq. 8 coincide while pi_old is uniform.
    Temperature: pi_old is sampled at T = 1.5 and, as in verl, log-probs of pi_theta and pi_old are
      taken at the same T, so the sampler *is* pi_old and "the policy" means softmax(theta / T).
    Steps: one Adam step (adam_step: torch.optim.Adam's update; betas 0.9/0.999, eps 1e-8, no weight
      decay, lr 5e-3) per batch of 32 arms drawn from pi_old; pi_old <- pi_theta twice, after 1/3 and
      2/3 of the steps (Adam state kept; --reset-adam clears it at each refresh).
    Advantages: LAD, lad-theory and FlowRL (beta = 1/eta, Eq. 18) see A itself; GRPO sees its own
      recipe, (A - mean) / std over the 32 samples (lad.group_advantages; exact mode: under pi_old).
      GRPO's KL(pi || pi_old) is summed exactly over the arms (--grpo-kl k3: verl's sampled k3).
    Exact mode (--exact): no sampling; every expectation over pi_old is a sum over the 50 arms.
    Seeds share their random numbers across methods (common random numbers): seed s of every
      method sees the same uniforms, so differences between methods are not sampling luck.
    Methods are split over --workers processes (default 2); results do not depend on the split.

Commands (CPU only: there is no GPU path, the tensors are 9 x 5 x 50; no torchrun):
    python bandit.py                                   # all methods, paper settings, 5 seeds
    python bandit.py --methods grpo,lad-js,lad-theory --seeds 1
    python bandit.py --exact                           # exact expectations instead of 32 samples
    python bandit.py --ablation                        # which GRPO ingredient produces the collapse
Outputs go to runs/bandit/<time>/ (printed): config.json, results.json, bandit.png (Figure 1),
bandit_fig2.png (Figure 2), ablation.json with --ablation.

Deliberately left out: contexts / prompts (one state, as in the paper), entropy bonuses, learning-rate
schedules, gradient-norm clipping, a GPU path. Findings (GRPO does not collapse under the paper's
stated settings; what does collapse it) are in docs/bandit.md.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

import baselines
import lad
from baselines import BaselineArgs
from common import parse_args as parse_cli


@dataclass
class Args(BaselineArgs):
    """The paper's 50-arm bandit (see the module docstring); the baselines' knobs are baselines.BaselineArgs',
    five of them with this experiment's own defaults (redeclared below)."""

    DEPRECATED_FLAGS = {"grpo_clip_low": "clip_low", "grpo_clip_high": "clip_high", "grpo_kl_coef": "kl_coef"}

    methods: str = "all"
    """comma-separated methods: grpo, flowrl, clip-cov, kl-cov, entadv, lad-{kl,rkl,jf,tv,hd,js}, lad-theory; or all"""
    arms: int = 50
    """number of arms K (paper: 50)"""
    steps: int = 4000
    """optimiser steps (paper: 4000)"""
    batch: int = 32
    """arms sampled from pi_old per step (paper: 32)"""
    temperature: float = 1.5
    """sampling temperature T of pi_old (paper: 1.5)"""
    score_at_temperature: bool = True
    """log-probs of pi_theta and pi_old at T too (verl); off: scored at T = 1, sampled at T, no correction"""
    n_refresh: int = 2
    """times pi_old <- pi_theta, evenly spaced (paper: twice)"""
    lr: float = 5e-3
    """Adam learning rate (paper: 5e-3; the optimiser is our choice)"""
    reset_adam: bool = False
    """clear Adam's moment estimates whenever pi_old is refreshed"""
    eta: float = 1.0
    """eta, temperature of the advantage distribution P_A ~ e^{A/eta} (Eq. 5; paper: 1)"""
    seeds: int = 5
    """independent runs per method (seed, seed+1, ...)"""
    seed: int = 0
    """first seed"""
    exact: bool = False
    """exact expectations over pi_old (sum over all arms) instead of sampling"""
    mode_centers: str = "10,25,40"
    """arm index of the three Gaussian modes of P_A"""
    mode_stds: str = "3,3,3"
    """standard deviation of each mode, in arms"""
    mode_weights: str = "0.5,0.3,0.2"
    """mixture weight of each mode (different heights)"""
    adv_const: str = "mean"
    """constant c in A = eta (log P_A - c): mean (A has mean 0 over arms) or norm (sum e^{A/eta} = K)"""
    theory_div: str = "js"
    """divergence f of lad-theory and of the Figure 2 landscape (Table 5)"""
    clip_high: float = 0.2
    """GRPO, Clip-Cov, EntAdv: ratio clip above, 1 + eps (PPO's symmetric 0.2, paper App. B.4; DAPO: 0.28); inf disables"""
    dual_clip: float = 0.0
    """GRPO, EntAdv: dual-clip c; 0 = off (the paper's bandit GRPO is plain PPO-clip + KL)"""
    grpo_adv: str = "group"
    """GRPO advantage: group ((A - mean) / std over the 32 samples, GRPO) or raw (A itself)"""
    grpo_kl: str = "exact"
    """GRPO KL(pi || pi_old): exact (sum over arms), k3 (verl low_var_kl on the samples) or none"""
    kl_coef: float = 1.0
    """GRPO: weight of its KL(pi || pi_old) term (paper: 1, so that its optimum equals LAD's)"""
    flowrl_beta: float = 0.0
    """FlowRL's beta multiplying A; 0 means 1/eta (Eq. 18; FlowRL's LLM default is 15)"""
    flowrl_w_cap: float = 10.0
    """FlowRL's cap on the importance weight pi / pi_old (FlowRL's default; 0 = uncapped)"""
    out: str = "runs/bandit"
    """parent folder of the run folder"""
    fig2: bool = True
    """also draw Figure 2 (trajectories on the practical-LAD loss landscape)"""
    ablation: bool = False
    """run the GRPO ablation (which ingredient collapses it) instead of the method comparison"""
    workers: int = 2
    """processes; methods are split among them (results are identical to 1 process)"""
    threads: int = 1
    """torch CPU threads per process (the tensors are tiny: 1 is fastest)"""
    progress: bool = True
    """show a tqdm progress bar"""


def score_t(args: Args) -> float:
    """Temperature at which log pi_theta and log pi_old are scored."""
    return args.temperature if args.score_at_temperature else 1.0


METHODS = (["grpo", "flowrl", "clip-cov", "kl-cov", "entadv"] + [f"lad-{d}" for d in lad.DIVERGENCES]
           + ["lad-theory"])
SAMPLED_ONLY = ("clip-cov", "kl-cov")     # they select among the drawn samples: no --exact version
CLIPCOV_SEED = 10_000                      # Clip-Cov's generator of seed s: CLIPCOV_SEED + --seed + s
CAN_FORK = "fork" in mp.get_all_start_methods()   # workers and the second figure are forked; else one process


# ----------------------------------------------------------------------------------------------------
# CLI: common.parse_args (the flags of every script: --flag true|false for booleans)
# ----------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> Args:
    return parse_cli(Args, argv, prog="bandit.py")


def _floats(s, name):
    try:
        return [float(v) for v in s.split(",")]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {s!r}") from None


def check_args(args: Args) -> list[str]:
    """Validate args; return the method list. Raises ValueError with a one-line message."""
    methods = ([m for m in METHODS if not (args.exact and m in SAMPLED_ONLY)] if args.methods == "all" else
               [m.strip() for m in args.methods.split(",") if m.strip()])
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"unknown method(s) {bad or args.methods!r}; choose from {', '.join(METHODS)} or all")
    if args.exact and set(methods) & set(SAMPLED_ONLY):
        raise ValueError(f"{', '.join(m for m in methods if m in SAMPLED_ONLY)}: no --exact version (they select "
                         "among the drawn samples by covariance)")
    baselines.check_knobs(args)
    if len(set(methods)) != len(methods):
        raise ValueError(f"method listed twice in {args.methods!r}")
    for name in ("steps", "batch", "arms", "seeds", "workers", "threads"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    for name in ("eta", "lr", "temperature"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(args, name)}")
    if not 0 <= args.n_refresh < args.steps:
        raise ValueError(f"--n-refresh must be in [0, steps), got {args.n_refresh}")
    c, s, w = (_floats(getattr(args, n), n.replace("_", "-")) for n in ("mode_centers", "mode_stds", "mode_weights"))
    if not len(c) == len(s) == len(w) or min(s) <= 0 or min(w) <= 0:
        raise ValueError("--mode-centers, --mode-stds, --mode-weights need equal lengths, stds > 0, weights > 0")
    if not all(0 <= x <= args.arms - 1 for x in c):
        raise ValueError(f"--mode-centers must lie in [0, {args.arms - 1}] (the arms), got {args.mode_centers!r}")
    if args.adv_const not in ("mean", "norm"):
        raise ValueError(f"--adv-const must be mean or norm, got {args.adv_const!r}")
    if args.theory_div not in lad.DIVERGENCES:
        raise ValueError(f"--theory-div must be one of {', '.join(lad.DIVERGENCES)}, got {args.theory_div!r}")
    if args.grpo_adv not in ("group", "raw"):
        raise ValueError(f"--grpo-adv must be group or raw, got {args.grpo_adv!r}")
    if args.grpo_kl not in ("exact", "k3", "none"):
        raise ValueError(f"--grpo-kl must be exact, k3 or none, got {args.grpo_kl!r}")
    return methods


# ----------------------------------------------------------------------------------------------------
# The problem: P_A (Eq. 5) from a mixture of three Gaussians, and A = eta * log P_A + const
# ----------------------------------------------------------------------------------------------------

def advantage(args: Args):
    """Return (A (K,), P_A (K,)) in float64."""
    k = torch.arange(args.arms, dtype=torch.float64)
    c, s, w = (torch.tensor(_floats(getattr(args, n), n), dtype=torch.float64)
               for n in ("mode_centers", "mode_stds", "mode_weights"))
    dens = (w / (s * math.sqrt(2 * math.pi)) * torch.exp(-0.5 * ((k[:, None] - c) / s) ** 2)).sum(-1)
    log_pa = torch.log(dens / dens.sum())
    # Eq. 5: P_A = e^{A/eta} / Z_A, so A = eta * log P_A up to a constant, which we choose:
    const = log_pa.mean() if args.adv_const == "mean" else log_pa.new_tensor(-math.log(args.arms))
    return args.eta * (log_pa - const), log_pa.exp()


def metrics(logp, old_logp, p_a, args: Args):
    """Final-state metrics, vectorised over leading dims. logp, old_logp: (..., K) log pi_theta, log pi_old.

    train/tv: 0.5 sum |P_pi - P_A|; train/kl: KL(P_A || P_pi) (mass of P_A that P_pi misses);
    train/kl_rev: KL(P_pi || P_A); train/modes: modes m with P_pi(window_m) >= 0.5 P_A(window_m),
    window_m = arms within one sigma_m of mu_m; train/entropy: H(pi_theta) in nats;
    train/pi_best: pi_theta(argmax A); train/ppi_max: max_y P_pi(y).
    """
    # Eq. 4: P_pi = (pi_theta / pi_old) / Z_pi, Z_pi = sum_y pi_theta / pi_old
    log_ppi = torch.log_softmax(logp - old_logp, -1)
    ppi, log_pa = log_ppi.exp(), p_a.log()
    k = torch.arange(args.arms, dtype=torch.float64)
    centers, stds = _floats(args.mode_centers, "mode-centers"), _floats(args.mode_stds, "mode-stds")
    modes = torch.zeros(logp.shape[:-1], dtype=torch.float64)
    for c, s in zip(centers, stds):
        win = ((k - c).abs() <= s).to(torch.float64)
        modes += ((ppi * win).sum(-1) >= 0.5 * (p_a * win).sum()).to(torch.float64)
    pi = logp.exp()
    return {
        "train/tv": 0.5 * (ppi - p_a).abs().sum(-1),
        "train/kl": (p_a * (log_pa - log_ppi)).sum(-1),
        "train/kl_rev": (ppi * (log_ppi - log_pa)).sum(-1),
        "train/modes": modes,
        "train/entropy": -(pi * logp).sum(-1),
        "train/pi_best": pi[..., int(p_a.argmax())],
        "train/ppi_max": ppi.max(-1).values,
    }


# ----------------------------------------------------------------------------------------------------
# Theoretical LAD (Eq. 7). lad.lad_loss cannot express it: its weight e^{A/eta} is detached, while
# Eq. 7's argument depends on theta through Z_pi (the centring term of Appendix B.4), so we build it
# from lad.DIVERGENCES (the same f) and let autograd differentiate through Z_pi.
# ----------------------------------------------------------------------------------------------------

def lad_theory_per_arm(logp_all, old_all, adv, eta, divergence):
    """Per-arm terms of Eq. 7, (..., K): (e^{A/eta} / Z_A) f( (pi/pi_old) e^{-A/eta} Z_A / Z_pi )."""
    u = adv / eta
    log_r = logp_all - old_all
    log_za = torch.logsumexp(u, -1, keepdim=True)                     # Z_A = sum_y e^{A/eta}
    log_zpi = torch.logsumexp(log_r, -1, keepdim=True)                # Z_pi = sum_y pi / pi_old
    # Eq. 7: sum_y (e^{A/eta} / Z_A) f(r e^{-A/eta} Z_A / Z_pi), f taken in log space
    fx, _ = lad.DIVERGENCES[divergence](log_r - u + log_za - log_zpi)
    return (u - log_za).exp() * fx


def practical_loss_landscape(thetas, old_logp, adv, q, args: Args, divergence):
    """Exact practical LAD loss (Eq. 8) at each row of thetas (N, K), via lad.lad_loss."""
    out = []
    for th in thetas:
        logp = torch.log_softmax(th / score_t(args), -1)
        loss, _ = lad.lad_loss(logp[:, None], old_logp[:, None], adv, torch.ones_like(q)[:, None],
                               divergence=divergence, eta=args.eta, denom=1.0, weights=q[:, None], with_stats=False)
        out.append(float(loss))
    return out


# ----------------------------------------------------------------------------------------------------
# The methods: one small function each, chosen once by name (method_loss). Each maps one optimiser
# step's view of its runs (a Step) to the sum over seeds of each seed's own loss.
# ----------------------------------------------------------------------------------------------------

@dataclass
class Step:
    """One method's inputs at one step. Rows are (seed, sample) pairs, one "token" each: the (B, T) =
    (S * n, 1) layout of lad.py, n = --batch samples per seed (exact mode: the K arms, weighted by w)."""
    lp: torch.Tensor          # (S*n, 1) log pi_theta of the rows (keeps the graph to theta)
    old: torch.Tensor         # (S*n, 1) log pi_old of the rows
    a: torch.Tensor           # (S*n,) A of the rows (Eq. 5)
    g: torch.Tensor           # (S*n,) GRPO's advantage of the rows (grpo_advantages)
    w: torch.Tensor | None    # (S*n, 1) exact mode: pi_old(y) expectation weights; sampling: None
    logp_all: torch.Tensor    # (S, K) log pi_theta over all arms (graph)
    old_all: torch.Tensor     # (S, K) log pi_old over all arms
    q: torch.Tensor           # (S, K) the sampler pi_old at temperature T
    idx: torch.Tensor | None  # (S, n) the sampled arms; None in exact mode


@dataclass
class Env:
    """What stays fixed during a run and every method may read."""
    args: Args
    adv: torch.Tensor         # (K,) A over the arms
    ones: torch.Tensor        # (S*n, 1) the all-valid mask
    denom: float              # token-mean denominator: n per seed (exact: 1, w sums to 1)
    n: int                    # rows per seed
    log_z: torch.Tensor       # (S,) FlowRL's learned log Z, one per seed
    cov_gens: list            # Clip-Cov's torch.Generator per seed


def grpo_advantages(a, q, adv, n, args: Args):
    """GRPO's advantage of every method's rows, (M, S*n), in one call: (A - mean) / std over each seed's n
    samples (lad.group_advantages); exact mode: mean and std under that method's pi_old; --grpo-adv raw: A."""
    if args.grpo_adv == "raw":
        return a
    if args.exact:
        mu = (q * adv).sum(-1, keepdim=True)                               # (M, S, 1)
        sd = ((q * (adv - mu) ** 2).sum(-1, keepdim=True)).sqrt()
        return ((adv - mu) / (sd + 1e-6)).reshape(a.shape)
    return lad.group_advantages(a.reshape(-1), n)[0].reshape(a.shape)


def lad_f(s: Step, env: Env, divergence: str):
    # Eq. 8 (lad.lad_loss): sum over seeds of E_{y~pi_old} e^{A/eta} f(r e^{-A/eta})
    return lad.lad_loss(s.lp, s.old, s.a, env.ones, divergence=divergence, eta=env.args.eta, denom=env.denom,
                        weights=s.w, with_stats=False)[0]


def lad_theory(s: Step, env: Env):
    per_arm = lad_theory_per_arm(s.logp_all, s.old_all, env.adv, env.args.eta, env.args.theory_div)  # (S, K)
    if s.idx is None:
        return per_arm.sum()                                               # Eq. 7 summed over all arms
    # sum_y g(y) = E_{pi_old}[g / pi_old], estimated on the drawn arms
    return (per_arm.gather(-1, s.idx) / s.q.gather(-1, s.idx)).mean(-1).sum()


def grpo(s: Step, env: Env):
    a = env.args
    k3 = a.grpo_kl == "k3"
    # Appendix B.4: PPO-clip surrogate max(-A r, -A clip(r, 1-eps, 1+eps)) (baselines.grpo_loss)
    loss = baselines.grpo_loss(s.lp, s.old, s.g, env.ones, clip_low=a.clip_low,
                         clip_high=a.clip_high, ref_logp=s.old if k3 else None,
                         kl_coef=a.kl_coef if k3 else 0.0, denom=env.denom, weights=s.w, with_stats=False)[0]
    if a.grpo_kl == "exact":
        # Eq. 2's KL(pi || pi_old), summed over all arms
        loss = loss + a.kl_coef * (s.logp_all.exp() * (s.logp_all - s.old_all)).sum()
    return loss


def flowrl(s: Step, env: Env):
    a, S = env.args, env.log_z.numel()
    beta = a.flowrl_beta or 1.0 / a.eta
    z = env.log_z.repeat_interleave(env.n)                                 # (S*n,)
    if s.idx is None:
        # E_q[w delta^2] as a mean over the K arms: fold K q into the IS weight through old_logp (ref stays
        # pi_old); the cap is off here since w = K q r, not r
        old_w, cap = s.old - (s.q.shape[-1] * s.q).log().reshape(-1, 1), math.inf
    else:
        old_w, cap = s.old, a.flowrl_w_cap or math.inf
    # Eq. 18 (baselines.flowrl_loss): E_{pi_old}[w (log Z + log pi/pi_old - beta A)^2], w = min(r, cap)
    loss = baselines.flowrl_loss(s.lp, old_w, s.a, env.ones, z, beta=beta, ref_logp=s.old, w_cap=cap, with_stats=False)[0]
    return loss * S                                                        # flowrl_loss means over seeds


def _per_seed(fn, s: Step, env: Env, seed_kw):
    """Clip-Cov / KL-Cov centre their covariance over one batch: each seed's n samples are its own batch.
    seed_kw(j): fn's keyword arguments for seed j."""
    n, g = env.n, s.g
    return sum(fn(s.lp[j * n:(j + 1) * n], s.old[j * n:(j + 1) * n], g[j * n:(j + 1) * n], env.ones[:n],
                  denom=env.denom, with_stats=False, **seed_kw(j))[0] for j in range(len(env.cov_gens)))


def clip_cov(s: Step, env: Env):
    a = env.args
    # Cui et al. 2025 (baselines.clip_cov_loss): PPO clip; of the seed's samples with cov in (lb, ub), not clipped,
    # max(1, ratio * n) drawn at random lose their loss
    return _per_seed(baselines.clip_cov_loss, s, env, lambda j: dict(
        generator=env.cov_gens[j], clip_cov_ratio=a.clip_cov_ratio, cov_lb=a.clip_cov_lb, cov_ub=a.clip_cov_ub,
        clip_low=a.clip_low, clip_high=a.clip_high))


def kl_cov(s: Step, env: Env):
    a = env.args
    # Cui et al. 2025 (baselines.kl_cov_loss): -A r, + coef |log r| on the top max(1, ratio * n) by cov
    return _per_seed(baselines.kl_cov_loss, s, env, lambda j: dict(kl_cov_ratio=a.kl_cov_ratio, kl_coef=a.kl_cov_coef))


def entadv(s: Step, env: Env):
    a = env.args
    # Cheng et al. 2025 (baselines.entadv_loss): GRPO clip on A + min(alpha H, |A| / kappa), H the entropy of the
    # current policy over the arms (one "token" per sample: the same H for all rows of a seed)
    h = -(s.logp_all.exp() * s.logp_all).sum(-1).detach().repeat_interleave(env.n)[:, None]   # (S*n, 1)
    return baselines.entadv_loss(s.lp, s.old, s.g, env.ones, h, alpha=a.entadv_alpha,
                           kappa=a.entadv_kappa, clip_low=a.clip_low, clip_high=a.clip_high,
                           denom=env.denom, weights=s.w, with_stats=False)[0]


METHOD_LOSSES = {"grpo": grpo, "flowrl": flowrl, "clip-cov": clip_cov, "kl-cov": kl_cov, "entadv": entadv,
                 "lad-theory": lad_theory}


def method_loss(m: str):
    """The loss function (Step, Env) -> scalar of method m: lad-<f> is lad_f with divergence f."""
    if m in METHOD_LOSSES:
        return METHOD_LOSSES[m]
    return lambda s, env: lad_f(s, env, m[4:])


def adam_step(params, state: dict, lr: float, betas=(0.9, 0.999), eps=1e-8):
    """One Adam step in place (Kingma & Ba 2015, Algorithm 1; torch.optim.Adam's update, no weight decay).

    Written out because torch.optim's first use imports torch._dynamo, ~2 s in each worker here, a
    fifth of the whole command. state: {i: (t, m, v)} per parameter; clearing it restarts Adam.
    """
    b1, b2 = betas
    with torch.no_grad():
        for i, p in enumerate(params):
            if p.grad is None:                                             # unused (no flowrl): no step, as torch
                continue
            t, m, v = state.get(i) or (0, torch.zeros_like(p), torch.zeros_like(p))
            t += 1
            m.lerp_(p.grad, 1 - b1)                                         # m_t = b1 m + (1 - b1) g
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)               # v_t = b2 v + (1 - b2) g^2
            # theta -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)
            p.addcdiv_(m, (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps), value=-lr / (1 - b1 ** t))
            state[i] = (t, m, v)


# ----------------------------------------------------------------------------------------------------
# Training: all methods x seeds at once. theta (M, S, K); each method's loss is the sum over its
# seeds of that seed's own loss, so one backward gives every run its own gradient, and Adam (an
# elementwise optimiser) makes each run identical to running it alone.
# ----------------------------------------------------------------------------------------------------

def sample_step(logp_all, old_all, q, cdf, u, adv, args: Args):
    """Every method's Step at this step, as a list over methods: B arms ~ pi_old by inverse CDF on the
    shared uniforms u (S, B), or every arm in exact mode. One op per input for all M methods (then
    unbind), since on tensors this small each torch call costs more than its arithmetic."""
    M, S, K = logp_all.shape
    if args.exact:                                                         # every arm, weight q
        lp, old, a, w, idx = logp_all, old_all, adv.expand(M, S, K), q.reshape(M, S * K, 1).unbind(), [None] * M
    else:
        idx = torch.searchsorted(cdf, u.expand(M, S, -1).contiguous()).clamp_max(K - 1)   # (M, S, B)
        lp, old, a, w = logp_all.gather(-1, idx), old_all.gather(-1, idx), adv[idx], [None] * M
        idx = idx.unbind()
    n = lp.shape[-1]
    a = a.reshape(M, S * n)
    g = grpo_advantages(a, q, adv, n, args)
    return [Step(*x) for x in zip(lp.reshape(M, S * n, 1).unbind(), old.reshape(M, S * n, 1).unbind(), a.unbind(),
                                  g.unbind(), w, logp_all.unbind(), old_all.unbind(), q.unbind(), idx)]


def train(args: Args, methods: list[str], *, record_traj=(), traj_every=10):
    torch.set_num_threads(args.threads)
    M, S, K, B = len(methods), args.seeds, args.arms, args.batch
    adv, p_a = advantage(args)                                           # (K,), (K,)
    theta = torch.zeros(M, S, K, dtype=torch.float64, requires_grad=True)  # uniform start
    n = K if args.exact else B
    env = Env(args, adv, torch.ones(S * n, 1, dtype=torch.float64), 1.0 if args.exact else float(B), n,
              torch.zeros(S, dtype=torch.float64, requires_grad=True),
              # Clip-Cov's draw: one generator per seed, a function of the seed alone (not of the worker split)
              [torch.Generator().manual_seed(CLIPCOV_SEED + args.seed + s) for s in range(S)])
    params, adam = [theta, env.log_z], {}
    losses = [method_loss(m) for m in methods]
    refresh_at = {round(args.steps * j / (args.n_refresh + 1)) for j in range(1, args.n_refresh + 1)}
    # common random numbers: seed s draws the same uniforms for every method
    uniforms = torch.stack([torch.rand(args.steps, B, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(args.seed + s))
                            for s in range(S)], 1)                           # (steps, S, B)
    traj = {m: [] for m in record_traj if m in methods}
    traj_until = min(refresh_at, default=args.steps)
    fwd_s = dict.fromkeys(methods, 0.0)

    def refresh():
        th = theta.detach().clone()
        old_all = torch.log_softmax(th / score_t(args), -1)                  # log pi_old, as scored
        q = torch.softmax(th / args.temperature, -1)                       # the sampler, pi_old at T
        return old_all, q, q.cumsum(-1)

    old_all, q, cdf = refresh()
    t0, c0 = time.perf_counter(), time.process_time()
    for step in tqdm(range(args.steps), desc="bandit", mininterval=0.5, disable=not args.progress):
        if step in refresh_at:
            old_all, q, cdf = refresh()
            if args.reset_adam:
                adam.clear()
        if step % traj_every == 0 and step < traj_until:
            for m in traj:
                traj[m].append(theta.detach()[methods.index(m), 0].clone())
        logp_all = torch.log_softmax(theta / score_t(args), -1)             # (M, S, K)
        out = []
        for m, fn, s in zip(methods, losses, sample_step(logp_all, old_all, q, cdf, uniforms[step], adv, args)):
            tm = time.perf_counter()
            out.append(fn(s, env))
            fwd_s[m] += time.perf_counter() - tm                            # perf/loss_fwd_ms_per_step
        for p in params:
            p.grad = None
        torch.autograd.backward(out)                                       # the gradient of their sum
        adam_step(params, adam, args.lr)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    with torch.no_grad():
        logp_all = torch.log_softmax(theta / score_t(args), -1)
        met = metrics(logp_all, old_all, p_a, args)
    return {"methods": methods, "adv": adv, "p_a": p_a, "logp": logp_all, "old_logp": old_all,
            "metrics": met, "wall_s": wall, "cpu_s": cpu, "fwd_s": fwd_s, "traj": traj, "log_z": env.log_z.detach()}


def _train_part(args, methods, record_traj, progress):
    torch.set_num_threads(args.threads)
    return train(dataclasses.replace(args, progress=progress), methods, record_traj=record_traj)


def run(args: Args, methods: list[str], *, record_traj=(), meanwhile=lambda: None):
    """train() with the methods split round-robin over args.workers forked processes.

    Runs are independent (own parameters, own Adam state, per-seed random numbers), so the split
    changes nothing but the wall time, which is measured here, forks and transfers included.
    meanwhile(): work for this process while its workers train (main imports matplotlib there).
    """
    W = min(args.workers, len(methods))
    if W == 1 or not CAN_FORK:
        meanwhile()
        return train(args, methods, record_traj=record_traj)
    t0 = time.perf_counter()
    chunks = [methods[w::W] for w in range(W)]
    with mp.get_context("fork").Pool(W) as pool:
        job = pool.starmap_async(_train_part, [(args, c, record_traj, args.progress and w == 0)
                                               for w, c in enumerate(chunks)])
        meanwhile()
        parts = job.get()
    wall = time.perf_counter() - t0
    order = [m for c in chunks for m in c]
    pick = torch.tensor([order.index(m) for m in methods])
    cat = lambda key: torch.cat([p[key] for p in parts])[pick]  # noqa: E731
    res = dict(parts[0], methods=methods, logp=cat("logp"), old_logp=cat("old_logp"), wall_s=wall,
               metrics={k: torch.cat([p["metrics"][k] for p in parts])[pick] for k in parts[0]["metrics"]},
               cpu_s=sum(p["cpu_s"] for p in parts),
               fwd_s={m: v for p in parts for m, v in p["fwd_s"].items()},
               traj={m: v for p in parts for m, v in p["traj"].items()})
    return res


# ----------------------------------------------------------------------------------------------------
# Reporting: table, JSON, Figure 1, Figure 2
# ----------------------------------------------------------------------------------------------------

COLUMNS = [("train/tv", "TV", 3), ("train/kl", "KL(PA||Ppi)", 3), ("train/modes", "modes", 1),
           ("train/entropy", "H(pi)", 2), ("train/pi_best", "pi(best)", 3), ("train/ppi_max", "max Ppi", 3)]


def summarise(res):
    out = {}
    for i, m in enumerate(res["methods"]):
        row = {}
        for key, v in res["metrics"].items():
            vals = v[i]
            row[key] = {"mean": float(vals.mean()), "std": float(vals.std(unbiased=False)),
                        "values": [round(float(x), 6) for x in vals]}
        row["perf/loss_fwd_ms_per_step"] = 1e3 * res["fwd_s"][m] / res["steps"]
        out[m] = row
    return out


def table(summary, label="method"):
    w = max(22, 2 + max(map(len, summary)))
    head = f"{label:<{w}}" + "".join(f"{name:>16}" for _, name, _ in COLUMNS) + f"{'fwd ms/step':>13}"
    lines = [head, "-" * len(head)]
    for m, row in summary.items():
        cells = "".join(f"{row[k]['mean']:>{9}.{d}f}±{row[k]['std']:<6.{d}f}" for k, _, d in COLUMNS)
        lines.append(f"{m:<{w}}{cells}{row['perf/loss_fwd_ms_per_step']:>13.3f}")
    return "\n".join(lines)


def import_pyplot():
    """matplotlib.pyplot with the file-only Agg backend. Imported on first use (~0.5 s), which main
    arranges to happen while the workers train; the figure process forked later inherits it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figure1(res, summary, path):
    plt = import_pyplot()
    methods, K = res["methods"], res["p_a"].numel()
    ncol = min(3, len(methods))
    nrow = math.ceil(len(methods) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.5 * nrow), sharex=True, squeeze=False)
    arms, edges = range(K), [k - 0.5 for k in range(K + 1)]
    p_a = res["p_a"].numpy()
    for ax, (i, m) in zip(axes.flat, enumerate(methods)):
        ppi = torch.softmax(res["logp"][i, 0] - res["old_logp"][i, 0], -1).numpy()
        pi = res["logp"][i, 0].exp().numpy()
        # one filled step artist, not 50 bars: drawing 12 panels of bars took a second
        ax.stairs(ppi, edges, fill=True, color="tab:blue", alpha=0.75, label=r"$P_{\pi_\theta}$ (Eq. 4)")
        ax.plot(arms, p_a, color="tab:orange", lw=2, label=r"$P_A$ (Eq. 5)")
        ax.plot(arms, pi, color="0.3", lw=1, ls="--", label=r"$\pi_\theta$")
        r = summary[m]
        ax.set_title(f"{m}: TV {r['train/tv']['mean']:.3f}, modes {r['train/modes']['mean']:.1f}", fontsize=9)
        ax.set_ylim(0, max(0.2, 1.1 * max(p_a.max(), ppi.max())))
        ax.set_xticks(range(0, K, 10))
        ax.locator_params(axis="y", nbins=3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("arm")
    axes.flat[0].legend(fontsize=7, loc="upper right")
    fig.suptitle("50-arm bandit: advantage distribution $P_A$ vs policy-induced $P_{\\pi}$ "
                 f"(bars and lines: seed 0; TV, modes: mean of {res['logp'].shape[1]} seeds)", fontsize=10)
    # fixed margins, not tight_layout: measuring every tick label of 12 panels took most of a second
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.5 / (2.5 * nrow), top=1 - 0.55 / (2.5 * nrow),
                        wspace=0.18, hspace=0.35)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def figure2(res, args: Args, path):
    """Trajectories (first pi_old phase, seed 0) on the practical-LAD loss landscape (Figure 2)."""
    plt = import_pyplot()
    traj = {m: torch.stack(t) for m, t in res["traj"].items() if t}
    if not traj:
        return
    centred = {m: t - t.mean(-1, keepdim=True) for m, t in traj.items()}   # softmax ignores shifts
    pts = torch.cat(list(centred.values()))
    _, _, vt = torch.linalg.svd(pts, full_matrices=False)                  # plane through the uniform start
    d = vt[:2]                                                             # (2, K)
    xy = {m: t @ d.T for m, t in centred.items()}
    allxy = torch.cat(list(xy.values()))
    lo, hi = allxy.min(0).values, allxy.max(0).values
    pad = 0.25 * (hi - lo) + 0.1
    g = 31
    ga, gb = torch.linspace(lo[0] - pad[0], hi[0] + pad[0], g), torch.linspace(lo[1] - pad[1], hi[1] + pad[1], g)
    A_, B_ = torch.meshgrid(ga, gb, indexing="ij")
    grid = (A_.reshape(-1, 1).double() * d[0] + B_.reshape(-1, 1).double() * d[1])
    K = args.arms
    old = torch.full((K,), -math.log(K), dtype=torch.float64)              # phase 1: pi_old uniform
    q = torch.full((K,), 1.0 / K, dtype=torch.float64)
    land = torch.tensor(practical_loss_landscape(grid, old, res["adv"], q, args, args.theory_div)).reshape(g, g)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    cs = ax.contourf(A_.numpy(), B_.numpy(), land.numpy(), levels=30, cmap="viridis")
    fig.colorbar(cs, ax=ax, label=f"practical LAD loss (Eq. 8, {args.theory_div})")
    style = {"grpo": ("tab:red", "-"), "lad-theory": ("white", "--")}
    for m, p in xy.items():
        c, ls = style.get(m, ("tab:orange", "-"))
        ax.plot(p[:, 0], p[:, 1], color=c, ls=ls, lw=2, label=m)
        ax.plot(p[-1, 0], p[-1, 1], "o", color=c)
    ax.plot([0], [0], "k^", label="start (uniform)")
    ax.set_xlabel("direction 1 (SVD of trajectories)")
    ax.set_ylabel("direction 2")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("trajectories over the first pi_old phase, seed 0", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def side_by_side(calls):
    """Run calls [(fn, *args)]: the first in this process, the others at the same time in forked children.

    Figure 1 renders in ~0.6 s, Figure 2 in ~0.3 s (its 961-point landscape); drawn one after the
    other they added a tenth to `python bandit.py --seeds 1` on 2 cores. Without fork, in turn.
    """
    if not CAN_FORK:
        for fn, *a in calls:
            fn(*a)
        return
    children = [mp.get_context("fork").Process(target=fn, args=a) for fn, *a in calls[1:]]
    for c in children:
        c.start()
    calls[0][0](*calls[0][1:])
    for c, (fn, *_) in zip(children, calls[1:]):
        c.join()
        if c.exitcode != 0:
            raise RuntimeError(f"{fn.__name__} failed in its process (exit code {c.exitcode}; traceback above)")


# ----------------------------------------------------------------------------------------------------
# GRPO ablation: which ingredient makes GRPO+KL (same exact optimum as LAD) miss P_A
# ----------------------------------------------------------------------------------------------------

INF = math.inf
NOCLIP = {"clip_low": INF, "clip_high": INF}
ABLATION = [  # (label, overrides of Args, methods); lad-js rows: LAD under the same shared change
    ("grpo (paper setting)", {}, ["grpo", "lad-js"]),
    ("exact expectation", {"exact": True}, ["grpo", "lad-js"]),
    ("no clip", NOCLIP, ["grpo"]),
    ("raw A (no group norm)", {"grpo_adv": "raw"}, ["grpo"]),
    ("no clip, raw A", {**NOCLIP, "grpo_adv": "raw"}, ["grpo"]),
    ("no clip, raw A, exact", {**NOCLIP, "grpo_adv": "raw", "exact": True}, ["grpo"]),
    ("KL estimator k3", {"grpo_kl": "k3"}, ["grpo"]),
    ("no KL", {"grpo_kl": "none"}, ["grpo"]),
    ("no pi_old refresh", {"n_refresh": 0}, ["grpo", "lad-js"]),
    ("10 pi_old phases", {"n_refresh": 9}, ["grpo", "lad-js"]),
    ("10 phases, no clip", {"n_refresh": 9, **NOCLIP}, ["grpo"]),
    ("10 phases, no clip, raw A", {"n_refresh": 9, **NOCLIP, "grpo_adv": "raw"}, ["grpo"]),
]


def run_ablation(args: Args):
    summary = {}
    for label, over, methods in tqdm(ABLATION, desc="ablation", disable=not args.progress):
        a = dataclasses.replace(args, progress=False, **over)
        res = run(a, methods)
        res["steps"] = a.steps
        for m, row in summarise(res).items():
            row["overrides"] = {k: (str(v) if v == INF else v) for k, v in over.items()}
            summary[f"{label} [{m}]"] = row
    return summary


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    try:
        methods = check_args(args)
    except ValueError as e:
        print(f"bandit.py: error: {e}", file=sys.stderr)        # one line, exit 2: common.py's rule
        sys.exit(2)
    run_dir = os.path.join(args.out, time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(run_dir, exist_ok=True)
    print(f"run folder: {run_dir}")
    config = dataclasses.asdict(args)
    print("config:", json.dumps(config))
    with open(os.path.join(run_dir, "config.json"), "w") as fh:
        json.dump(config, fh, indent=1)
    load = os.getloadavg()
    # Python's fork idiom (gc module docs): the objects made so far (torch's ~1M) leave the collector's
    # view, so forked workers do not touch their pages and the interpreter's exit skips them (0.5 s)
    gc.freeze()

    if args.ablation:
        summary = run_ablation(args)
        print(table(summary, label="GRPO variant"))
        with open(os.path.join(run_dir, "ablation.json"), "w") as fh:
            json.dump({"config": config, "load_avg_1m": load[0], "ablation": summary}, fh, indent=1)
        return

    res = run(args, methods, record_traj=("grpo", f"lad-{args.theory_div}", "lad-theory") if args.fig2 else (),
              meanwhile=import_pyplot)
    res["steps"] = args.steps
    summary = summarise(res)
    mode = "exact expectation" if args.exact else f"{args.batch} samples/step"
    print(f"\n{len(methods)} methods x {args.seeds} seeds x {args.steps} steps ({mode}): {res['wall_s']:.2f} s wall, "
          f"{res['cpu_s']:.2f} s CPU in {min(args.workers, len(methods))} process(es) x {args.threads} thread(s); "
          f"load average {load[0]:.2f} at start on {os.cpu_count()} cores")
    print(f"reference: H(P_A) = {float(-(res['p_a'] * res['p_a'].log()).sum()):.2f}, "
          f"max P_A = {float(res['p_a'].max()):.3f}, H(uniform) = {math.log(args.arms):.2f}")
    print(table(summary))
    with open(os.path.join(run_dir, "results.json"), "w") as fh:
        json.dump({"config": config, "perf/wall_s": res["wall_s"], "perf/cpu_s": res["cpu_s"], "load_avg_1m": load[0],
                   "cpu_count": os.cpu_count(), "p_a": res["p_a"].tolist(), "adv": res["adv"].tolist(),
                   "methods": summary}, fh, indent=1)
    figures = [(figure1, res, summary, os.path.join(run_dir, "bandit.png"))]
    if args.fig2:
        figures.append((figure2, res, args, os.path.join(run_dir, "bandit_fig2.png")))
    side_by_side(figures)
    print(f"wrote {run_dir}/results.json, bandit.png" + (", bandit_fig2.png" if args.fig2 else ""))


if __name__ == "__main__":
    main()
