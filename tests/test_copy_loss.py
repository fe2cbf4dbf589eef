"""The copy-paste path: lad.py's LOSS section (top of the file down to the TRAINING rule) runs alone, and so
does baselines.py.

Executes exactly that text in a fresh namespace with only torch and the standard library importable
from it, and checks it gives the module's values and gradients (README "The loss" points to this copy).
"""

import builtins
import math
import sys
import types
from pathlib import Path

import pytest
import torch

import baselines
import lad

LAD_PY = Path(__file__).resolve().parent.parent / "lad.py"
BASELINES_PY = LAD_PY.with_name("baselines.py")


def loss_section_text():
    """lad.py from its first line down to (not including) the rule line above '# TRAINING'."""
    lines = LAD_PY.read_text().splitlines(keepends=True)
    i = next(k for k, line in enumerate(lines) if line.startswith("# TRAINING"))
    assert lines[i - 1].startswith("# ----"), "the TRAINING heading is preceded by its rule"
    return "".join(lines[: i - 1])


def exec_copy(text=None):
    real_import = builtins.__import__
    stdlib = {"math", "__future__", "typing", "dataclasses", "collections", "functools"}

    def only_torch(name, *a, **k):
        top = name.split(".")[0]
        if top != "torch" and top not in stdlib:
            raise ImportError(f"the LOSS section imports {name!r}: not torch or the standard library")
        return real_import(name, *a, **k)

    mod = types.ModuleType("lad_copy")       # a module of its own (dataclasses look their module up)
    mod.__builtins__ = {**vars(builtins), "__import__": only_torch}
    sys.modules["lad_copy"] = mod
    try:
        exec(compile(text or loss_section_text(), "lad_copy.py", "exec"), mod.__dict__)
    finally:
        del sys.modules["lad_copy"]
    return mod.__dict__


def test_copy_has_the_public_names():
    ns = exec_copy()
    for name in ("lad_loss", "lad_token_loss", "aggregate", "group_advantages", "DIVERGENCES", "LOG_RATIO_CLAMP",
                 "MAX_LOG_WEIGHT"):
        assert name in ns, name
    assert "TRAINING" not in loss_section_text().split("# ----")[-1]
    # LAD alone: no baseline in the unit a user copies, and it stays short
    assert "grpo_loss" not in ns and "flowrl_loss" not in ns
    assert len(loss_section_text().splitlines()) <= 300


@pytest.mark.parametrize("divergence", sorted(lad.DIVERGENCES))
@pytest.mark.parametrize("ratio,agg", [("token", "token-mean"), ("seq", "seq-mean-token-mean"),
                                       ("token", "seq-mean-token-sum")])
def test_copy_matches_module(divergence, ratio, agg):
    ns = exec_copy()
    g = torch.Generator().manual_seed(0)
    B, T = 4, 6
    logp0 = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp0 + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = (torch.arange(T)[None] < torch.tensor([6, 3, 5, 1])[:, None]).double()
    out = {}
    for key, mod in (("module", lad), ("copy", None)):
        fn = lad.lad_loss if mod else ns["lad_loss"]
        tok_fn = lad.lad_token_loss if mod else ns["lad_token_loss"]
        logp = logp0.clone().requires_grad_(True)
        loss, stats = fn(logp, old, adv, mask, divergence=divergence, eta=0.5, ratio=ratio, agg=agg)
        loss.backward()
        per_tok = tok_fn(logp0, old, adv, mask, divergence=divergence, eta=0.5, ratio=ratio)
        out[key] = (loss.detach(), logp.grad, {k: float(v) for k, v in stats.items()}, per_tok)
    (l1, g1, s1, p1), (l2, g2, s2, p2) = out["module"], out["copy"]
    assert torch.equal(l1, l2) and torch.equal(g1, g2) and torch.equal(p1, p2)
    assert s1.keys() == s2.keys() and all(s1[k] == s2[k] or (math.isnan(s1[k]) and math.isnan(s2[k])) for k in s1)
    assert g1.abs().sum() > 0
    # lad_loss is lad_token_loss aggregated
    assert torch.allclose(lad.aggregate(p1, mask, agg), l1, rtol=1e-12, atol=0)


def test_copy_group_advantages_matches_module():
    ns = exec_copy()
    a1, _ = lad.group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    a2, _ = ns["group_advantages"](torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    assert torch.equal(a1, a2)


def test_baselines_file_runs_alone_and_matches_module():
    ns = exec_copy(BASELINES_PY.read_text())
    g = torch.Generator().manual_seed(1)
    logp0 = -torch.rand(3, 5, generator=g, dtype=torch.float64)
    old = logp0 + 0.3 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(3, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.float64)
    res = []
    for fn in (baselines.grpo_loss, ns["grpo_loss"]):
        logp = logp0.clone().requires_grad_(True)
        loss, _ = fn(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
        loss.backward()
        res.append((loss.detach(), logp.grad))
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])


def test_baselines_reduction_is_lads_aggregate():
    # baselines.py repeats lad.aggregate's reduction so that it runs alone: the two must agree exactly
    g = torch.Generator().manual_seed(4)
    per_tok = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(4, 6, generator=g) > 0.3).double()
    mask[2] = 0                                                            # a row without valid tokens
    for agg in lad.AGGREGATIONS:
        for denom in (None, 7.0):
            assert torch.equal(lad.aggregate(per_tok, mask, agg, denom),
                               baselines._reduce(torch.where(mask > 0, per_tok, 0.0) * mask, mask, agg, denom))
