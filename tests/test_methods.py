"""The paper's baselines in lad.py's loop (--loss grpo|flowrl|clip-cov|kl-cov|entadv next to lad):
each runs under torchrun on 2 ranks, a resumed run equals a straight one, FlowRL's log Z head is in the
checkpoint, and the flag combinations the loop cannot honour are refused with one line.

The losses themselves (values, gradients, selection rules) are tested in tests/test_baselines.py.
"""

import json
from pathlib import Path

import pytest
import torch

import baselines
import lad
import policy
from test_train import SMALL, _torchrun, _weights, model_dir  # noqa: F401  (model_dir is a fixture)

# the per-method stat that shows the method's own branch ran in the loop
OWN_STAT = {"grpo": "loss/clip_frac", "flowrl": "loss/log_z_mean",
            "clip-cov": "loss/cov_clip_frac", "kl-cov": "loss/kl_cov_frac", "entadv": "loss/entadv_bonus_mean"}
METHODS = ["grpo", "flowrl", "clip-cov", "kl-cov", "entadv"]
# settings under which each method's special branch acts on a few tiny steps (the defaults select about
# one token in 5000, none in batches this small)
ACTIVE = {"grpo": ["--kl-coef", "0.1"], "flowrl": [], "kl-cov": ["--kl-cov-ratio", "0.2"], "entadv": [],
          "clip-cov": ["--clip-cov-ratio", "0.2", "--clip-cov-lb", "-1000", "--clip-cov-ub", "1000"]}


def test_own_stat_names_exist():
    """OWN_STAT names stats the losses do return (else the checks below would test nothing)."""
    lp = torch.randn(4, 5)
    old, adv, mask = lp + 0.1, torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, 5)
    for m in METHODS:
        _, st = baselines.baseline_loss(lad.Args(loss=m, kl_coef=0.1), lp, old, adv, mask, denom=mask.sum(),
                                        entropy=torch.rand(4, 5), log_z=torch.zeros(4), ref_logp=lp + 0.2,
                                        generator=torch.Generator().manual_seed(0))
        assert OWN_STAT[m] in st, (m, sorted(st))


@pytest.mark.parametrize("method", METHODS)
def test_torchrun_two_ranks_every_method(tmp_path, model_dir, method):  # noqa: F811
    out = tmp_path / "run"
    r = _torchrun(["--model", model_dir, "--out", str(out), "--loss", method] + SMALL, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2]
    trained = [x for x in lines[1:] if x["rollout/groups_kept"] > 0]   # a step may keep no group at all
    assert trained and all(OWN_STAT[method] in x for x in trained), lines
    assert all(torch.isfinite(torch.tensor(x["loss/objective"])) for x in trained)
    assert json.loads((out / "config.json").read_text())["loss"] == method
    st = torch.load(out / "ckpt-000002" / "trainer.pt", weights_only=False)
    assert ("log_z_head" in st) == (method == "flowrl")
    assert st["init_model"] == model_dir                                       # pi_ref survives a resume
    rank1 = torch.load(out / "ckpt-000002" / "rank1.pt", weights_only=False)
    assert "clipcov_generator" in rank1


