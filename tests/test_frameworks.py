"""LAD inside the frameworks (README "In other frameworks"): TRL's GRPOTrainer with lad_loss as its loss,
the verl policy-loss adapter against verl's own core_algos, and lad.py --wandb offline.

The frameworks come from requirements-frameworks.txt (.ci/run installs it); a test whose framework
is not installed is skipped with the reason.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lad

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))


# ------------------------------------------------------------------------------------------ TRL
def test_trl_grpo_trainer_trains_with_lad_loss(tmp_path, monkeypatch):
    pytest.importorskip("trl")
    import trl_lad
    from common import parse_args

    rec = []

    def recording(logp, old, adv, mask, **kw):              # what TRL's loss hook hands to lad_loss
        loss, stats = lad.lad_loss(logp, old, adv, mask, **kw)
        rec.append(dict(logp=logp.detach().clone(), old_logp=old.detach().clone(), advantages=adv.detach().clone(),
                        mask=mask.detach().clone(), loss=loss.detach().clone(), kw=kw))
        return loss, stats

    monkeypatch.setattr(trl_lad, "lad_loss", recording)
    torch.manual_seed(0)
    args = parse_args(trl_lad.Args, ["--steps", "3", "--out", str(tmp_path / "trl"), "--prompts-per-step", "2",
                                     "--group-size", "4", "--lr", "1e-3"])
    trainer = trl_lad.build(args)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()

    assert len(rec) == 3, "our _compute_loss ran once per step"
    for r in rec:   # the loss TRL backpropagated is lad_loss on the same tensors, at lad.py's eta = 1 / --inv-eta
        assert r["kw"]["divergence"] == "js" and r["kw"]["eta"] == 0.25
        ref, _ = lad.lad_loss(r["logp"], r["old_logp"], r["advantages"], r["mask"], divergence="js", eta=0.25)
        assert torch.allclose(r["loss"], ref, rtol=1e-6, atol=1e-7)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h, r in zip(logs, rec):   # what the Trainer logged as its loss is ours
        assert float(h["loss"]) == pytest.approx(float(r["loss"]), rel=1e-3, abs=1e-4)
        assert float(h["loss/value"]) == pytest.approx(float(r["loss"]), rel=1e-5, abs=1e-6)
        assert "reward" in h and 0.0 <= float(h["reward"]) <= 1.0
    moved = sum((p.detach() - before[k]).abs().sum().item() for k, p in trainer.model.named_parameters())
    assert moved > 0, "the weights moved"


def test_trl_updates_per_rollout_split_the_generation(tmp_path, monkeypatch):
    """--updates-per-rollout K: one generation of P x G responses, K optimiser steps on disjoint thirds."""
    pytest.importorskip("trl")
    import trl_lad
    from common import parse_args

    sizes = []
    monkeypatch.setattr(trl_lad, "lad_loss", lambda logp, *a, **k: (sizes.append(logp.shape[0]),
                                                                     lad.lad_loss(logp, *a, **k))[1])
    args = parse_args(trl_lad.Args, ["--steps", "1", "--out", str(tmp_path / "trl"), "--prompts-per-step", "3",
                                     "--group-size", "4", "--updates-per-rollout", "3"])
    trainer = trl_lad.build(args)
    trainer.train()
    assert sizes == [4, 4, 4] and trainer.state.global_step == 3


# ------------------------------------------------------------------------------------------ verl
def _batch(seed=0, B=5, T=7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=dtype) * 2
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=dtype)
    adv = torch.randn(B, 1, generator=g, dtype=dtype).expand(B, T).clone()   # verl: per-token (bs, T)
    mask = (torch.arange(T)[None] < torch.tensor([7, 3, 5, 1, 6])[:, None]).to(dtype)
    return logp, old, adv, mask


def test_verl_adapter_against_lad_aggregation():
    import verl_lad

    logp0, old, adv, mask = _batch()
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        logp = logp0.clone().requires_grad_(True)
        loss, metrics = verl_lad.compute_policy_loss_lad(old, logp, adv, mask, mode, None, None)
        loss.backward()
        ref_logp = logp0.clone().requires_grad_(True)
        ref, _ = lad.lad_loss(ref_logp, old, adv, mask, agg=mode, divergence=verl_lad.DIVERGENCE, eta=verl_lad.ETA)
        ref.backward()
        assert torch.allclose(loss, ref, rtol=1e-10), mode
        assert torch.allclose(logp.grad, ref_logp.grad, rtol=1e-10), mode
        assert all(isinstance(v, float) for v in metrics.values())
    # rollout_is_weights multiply per token, as lad_loss's weights
    w = torch.rand_like(mask) + 0.5
    loss, _ = verl_lad.compute_policy_loss_lad(old, logp0, adv, mask, "token-mean", None, w)
    ref, _ = lad.lad_loss(logp0, old, adv, mask, weights=w, divergence=verl_lad.DIVERGENCE, eta=verl_lad.ETA)
    assert torch.allclose(loss, ref, rtol=1e-10)


def test_verl_adapter_registered_and_uses_verl_agg_loss():
    pytest.importorskip("verl")
    try:
        from verl.trainer.ppo import core_algos
    except ImportError as e:
        pytest.skip(f"verl.trainer.ppo.core_algos does not import here: {e}")
    import verl_lad

    assert verl_lad.HAVE_VERL and verl_lad.agg_loss is core_algos.agg_loss
    fn = core_algos.get_policy_loss_fn("lad")
    assert fn is verl_lad.compute_policy_loss_lad
    import inspect
    params = list(inspect.signature(fn).parameters)
    assert params == list(inspect.signature(core_algos.compute_policy_loss_vanilla).parameters) == [
        "old_log_prob", "log_prob", "advantages", "response_mask", "loss_agg_mode", "config", "rollout_is_weights"]

    class Cfg:   # the attribute verl's ActorConfig gives its policy losses
        global_batch_info = {"dp_size": 2, "batch_num_tokens": 40, "global_batch_size": 9}

    logp, old, adv, mask = _batch(1)
    per_tok = lad.lad_token_loss(logp, old, adv, mask, divergence=verl_lad.DIVERGENCE, eta=verl_lad.ETA)
    for mode in ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        for cfg, info in ((None, {}), (Cfg(), Cfg.global_batch_info)):
            loss, _ = fn(old, logp, adv, mask, mode, cfg, None)
            ref = core_algos.agg_loss(loss_mat=per_tok, loss_mask=mask, loss_agg_mode=mode, **info)
            assert torch.allclose(loss, ref, rtol=1e-12), (mode, info)


# ------------------------------------------------------------------------------------------ wandb
def test_lad_wandb_offline_writes_run_folder(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
           "WANDB_DISABLE_CODE": "true", "WANDB_CONSOLE": "off", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "lad.py"), "--steps", "1", "--eval-every", "0", "--prompts-per-step", "2",
           "--group-size", "2", "--wandb", "offline", "--wandb-project", "lad-test", "--out", str(out),
           "--underfilled", "train"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    runs = sorted(out.glob("wandb/offline-run-*"))
    assert len(runs) == 1, list(out.rglob("*"))[:50]
    run = runs[0]
    data = list(run.glob("*.wandb"))
    assert len(data) == 1, "the offline run's data file (what `wandb sync` uploads)"
    # wandb 0.31 keeps config and history as protobuf records in that file (files/ holds no
    # config.yaml offline); their keys are stored as plain UTF-8, so look for them there.
    raw = data[0].read_bytes()
    for key in (b"divergence", b"prompts_per_step", b"eta"):        # the config (lad.py's Args)
        assert key in raw, key
    for key in (b"train/", b"loss/"):                             # the logged metrics
        assert key in raw, key
    assert not list(out.glob("wandb/run-*")), "an online run folder: something tried the network"
