"""What the paper's GPU runs need, on CPU: token-budget micro-batches, bf16 autocast without FSDP, and
checkpoints sized for big models (weights dtype, optimiser state, the last N kept)."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lad  # noqa: E402
from policy import Policy, make_batch  # noqa: E402
from test_train import _weights, model_dir  # noqa: E402,F401  (model_dir is a fixture)

BASE = ["--prompts-per-step", "4", "--group-size", "8", "--updates-per-rollout", "2", "--max-new-tokens", "6",
        "--eval-every", "0", "--lr", "3e-3", "--save-every", "1", "--dynamic-sampling", "false"]


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)


def _run(model_dir, out, *extra):
    return Path(lad.main(lad.parse_args(lad.Args, ["--model", model_dir, "--out", str(out)] + BASE + list(extra))))


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_token_budget_micro_batches_pack_by_padded_tokens():
    ctx = lad.Ranks(0, 1, 0, 1, torch.device("cpu"))
    sizes = [4, 12, 7, 5, 10, 6]                                  # prompt 3 + response tokens per row
    batch = lad.Batch([[1] * 3] * 6, [[2] * (s - 3) for s in sizes], torch.zeros(6), [None] * 6, [True] * 6, 6, 0)
    micro = lad.micro_batches(lad.Args(micro_batch_tokens=20), ctx, batch, list(range(6)))
    assert sorted(i for m in micro for i in m) == list(range(6))  # every row once
    for m in micro:                                               # rows x longest row within the budget
        assert len(m) * max(sizes[i] for i in m) <= 20 or len(m) == 1
    assert micro == [[1], [4, 2], [5, 3, 0]]
    # without a budget: consecutive runs of --micro-batch rows, as before
    assert lad.micro_batches(lad.Args(micro_batch=4), ctx, batch, list(range(6))) == [[0, 1, 2, 3], [4, 5]]


def _equal_count_worker(rank, world, init_file, q):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ctx = lad.Ranks(rank, world, 0, world, torch.device("cpu"))
    lens = [2, 2, 2, 2] if rank == 0 else [30, 30, 2, 2]          # rank 1's rows are long: more micro-batches
    batch = lad.Batch([[1]] * 4, [[2] * n for n in lens], torch.zeros(4), [None] * 4, [True] * 4, 4, 0)
    q.put((rank, lad.micro_batches(lad.Args(micro_batch_tokens=40), ctx, batch, [0, 1, 2, 3])))
    dist.barrier()
    dist.destroy_process_group()


def test_token_budget_gives_every_rank_the_same_number_of_micro_batches(tmp_path):
    import torch.multiprocessing as mp

    c = mp.get_context("spawn")
    q = c.Queue()
    procs = [c.Process(target=_equal_count_worker, args=(r, 2, str(tmp_path / "init"), q)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert len(got[0]) == len(got[1]) == 3                       # rank 1 needs 3; rank 0 splits its one into 3
    assert all(m for r in got for m in got[r])                    # no empty micro-batch
    assert sorted(i for m in got[0] for i in m) == [0, 1, 2, 3]


def test_token_budget_gradient_equals_the_count_based_one(model_dir):  # noqa: F811
    """The loop's accumulation (Policy forward, lad_loss over the global denominator, backward per micro-batch)
    on one mini-batch: micro-batches of 8 responses and of a 20-token budget give the same gradient."""
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(0)
    rows = [(torch.randint(3, 200, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist(),
             torch.randint(3, 200, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist())
            for _ in range(12)]
    adv = torch.randn(12, generator=g)
    batch = lad.Batch([p for p, _ in rows], [r for _, r in rows], adv, [None] * 12, [True] * 12, 12, 0)
    ctx = lad.Ranks(0, 1, 0, 1, torch.device("cpu"))
    grads, counts = [], []
    for a in (lad.Args(micro_batch=8), lad.Args(micro_batch_tokens=20)):
        lm = AutoModelForCausalLM.from_pretrained(model_dir)
        policy = Policy(lm, 1024, 1.0)
        old, _, _, _ = lad.old_logprobs(a, ctx, policy, batch)
        old = old + 0.1                                          # ratios off 1, so the loss is not flat
        denom = lad.global_denominators(batch, [list(range(12))], "token", ctx)[0]
        micro = lad.micro_batches(a, ctx, batch, list(range(12)))
        for idx in micro:
            x = batch.inputs(idx, "cpu")
            logp, _, _ = policy(x.ids, x.attn, x.pos, x.tgt, x.valid)
            loss, _ = lad.lad_loss(logp, old[idx, :logp.shape[1]], x.adv, x.mask, denom=denom)
            loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in lm.parameters()]))
        counts.append(len(micro))
    assert counts[0] == 2 and counts[1] > counts[0]
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)


def test_token_budget_in_a_run_gives_the_count_based_step(tmp_path, model_dir):  # noqa: F811
    """Same seed, same rollouts, one optimiser step: micro-batches of 8 responses or of a 24-token budget
    (1-3 responses a forward) give the same gradient norm and objective (the weights after AdamW are not
    compared: its first step is lr x sign(g), which float noise flips on near-zero gradients)."""
    extra = ["--steps", "1", "--updates-per-rollout", "1", ]
    a = _run(model_dir, tmp_path / "count", *extra, "--micro-batch", "8")
    b = _run(model_dir, tmp_path / "tokens", *extra, "--micro-batch-tokens", "24")
    ma, mb = _metrics(a)[0], _metrics(b)[0]
    assert ma["train/reward_mean"] == mb["train/reward_mean"] and ma["train/grad_norm"] > 0
    assert mb["train/grad_norm"] == pytest.approx(ma["train/grad_norm"], rel=1e-5)
    assert mb["loss/objective"] == pytest.approx(ma["loss/objective"], rel=1e-5)
    assert json.loads((b / "config.json").read_text())["micro_batch_tokens"] == 24


def test_bf16_autocast_without_fsdp_on_cpu(tmp_path, model_dir):  # noqa: F811
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    policy = Policy(lm, 4, 1.0, bf16=True)
    ids, attn, pos, tgt, valid = make_batch([([5, 6, 7], [8, 9, 1]), ([5], [10, 1])], 0, "cpu")
    logp, ent, _ = policy(ids, attn, pos, tgt, valid)
    assert logp.dtype == ent.dtype == torch.float32                      # the loss sees float32 log-probs
    assert all(p.dtype == torch.float32 for p in lm.parameters())         # master weights stay float32
    fp32, _, _ = Policy(lm, 4, 1.0)(ids, attn, pos, tgt, valid)
    assert 0 < (logp - fp32)[valid].abs().max() < 0.1                    # bf16 compute, close to fp32
    out = _run(model_dir, tmp_path / "bf16", "--steps", "2", "--bf16", "true")
    rows = _metrics(out)
    assert all(r["loss/objective"] is not None and abs(r["loss/objective"]) < 1e3 for r in rows)
    with safe_open(str(out / "ckpt-000002" / "model.safetensors"), "pt") as f:   # --save-dtype auto: bf16
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_checkpoint_dtype_optimizer_and_keep_last(tmp_path, model_dir, capsys):  # noqa: F811
    out = _run(model_dir, tmp_path / "r", "--steps", "3", "--save-dtype", "bf16", "--save-optimizer", "false",
               "--keep-last", "2")
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-000002", "ckpt-000003"]
    st = torch.load(out / "ckpt-000003" / "trainer.pt", weights_only=False)
    assert "optimizer" not in st and st["step"] == 3
    size_bf16 = (out / "ckpt-000003" / "model.safetensors").stat().st_size
    full = _run(model_dir, tmp_path / "f", "--steps", "1", "--save-dtype", "fp32")
    assert "optimizer" in torch.load(full / "ckpt-000001" / "trainer.pt", weights_only=False)
    assert size_bf16 < 0.6 * (full / "ckpt-000001" / "model.safetensors").stat().st_size
    # a checkpoint without its optimiser state: refused in one line, unless asked for a fresh AdamW
    with pytest.raises(SystemExit) as e:
        lad.cli(["--resume", str(out), "--steps", "4"] + BASE)
    assert e.value.code == 2
    assert "saved without its optimiser state" in capsys.readouterr().err
    resumed = Path(lad.main(lad.parse_args(lad.Args, ["--resume", str(out), "--steps", "4", "--fresh-optimizer",
                                                      "true", "--keep-last", "2"] + BASE)))
    assert [r["step"] for r in _metrics(resumed)] == [1, 2, 3, 4]
    assert os.path.isdir(resumed / "ckpt-000004") and not (resumed / "ckpt-000002").exists()
