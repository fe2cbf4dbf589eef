"""The training loop (lad.py TRAINING section) and the embedded default model (tiny.py), CPU only.

The model here is the tiny Qwen2 after a very short warm start (format learned, arithmetic mostly
not), so a few percent of samples are correct and some groups have a reward spread to train on.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import lad  # noqa: E402
from policy import Policy, make_batch  # noqa: E402
import tasks  # noqa: E402
import tiny  # noqa: E402

SMALL = ["--steps", "2", "--prompts-per-step", "4", "--group-size", "8", "--updates-per-rollout", "2",
         "--micro-batch", "8", "--max-new-tokens", "6", "--eval-every", "2", "--eval-prompts", "4",
         "--eval-k", "4", "--lr", "3e-3", "--max-sample-rounds", "3", "--underfilled", "train"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    model, tok = tiny.make_model(seed=0)
    tiny.warm_start(model, tok, tasks.SUM.draw(), seed=0, steps=80, log=lambda *a: None)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, timeout):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(ROOT / "lad.py")] + args
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------------------------------
# the embedded default
# ----------------------------------------------------------------------------------------------------


def test_init_model_dir_loads_with_auto_classes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny.init_model_dir(tmp_path / "m", seed=0)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.head_dim == 64 and model.config.model_type == "qwen2"
    text = "13 no4:8+5"
    assert tok.decode(tok(text)["input_ids"]) == text and len(tok(text)["input_ids"]) == len(text)
    assert tok.eos_token_id == 1 and tok.pad_token_id == 0


# ----------------------------------------------------------------------------------------------------
# pieces of the loop
# ----------------------------------------------------------------------------------------------------


def test_chunked_logprobs_equal_full_softmax(model_dir):
    """Policy's chunked log-softmax (checkpointed chunks) equals the plain full-logits computation,
    values and gradients, and entropy matches -(p log p).sum over the vocabulary."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    items = [([5, 6, 7, 8], [9, 10, 1]), ([5, 6], [11, 12, 13, 14, 1]), ([7], [20])]
    batch = make_batch(items, 0, "cpu")
    policy = Policy(lm, chunk=3, temperature=0.8)
    logp, ent, log_z = policy(*batch)
    assert log_z is None                                                      # no prompt mask: no log Z
    (logp.sum() * 1.0).backward()
    g_chunk = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()
    ids, attn, pos, tgt, valid = batch
    full = torch.log_softmax(lm(input_ids=ids, attention_mask=attn).logits.float() / 0.8, -1)   # (B, L, V)
    ref = full.gather(1, pos[..., None].expand(-1, -1, full.shape[-1])).gather(-1, tgt[..., None])[..., 0]
    ref_ent = -(full.exp() * full).sum(-1).gather(1, pos)
    torch.testing.assert_close(logp[valid], ref[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[valid], ref_ent[valid], atol=1e-5, rtol=0)
    assert (logp[~valid] == 0).all()
    (ref * valid).sum().backward()
    for a, p in zip(g_chunk, lm.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)


def _denominator_worker(rank, world, init_file, q, done):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    # rank 0 holds 3 responses (11 tokens), rank 1 one response (2 tokens): very unequal
    g = torch.Generator().manual_seed(0)
    logp_all = torch.randn(4, 5, generator=g) * 0.1 - 1.0
    mask_all = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.float32)
    adv_all = torch.tensor([1.0, -0.5, 0.3, -0.8])
    rows = [0, 1, 2] if rank == 0 else [3]
    ctx = lad.Ranks(rank, world, 0, world, torch.device("cpu"))
    batch = lad.Batch([[5]] * len(rows), [[7] * int(mask_all[i].sum()) for i in rows], adv_all[rows],
                      [None] * len(rows), [True] * len(rows), len(rows), 0)
    denoms = lad.global_denominators(batch, [list(range(len(rows))), [0]], "token", ctx)   # two "mini-batches"
    theta = torch.zeros(4, 5, requires_grad=True)                             # logp = old + theta
    loss, _ = lad.lad_loss(logp_all[rows] + theta[rows], logp_all[rows], adv_all[rows], mask_all[rows],
                           divergence="js", eta=0.25, denom=denoms[0])
    loss.backward()
    grad = theta.grad.clone()
    dist.all_reduce(grad)
    grad /= world                                                             # what DDP does
    # a padding row (not trained) adds nothing to any denominator
    padded = lad.Batch(batch.prompts + [[5]], batch.responses + [[7, 7, 7]], torch.cat([batch.adv, torch.zeros(1)]),
                       batch.engine_logp + [[0.0]], batch.trained + [False], len(rows), 0)
    denoms_padded = lad.global_denominators(padded, [list(range(len(rows) + 1)), [0]], "token", ctx)
    q.put((rank, denoms, denoms_padded, grad))
    # tear down only once the parent holds both results: a rank that exits while the other still reads
    # from its socket can reset that connection (a ConnectionResetError seen once under heavy load)
    done.wait(timeout=300)
    dist.barrier()
    dist.destroy_process_group()


