"""Code in the training loop: the built-in code task (tasks.py), its rewards through the sandbox, the code
metrics, torchrun on `--train-data builtin-code`, and a real DeepCoder file through the whole path (CPU).

Needs bubblewrap (sandbox.py; .ci/run installs it)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lad  # noqa: E402
import tasks  # noqa: E402
import tiny  # noqa: E402

from test_train import _env, _torchrun  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CODE_SMALL = ["--steps", "2", "--prompts-per-step", "4", "--group-size", "4", "--updates-per-rollout", "2",
              "--micro-batch", "8", "--eval-every", "2", "--eval-prompts", "2", "--eval-k", "2", "--lr", "3e-3",
              "--max-sample-rounds", "3", "--underfilled", "train"]


@pytest.fixture(scope="module")
def code_model_dir(tmp_path_factory):
    """A short code warm start from a random init: the fenced format is learned, the sums mostly not."""
    path = tmp_path_factory.mktemp("tiny-code")
    model, tok = tiny.make_model(seed=0)
    tiny.warm_start(model, tok, tasks.CODE.draw(), seed=0, steps=60, log=lambda *a: None)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_builtin_code_rows_and_rewards():
    train, held = tasks.builtin_rows(tasks.CODE, "train"), tasks.builtin_rows(tasks.CODE, "heldout")
    assert train and held and not {r["id"] for r in train} & {r["id"] for r in held}
    assert {r["kind"] for r in train + held} == {"code"}
    assert tasks.builtin_rows(tasks.CODE, "train") == train                # deterministic
    row = next(r for r in train + held if r["id"] == "code-13")
    gold = [row["gold"]] * 6
    texts = ["```python\nprint(8+5)\n```", "```python\nprint(13)\n```", "```python\nprint(4+9)\n```",
             "```python\nprint(9+5)\n```", "print(8+5)", "```python\nprint(8+\n```"]
    v = tasks.judge(texts, gold, "code")
    assert [x.reward for x in v] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert [x.reason for x in v][3:] == ["wrong_answer", "no_code_block", "runtime_error"]
    # distinct correct programs are told apart by their text
    assert len({tasks.answer_key(t, "code") for t in texts[:3]}) == 3
    # the warm start's own responses are correct programs
    prompt, answer = tasks.CODE.draw()(__import__("random").Random(0))
    t = int(prompt.split()[0])
    assert tasks.judge([answer], [next(r for r in train if r["id"] == f"code-{t}")["gold"]], "code")[0].reward == 1.0


def test_reason_metrics_named_and_shares(monkeypatch):
    s = {"reward": 2.0, "responses": 8.0, "correct": 2.0, "distinct": 1.0, "drawn": 2.0, "ent": 0.0, "ent_n": 0.0,
         "dropped": 0.0, "zero_var": 0.0, "kept": 2.0, "resp_len": 80.0, "truncated": 0.0, "stats_n": 0.0,
         "overlong_penalty": 0.0, "masked": 0.0, "underfilled": 0.0,
         "reason_ok": 2.0, "reason_wrong_answer": 3.0, "reason_runtime_error": 1.0, "reason_timeout": 1.0,
         "reason_memory": 0.0, "reason_blocked": 0.0, "reason_no_code_block": 1.0}
    m = lad.step_metrics(s, {"resp_len_max": 20, "step_s": 1.0, "sample_rounds": 1}, [], 1e-3, lad.Args(),
                         lad.Ranks(0, 1, 0, 1, torch.device("cpu")))
    assert m["rollout/reason_ok_frac"] == 0.25 and m["rollout/reason_no_code_block_frac"] == 0.125
    assert m["rollout/reason_timeout_frac"] == 0.125 and m["rollout/reason_runtime_error_frac"] == 0.125
    shares = [v for k, v in m.items() if k.startswith("rollout/reason_")]
    assert abs(sum(shares) - 1.0) < 1e-12                                  # every response has one reason


def test_max_new_tokens_default_follows_the_task():
    assert lad.resolve_args(lad.Args()).max_new_tokens == 12
    assert lad.resolve_args(lad.Args(train_data="builtin-code")).max_new_tokens == 32
    assert lad.resolve_args(lad.Args(train_data="x.jsonl")).max_new_tokens == 1024
    assert lad.resolve_args(lad.Args(max_new_tokens=7)).max_new_tokens == 7


def _leftover_sandboxes():
    """Live orphaned sandbox processes: a sandbox whose trainer exited is re-parented to pid 1. (Sandboxes of
    other live processes have those as parents; a zombie is dead: reaping orphans is pid 1's job.)"""
    out = subprocess.run(["ps", "-eo", "pid,ppid,stat,args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines()[1:]
            if "bwrap" in ln and ln.split()[1] == "1" and ln.split()[2][0] != "Z"]


def test_torchrun_builtin_code_two_ranks(tmp_path, code_model_dir):
    out = tmp_path / "run"
    before = _leftover_sandboxes()
    r = _torchrun(["--train-data", "builtin-code", "--model", code_model_dir, "--out", str(out)] + CODE_SMALL,
                  timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [0, 1, 2]
    for x in rows[1:]:
        assert x["rollout/prompts_drawn"] >= 4 and x["perf/reward_s"] > 0
        assert 0 <= x["rollout/reason_ok_frac"] <= 1 and x["rollout/reason_ok_frac"] == x["train/accuracy"]
        for k in ("no_code_block", "timeout", "runtime_error", "wrong_answer"):
            assert 0 <= x[f"rollout/reason_{k}_frac"] <= 1
    assert "eval/pass@2" in rows[-1]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["max_new_tokens"] == 32 and cfg["train_data"] == "builtin-code"
    assert _leftover_sandboxes() == before                                 # no sandbox outlives the run


def test_refuses_without_bubblewrap_unless_weak(tmp_path, code_model_dir, capsys, monkeypatch):
    import sandbox

    def no_bwrap():
        raise sandbox.SandboxUnavailable("bwrap not found; install it: apt-get install bubblewrap")
    monkeypatch.setattr(sandbox, "check_sandbox", no_bwrap)
    with pytest.raises(SystemExit) as e:
        lad.cli(["--train-data", "builtin-code", "--model", code_model_dir, "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "bubblewrap" in err and "apt-get install bubblewrap" in err and "Traceback" not in err


@pytest.mark.skipif(not (SHARED / "train" / "deepcoder_livecodebench.jsonl").is_file(), reason="needs ../shared")
def test_deepcoder_file_runs_two_steps(tmp_path):
    """A real DeepCoder file with a random-init tiny model whose context holds its prompts (up to about 4k
    bytes = tokens): rewards are 0 (no code block in 8 random tokens), but every phase runs."""
    model = tiny.init_model_dir(tmp_path / "m", seed=0, context=4608)
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "lad.py"), "--train-data", str(SHARED / "train" / "deepcoder_livecodebench.jsonl"),
           "--model", model, "--out", str(out), "--steps", "2", "--prompts-per-step", "2", "--group-size", "2",
           "--max-new-tokens", "8", "--micro-batch", "4", "--updates-per-rollout", "1", "--max-sample-rounds", "1",
           "--underfilled", "train"]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [1, 2]
    assert all(x["rollout/reason_no_code_block_frac"] == 1.0 and x["train/reward_mean"] == 0.0 for x in rows)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_prompts"] == 580 and cfg["train_prompts_skipped_too_long"] == 0
