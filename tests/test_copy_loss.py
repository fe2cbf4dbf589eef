"""The copy-paste path: lad.py's LOSS section (top of the file down to the TRAINING rule) runs alone.

Executes exactly that text in a fresh namespace with only torch and the standard library importable
from it, and checks it gives the module's values and gradients (README "The loss" lists this copy).
"""

import builtins
import math
from pathlib import Path

import pytest
import torch

import lad

LAD_PY = Path(__file__).resolve().parent.parent / "lad.py"


def loss_section_text():
    """lad.py from its first line down to (not including) the rule line above '# TRAINING'."""
    lines = LAD_PY.read_text().splitlines(keepends=True)
    i = next(k for k, line in enumerate(lines) if line.startswith("# TRAINING"))
    assert lines[i - 1].startswith("# ----"), "the TRAINING heading is preceded by its rule"
    return "".join(lines[: i - 1])


def exec_copy():
    real_import = builtins.__import__
    stdlib = {"math", "__future__", "typing", "dataclasses", "collections", "functools"}

    def only_torch(name, *a, **k):
        top = name.split(".")[0]
        if top != "torch" and top not in stdlib:
            raise ImportError(f"the LOSS section imports {name!r}: not torch or the standard library")
        return real_import(name, *a, **k)

    ns = {"__name__": "lad_copy", "__builtins__": {**vars(builtins), "__import__": only_torch}}
    exec(compile(loss_section_text(), "lad_copy.py", "exec"), ns)
    return ns


def test_copy_has_the_public_names():
    ns = exec_copy()
    for name in ("lad_loss", "lad_token_loss", "aggregate", "grpo_loss", "flowrl_loss", "group_advantages",
                 "DIVERGENCES", "LOG_RATIO_CLAMP", "MAX_LOG_WEIGHT"):
        assert name in ns, name
    assert "TRAINING" not in loss_section_text().split("# ----")[-1]


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


def test_copy_grpo_matches_module():
    ns = exec_copy()
    g = torch.Generator().manual_seed(1)
    logp0 = -torch.rand(3, 5, generator=g, dtype=torch.float64)
    old = logp0 + 0.3 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(3, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.float64)
    res = []
    for fn in (lad.grpo_loss, ns["grpo_loss"]):
        logp = logp0.clone().requires_grad_(True)
        loss, _ = fn(logp, old, adv, mask)
        loss.backward()
        res.append((loss.detach(), logp.grad))
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])
    a1, _ = lad.group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    a2, _ = ns["group_advantages"](torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    assert torch.equal(a1, a2)