def test_global_denominator_identical_on_ranks_and_matches_one_big_batch(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q, done = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_denominator_worker, args=(r, 2, str(tmp_path / "init"), q, done)) for r in range(2)]
    for p in procs:
        p.start()
    res = sorted(q.get(timeout=180) for _ in procs)
    done.set()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0, f"worker exit code {p.exitcode}"
    (r0, d0, p0, grad0), (r1, d1, p1, grad1) = res
    assert d0 == d1 == [6.5, 3.0]                                             # (11 + 2, 4 + 2) tokens / world
    assert p0 == p1 == d0                                                     # padding rows count nothing
    # DDP-averaged gradient == gradient of the token-mean over the union batch in one process
    g = torch.Generator().manual_seed(0)
    logp_all = torch.randn(4, 5, generator=g) * 0.1 - 1.0
    mask_all = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.float32)
    theta = torch.zeros(4, 5, requires_grad=True)
    loss, _ = lad.lad_loss(logp_all + theta, logp_all, torch.tensor([1.0, -0.5, 0.3, -0.8]), mask_all,
                           divergence="js", eta=0.25)
    loss.backward()
    torch.testing.assert_close(grad0, theta.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad1, theta.grad, atol=1e-6, rtol=1e-5)


def test_data_order_is_a_permutation_per_epoch():
    n, world = 10, 2
    for rank in range(world):
        seen = [lad.row_for(i, rank, world, n, seed=3) for i in range(5)]
        assert len(set(seen)) == 5
    both = {lad.row_for(i, r, world, n, seed=3) for r in range(world) for i in range(5)}
    assert both == set(range(n))                                              # ranks split one epoch


# ----------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------


def test_bad_rows_name_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"problem": "1+1?", "answer": "2"}\n\n{"problem": "2+2?"}\n')
    with pytest.raises(lad.UsageError, match=r"bad.jsonl:3: no answer"):
        data.load_rows(f, "{problem}")
    f.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": \n')
    with pytest.raises(lad.UsageError, match=r"bad.jsonl:2: invalid JSON"):
        data.load_rows(f, "{problem}")
    with pytest.raises(lad.UsageError, match="not found"):
        data.load_rows(tmp_path / "missing.jsonl", "{problem}")
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps({"prompt": [{"role": "user", "content": "What is 2+3?"}],
                              "reward_model": {"ground_truth": 5}}) + "\n")
    rows = data.load_rows(ok, "{problem}")
    assert rows[0]["gold"] == "5" and rows[0]["kind"] == "math"
    assert rows[0]["prompt"] == [{"role": "user", "content": "What is 2+3?"}]   # messages kept for the chat template