@pytest.mark.parametrize("method", METHODS)
def test_resume_equals_straight_run_every_method(tmp_path, model_dir, monkeypatch, method):  # noqa: F811
    """2 steps straight == 1 step, then --resume for 1 more (the lad version is in test_train.py):
    same data, weights, Clip-Cov generator state and FlowRL head, with each method's own branch active."""
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    base = ["--model", model_dir, "--loss", method, "--prompts-per-step", "4", "--group-size", "8",
            "--updates-per-rollout", "2", "--micro-batch", "8", "--max-new-tokens", "6", "--eval-every", "0",
            "--lr", "3e-3", "--save-every", "1", "--max-sample-rounds", "3", "--underfilled", "train"] + ACTIVE[method]
    a = lad.main(lad.parse_args(lad.Args, base + ["--steps", "2", "--out", str(tmp_path / "a")]))
    lad.main(lad.parse_args(lad.Args, base + ["--steps", "1", "--out", str(tmp_path / "b")]))
    b = lad.main(lad.parse_args(lad.Args, base + ["--steps", "2", "--resume", str(tmp_path / "b")]))
    la = [json.loads(x) for x in (Path(a) / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (Path(b) / "metrics.jsonl").read_text().splitlines()]
    keys = ["rollout/prompts_drawn", "train/reward_mean", "loss/objective", OWN_STAT[method]]
    assert [[x.get(k) for k in keys] for x in la] == [[x.get(k) for k in keys] for x in lb]
    assert any(x[OWN_STAT[method]] != 0 for x in la), la                      # the branch did something
    wa, wb = _weights(Path(a) / "ckpt-000002"), _weights(Path(b) / "ckpt-000002")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
    ta = torch.load(Path(a) / "ckpt-000002" / "trainer.pt", weights_only=False)
    tb = torch.load(Path(b) / "ckpt-000002" / "trainer.pt", weights_only=False)
    for k in ta.get("log_z_head", {}):
        torch.testing.assert_close(ta["log_z_head"][k], tb["log_z_head"][k], atol=1e-6, rtol=0)
    ra = torch.load(Path(a) / "ckpt-000002" / "rank0.pt", weights_only=False)
    rb = torch.load(Path(b) / "ckpt-000002" / "rank0.pt", weights_only=False)
    assert torch.equal(ra["clipcov_generator"], rb["clipcov_generator"])


def test_flowrl_head_trains_and_is_restored(tmp_path, model_dir, monkeypatch):  # noqa: F811
    """The log Z head moves under the policy's optimiser, and --resume loads it (not a fresh init)."""
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    base = ["--model", model_dir, "--loss", "flowrl", "--prompts-per-step", "4", "--group-size", "8",
            "--updates-per-rollout", "2", "--micro-batch", "8", "--max-new-tokens", "6", "--eval-every", "0",
            "--lr", "3e-3", "--max-sample-rounds", "3", "--underfilled", "train"]
    out = lad.main(lad.parse_args(lad.Args, base + ["--steps", "2", "--out", str(tmp_path / "r")]))
    head = torch.load(Path(out) / "ckpt-000002" / "trainer.pt", weights_only=False)["log_z_head"]
    torch.manual_seed(lad.seed_for("init", 0))
    fresh = baselines.LogZHead(next(iter(head.values())).shape[-1]).state_dict()
    assert max((head[k] - fresh[k]).abs().max().item() for k in head) > 1e-5

    seen = {}
    orig = policy.load_state

    def spy(args, ctx, tr, ckpt, st):
        res = orig(args, ctx, tr, ckpt, st)
        seen.update({k: v.clone() for k, v in tr.head.state_dict().items()})
        return res

    monkeypatch.setattr(policy, "load_state", spy)
    lad.main(lad.parse_args(lad.Args, base + ["--steps", "3", "--resume", str(out)]))
    for k in head:
        torch.testing.assert_close(seen[k], head[k], atol=0, rtol=0)


@pytest.mark.parametrize("argv, msg", [
    (["--loss", "flowrl", "--tis-cap", "2"], "use --tis-cap 0 with --loss flowrl"),
    (["--loss", "flowrl", "--fsdp", "true"], "--loss flowrl with --fsdp true is not supported"),
    (["--dual-clip", "0.5"], "--dual-clip must be > 1"),
    (["--entadv-kappa", "0.5"], "--entadv-kappa must be >= 1"),
    (["--clip-cov-ratio", "0"], "--clip-cov-ratio is a fraction"),
    (["--kl-cov-ratio", "1.5"], "--kl-cov-ratio is a fraction"),
    (["--clip-cov-lb", "5", "--clip-cov-ub", "1"], "must be below --clip-cov-ub"),
    (["--flowrl-beta", "-1"], "--flowrl-beta must be >= 0"),
    (["--loss", "ppo"], "invalid choice"),
])
def test_bad_method_flags_exit_2_with_one_line(argv, msg, capsys, model_dir):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        lad.cli(["--model", model_dir, "--out", "/tmp/lad-test-unused"] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_resume_with_another_loss_is_refused(tmp_path, model_dir, monkeypatch, capsys):  # noqa: F811
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    out = lad.main(lad.parse_args(lad.Args, ["--model", model_dir, "--steps", "1", "--prompts-per-step", "4",
                                             "--group-size", "4", "--eval-every", "0",
                                             "--out", str(tmp_path / "r")]))
    with pytest.raises(SystemExit) as e:
        lad.cli(["--resume", out, "--loss", "flowrl", "--steps", "2"])
    assert e.value.code == 2
    assert "checkpoint was trained with --loss lad, not flowrl" in capsys.readouterr().err


def test_figure5_bench_times_every_method_in_one_run():
    """bench/step_ratio.py --methods: one line per method, GRPO's own ratio 1, FlowRL's update includes its
    reference forward (so it cannot be cheaper than a fraction of GRPO's)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "bench/step_ratio.py", "--methods", "grpo,flowrl,lad-js", "--models", "tiny",
                        "--rounds", "2", "--updates-per-rollout", "1", "--prompts", "2"],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines() if ln.split()[:1] in (["grpo"], ["flowrl"], ["lad-js"])}
    assert set(rows) == {"grpo", "flowrl", "lad-js"}, r.stdout
    assert float(rows["grpo"][3]) == 1.0 and float(rows["flowrl"][3]) > 0.5 and float(rows["lad-js"][2]) > 0