def test_long_prompts_skipped_and_counted():
    tok = tiny.make_tokenizer()
    rows = [{"id": "a", "prompt": "x" * 5, "gold": "1", "kind": "math"},
            {"id": "b", "prompt": "x" * 50, "gold": "1", "kind": "math"}]
    kept, skipped = data.encode_rows(rows, tok, "false", 10, "f")
    assert [r["id"] for r in kept] == ["a"] and skipped == 1
    with pytest.raises(lad.UsageError, match="longer than the context"):
        data.encode_rows(rows[1:], tok, "false", 10, "f")


@pytest.mark.parametrize("argv, msg", [
    (["--group-size", "1"], "group-size must be >= 2"),
    (["--divergence", "bogus"], "invalid choice"),
    (["--train-data", "/nonexistent.jsonl"], "not found"),
])
def test_bad_cli_exits_2_with_one_line(argv, msg, capsys, model_dir):
    with pytest.raises(SystemExit) as e:
        lad.cli(["--model", model_dir, "--out", "/tmp/lad-test-unused"] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_batch_must_divide_over_ranks():
    with pytest.raises(lad.UsageError, match="multiple of the world size 2"):
        lad.check_args(lad.Args(prompts_per_step=3), world=2)


def test_bad_row_fails_on_every_rank_without_hanging(tmp_path, model_dir):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "3?", "answer": "3"}\n{"answer": 1}\n')
    r = _torchrun(["--model", model_dir, "--train-data", str(f), "--out", str(tmp_path / "run")] + SMALL,
                  timeout=240)
    assert r.returncode != 0
    assert r.stderr.count("bad.jsonl:3") == 2, r.stderr[-3000:]               # both ranks say it


# ----------------------------------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------------------------------


def test_torchrun_two_ranks_two_steps(tmp_path, model_dir):
    out = tmp_path / "run"
    r = _torchrun(["--model", model_dir, "--out", str(out)] + SMALL, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2]                            # eval before RL, 2 steps
    for x in lines[1:]:
        assert x["rollout/prompts_drawn"] >= 4 and 0 <= x["train/accuracy"] <= 1
        assert "perf/rollout_s" in x and "train/grad_norm" in x
    assert "eval/pass@4" in lines[-1] and "eval/distinct_answers" in lines[-1] and "eval/avg@n" in lines[-1]
    ck = out / "ckpt-000002"
    assert (ck / "trainer.pt").is_file() and (ck / "rank0.pt").is_file() and (ck / "rank1.pt").is_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(ck)
    AutoTokenizer.from_pretrained(ck)
    assert json.loads((out / "config.json").read_text())["world_size"] == 2


def _weights(ck):
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(ck).named_parameters())


def test_resume_equals_straight_run(tmp_path, model_dir, monkeypatch):
    """4 steps straight == 2 steps, then --resume for 2 more: same step count, same data (same
    prompts drawn and rewards per step, same cursor) and the same weights. Tolerance: 1e-6 absolute.
    Everything is seeded per (seed, rank, step) and the RNG/optimizer state is restored, so on one
    machine the two runs execute the same float32 kernels in the same order and we observe bit
    equality; 1e-6 only leaves room for a different BLAS thread split between processes."""
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    base = ["--model", model_dir, "--prompts-per-step", "4", "--group-size", "8", "--updates-per-rollout", "2",
            "--micro-batch", "8", "--max-new-tokens", "6", "--eval-every", "0", "--lr", "3e-3", "--save-every", "2",
            "--max-sample-rounds", "3", "--underfilled", "train"]
    a = lad.main(lad.parse_args(lad.Args, base + ["--steps", "4", "--out", str(tmp_path / "a")]))
    lad.main(lad.parse_args(lad.Args, base + ["--steps", "2", "--out", str(tmp_path / "b")]))
    b = lad.main(lad.parse_args(lad.Args, base + ["--steps", "4", "--resume", str(tmp_path / "b")]))
    assert b == str(tmp_path / "b")
    la = [json.loads(x) for x in (Path(a) / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (Path(b) / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in la] == [1, 2, 3, 4] and [x["step"] for x in lb] == [1, 2, 3, 4]
    keys = ["rollout/prompts_drawn", "rollout/groups_kept", "train/reward_mean", "rollout/response_len_mean"]
    assert [[x[k] for k in keys] for x in la] == [[x[k] for k in keys] for x in lb]
    assert any(x["rollout/groups_kept"] > 0 for x in la)                      # it did train on something
    ca = torch.load(Path(a) / "ckpt-000004" / "rank0.pt", weights_only=False)
    cb = torch.load(Path(b) / "ckpt-000004" / "rank0.pt", weights_only=False)
    assert ca["cursor"] == cb["cursor"]
    wa, wb = _weights(Path(a) / "ckpt-000004"), _weights(Path(b) / "ckpt-000004")
    w0 = _weights(model_dir)
    moved = max((wa[k] - w0[k]).abs().max().item() for k in wa)
    assert moved > 1e-4                                                       # training changed the weights
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------
# FSDP2 with the transformers engine (each rank samples from its own rollout copy, synced every step)
# ----------------------------------------------------------------------------------------------------

# The tiny default model (tiny.default_model_dir, as `python lad.py` uses; built once into .cache) at the
# default lr: unlike model_dir's shorter warm start it keeps groups with a reward spread on every step, so
# the log-prob check below always has tokens to look at.
FSDP_HF = ["--fsdp", "true", "--engine", "hf", "--prompts-per-step", "4", "--group-size", "8",
           "--updates-per-rollout", "2", "--micro-batch", "8", "--max-new-tokens", "6", "--eval-every", "0",
           "--save-every", "0", "--max-sample-rounds", "3", "--underfilled", "train"]
# rollout/logp_diff_max: engine vs trainer log-probs of the same tokens, float32 on both sides. Measured
# 2e-6 with the copy synced; 0.75 at step 2 with the sync disabled (a stale copy), so 1e-4 separates them.
SYNCED_TOL = 1e-4


def _check_fsdp_run(out, steps, world):
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["engine_resolved"] == "hf" and cfg["fsdp"] is True and cfg["world_size"] == world
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == steps
    for x in rows:
        assert x["rollout/groups_kept"] > 0, x                             # trained, and tokens to compare
        assert x["rollout/logp_diff_max"] < SYNCED_TOL, x                  # the copy samples the trainer's policy
        assert all(x[k] is not None and abs(x[k]) < 1e3 for k in ("loss/log_x_mean", "loss/ratio_mean")), x
        assert 0 < x["train/grad_norm"] < 1e3 and x["perf/sync_s"] > 0
    return rows


def test_fsdp_hf_engine_two_ranks_then_resume(tmp_path):
    """torchrun, 2 ranks, FSDP2 + the HF engine: 3 steps, a gathered checkpoint, then --resume for a 4th
    step, whose rollout copy must match the trainer again (re-synced from the resumed weights)."""
    out = tmp_path / "run"
    r = _torchrun(["--out", str(out), "--steps", "3"] + FSDP_HF, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_fsdp_run(out, [1, 2, 3], 2)
    ck = out / "ckpt-000003"
    assert all((ck / f).is_file() for f in ("model.safetensors", "trainer.pt", "rank0.pt", "rank1.pt"))
    w3, w0 = _weights(ck), _weights(tiny.default_model_dir(tasks.SUM))
    assert max((w3[k] - w0[k]).abs().max().item() for k in w0) > 1e-4      # the sharded trainer learned
    r = _torchrun(["--resume", str(out), "--steps", "4"] + FSDP_HF, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_fsdp_run(out, [1, 2, 3, 4], 2)
    assert (out / "latest").read_text().strip() == "ckpt-000004"


def test_fsdp_hf_engine_one_process(tmp_path):
    """python lad.py --fsdp true (no torchrun): lad.py opens a one-rank process group for fully_shard."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "lad.py"), "--out", str(out), "--steps", "2"] + FSDP_HF
    env = {k: v for k, v in _env().items() if k not in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_fsdp_run(out, [1, 2], 1)
    assert (out / "ckpt-000002" / "model.safetensors").is_file()


def test_fsdp_resume_of_a_ddp_checkpoint_is_a_usage_error(tmp_path, model_dir, capsys, monkeypatch):
    """A checkpoint without --fsdp resumed with it: one line, exit 2 (was a KeyError traceback), in one
    process, where cli() also closes the one-rank group lad.py opened for fully_shard."""
    import shutil

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    ck = tmp_path / "ckpt-000001"
    shutil.copytree(model_dir, ck)
    torch.save({"step": 1, "optimizer": {}, "world": 1, "args": {"fsdp": False}}, ck / "trainer.pt")
    with pytest.raises(SystemExit) as e:
        lad.cli(["--resume", str(ck), "--fsdp", "true", "--engine", "hf", "--steps", "2"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert err == "lad.py: error: --resume: checkpoint was written without --fsdp; resume it with --fsdp false"
    assert not torch.distributed.is_initialized()                          # the one-rank group was closed


# ----------------------------------------------------------------------------------------------------
# the loop's plumbing: resume logs each step once, data before the model, metrics by name, seeds, CLI
# ----------------------------------------------------------------------------------------------------


def test_resume_drops_metric_rows_past_the_checkpoint(tmp_path):
    """A run killed after its checkpoint at step 2 had logged steps 3 and 4; resuming from step 2 redoes
    them, so the reader must see every step once: rows past the checkpoint go."""
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(5)))
    log = lad.open_log(lad.Args(), lad.Ranks(0, 1, 0, 1, torch.device("cpu")), str(tmp_path), 2)
    log(3, {"x": 30.0})
    log(None, None)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[-1]["x"] == 30.0


def test_bad_data_is_rejected_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    """A malformed row is reported before the tiny model's warm start (which takes 15-25 s)."""
    monkeypatch.setenv("LAD_CACHE", str(tmp_path / "cache"))       # an empty cache: a build would show here
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "no answer"}\n')
    with pytest.raises(SystemExit) as e:
        lad.cli(["--train-data", str(bad)])
    assert e.value.code == 2
    assert "bad.jsonl:2: no answer" in capsys.readouterr().err
    assert not any((tmp_path / "cache").glob("tiny-*"))


def test_reduce_metrics_by_name_and_padding_in_one_process():
    ctx = lad.Ranks(0, 1, 0, 1, torch.device("cpu"))
    s, m = lad.reduce_metrics({"b": 2.0, "a": 1.0}, {"z": 5.0}, ctx)
    assert s == {"a": 1.0, "b": 2.0} and m == {"z": 5.0}
    batch = lad.Batch([[1]], [[2, 3]], torch.ones(1), [None], [True], 1, 0)
    assert len(lad.pad_to_largest_rank(batch, ([1], [4]), ctx)) == 1           # one process: nothing to pad


def test_seeds_one_function_distinct_streams():
    """Within a purpose no two (step, rank) share a seed (purposes seed different generators: torch
    permutations, the engine's sampler; their formulas are the historical ones, kept so results stay)."""
    import common

    for p in ("rollout", "shuffle", "eval"):
        seeds = [common.seed_for(p, 0, step=s, rank=r) for s in range(50) for r in range(8)]
        assert len(set(seeds)) == len(seeds), p
    assert len({common.seed_for("init", 0, rank=r) for r in range(8)}) == 8
    with pytest.raises(ValueError, match="unknown seed purpose"):
        common.seed_for("nope", 0)


def test_one_boolean_convention_and_choices():
    import common

    a = common.parse_args(lad.Args, ["--fsdp", "--dynamic-sampling", "false"])
    assert a.fsdp is True and a.dynamic_sampling is False
    with pytest.raises(SystemExit):
        common.parse_args(lad.Args, ["--chat", "on"])                # auto, true or false, as eval.py
