"""The paper's training protocol, on CPU: DAPO's overlong penalty and dynamic sampling that fills the batch,
truncated responses masked, lr warmup across a resume, a raised context, and prompts that travel from
lad.py's checkpoints to eval.py."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eval as ev  # noqa: E402
import lad  # noqa: E402
import rollout  # noqa: E402
from test_train import model_dir  # noqa: E402,F401  (a fixture)

BASE = ["--prompts-per-step", "4", "--group-size", "8", "--updates-per-rollout", "2", "--micro-batch", "8",
        "--eval-every", "0", "--lr", "3e-3", "--dynamic-sampling", "false"]


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)


def _metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_overlong_penalty_at_the_buffer_edges():
    a = lad.Args(max_new_tokens=100, overlong_buffer=20, overlong_penalty=1.0)
    # DAPO Eq. 13: 0 up to L_max - L_cache = 80 tokens, then linear to -1 at L_max = 100
    assert [lad.overlong_penalty(n, a) for n in (1, 79, 80)] == [0.0, 0.0, 0.0]
    assert lad.overlong_penalty(81, a) == pytest.approx(-0.05)
    assert lad.overlong_penalty(90, a) == pytest.approx(-0.5)
    assert lad.overlong_penalty(100, a) == pytest.approx(-1.0)
    assert lad.overlong_penalty(90, lad.Args(max_new_tokens=100, overlong_buffer=20, overlong_penalty=0.5)) == \
        pytest.approx(-0.25)
    assert lad.overlong_penalty(100, lad.Args(max_new_tokens=100)) == 0.0          # off by default


def test_mask_truncated_takes_truncated_responses_out_of_the_loss_and_its_denominator():
    ctx = lad.Ranks(0, 1, 0, 1, torch.device("cpu"))
    samples = [rollout.Sample(0, [5, 6, 1], [0.0] * 3, False), rollout.Sample(0, [5, 6, 7, 8], [0.0] * 4, True)]
    group = lad.Group({"ids": [3, 4]}, samples, ["a", "b"], [1.0, 0.0], ["ok", "wrong_answer"])
    adv = torch.tensor([0.7, -0.7])
    masked, kept = lad.Batch.of([group], adv, 0, mask_truncated=True), lad.Batch.of([group], adv, 0)
    assert masked.trained == [True, False] and kept.trained == [True, True]
    assert lad.global_denominators(masked, [[0, 1]], "token", ctx) == [3.0]        # the truncated 4 tokens: out
    assert lad.global_denominators(kept, [[0, 1]], "token", ctx) == [7.0]
    x = masked.inputs([0, 1], "cpu")
    assert x.mask[1].sum() == 0 and x.valid[1].sum() == 4                           # forwarded, not in the loss


def test_overlong_and_mask_truncated_in_a_run(tmp_path, model_dir):  # noqa: F811
    out = lad.main(lad.parse_args(lad.Args, ["--model", model_dir, "--out", str(tmp_path / "r"), "--steps", "1",
                                             "--max-new-tokens", "3", "--overlong-buffer", "2", "--mask-truncated",
                                             "true", "--underfilled", "train"] + BASE))
    m = _metrics(out)[0]
    assert m["rollout/truncation_rate"] > 0                                          # 3 tokens: "a+b" then EOS is 4
    assert m["rollout/overlong_penalty_mean"] < 0
    if m["rollout/groups_kept"]:
        assert m["rollout/truncated_masked_frac"] > 0


def test_warmup_schedule_and_resume(tmp_path, model_dir):  # noqa: F811
    base = ["--model", model_dir, "--max-new-tokens", "6", "--warmup-steps", "5", "--save-every", "1",
            ] + BASE
    a = lad.main(lad.parse_args(lad.Args, base + ["--steps", "3", "--out", str(tmp_path / "a")]))
    lad.main(lad.parse_args(lad.Args, base + ["--steps", "1", "--out", str(tmp_path / "b")]))
    b = lad.main(lad.parse_args(lad.Args, base + ["--steps", "3", "--resume", str(tmp_path / "b")]))
    # 2 optimiser steps per rollout step: after step s the next lr is 3e-3 * min(1, (2 s + 1) / 5)
    want = [3e-3 * min(1.0, (2 * s + 1) / 5) for s in (1, 2, 3)]
    for run in (a, b):
        assert [r["train/lr"] for r in _metrics(run)] == pytest.approx(want)
    assert torch.load(Path(b) / "ckpt-000003" / "trainer.pt", weights_only=False)["scheduler"]["last_epoch"] == 6


def test_raised_context_in_the_hf_engine(tmp_path):
    """The tiny model's context is 256 tokens: 300 new tokens are refused, naming the flag, and train with
    --max-position-embeddings 512: at temperature 0.1 a random-init model falls into a loop without EOS, so
    its responses run past 256 positions in the rollout engine and in the trainer's log-probs."""
    import tiny

    model_dir = tiny.init_model_dir(tmp_path / "random", seed=0)
    args = ["--model", model_dir, "--out", str(tmp_path / "r"), "--steps", "1", "--max-new-tokens", "300",
            "--dynamic-sampling", "false", "--prompts-per-step", "1", "--group-size", "2", "--micro-batch", "2",
            "--eval-every", "0", "--temperature", "0.1"]
    with pytest.raises(lad.UsageError, match="--max-position-embeddings"):
        lad.main(lad.parse_args(lad.Args, args))
    out = lad.main(lad.parse_args(lad.Args, args + ["--max-position-embeddings", "512"]))
    m = _metrics(out)[0]
    assert m["rollout/response_len_max"] == 300                                  # past the model's own context
    assert json.loads((Path(out) / "ckpt-000001" / "config.json").read_text())["max_position_embeddings"] == 512


def _fill_worker(rank, world, init_file, underfilled, q):
    """One rank of a step whose rank 1 draws only zero-variance groups (every response wrong there)."""
    import torch.distributed as dist

    import tasks
    import tiny

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    tok = tiny.make_tokenizer()

    class Engine:                                                    # rank 0: half right; rank 1: all wrong
        def generate(self, prompts, n, **_):
            out = []
            for i, _p in enumerate(prompts):
                for j in range(n):
                    text = "8+5" if rank == 0 and j % 2 == 0 else "1+1"
                    out.append(rollout.Sample(i, tok(text)["input_ids"] + [tok.eos_token_id], None, False))
            return out

    train = [{"id": "a", "ids": [1], "gold": tasks.sum_gold(13, 4, 2), "kind": "sum"}]
    args = lad.Args(prompts_per_step=4, group_size=4, max_sample_rounds=3, underfilled=underfilled,
                    max_new_tokens=12)
    ctx = lad.Ranks(rank, world, 0, world, torch.device("cpu"))
    try:
        groups, cursor, sums, maxes = lad.sample_groups(args, ctx, Engine(), tok, train, 0, 0)
        batch = lad.pad_to_largest_rank(lad.Batch.of(groups, torch.zeros(len(groups) * 4), 0), ([1], [1]), ctx)
        q.put((rank, "ok", len(groups), sums["underfilled"], maxes["sample_rounds"], len(batch), sum(batch.trained)))
    except lad.UsageError as e:
        q.put((rank, "error", str(e)))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("underfilled", ["error", "train"])
def test_dynamic_sampling_fills_or_stops_on_every_rank(tmp_path, underfilled):
    import torch.multiprocessing as mp

    c = mp.get_context("spawn")
    q = c.Queue()
    procs = [c.Process(target=_fill_worker, args=(r, 2, str(tmp_path / "init"), underfilled, q)) for r in range(2)]
    for p in procs:
        p.start()
    got = {r[0]: r[1:] for r in (q.get(timeout=180) for _ in procs)}
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    if underfilled == "error":                     # both ranks stop, with the zero-variance fraction named
        assert got[0][0] == got[1][0] == "error"
        assert "did not fill the batch" in got[1][1] and "all correct or all wrong" in got[1][1]
    else:                                          # rank 0 full after round 1, rank 1 empty after all 3 rounds
        assert got[0] == ("ok", 2, 0.0, 3, 8, 8) and got[1] == ("ok", 0, 1.0, 3, 8, 0)


def test_prompt_template_by_name_travels_to_eval(tmp_path, model_dir):  # noqa: F811
    data_file = tmp_path / "math.jsonl"
    data_file.write_text("".join(json.dumps({"problem": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(6)))
    out = lad.main(lad.parse_args(lad.Args, ["--model", model_dir, "--train-data", str(data_file), "--out",
                                             str(tmp_path / "r"), "--steps", "1", "--max-new-tokens", "4",
                                             "--prompt-template", "dapo"] + BASE))
    ck = Path(out) / "ckpt-000001"
    assert json.loads((ck / "prompt.json").read_text()) == {"template": "dapo", "chat": False,
                                                           "train_data": str(data_file)}
    assert ev.main(["--model", str(ck), "--benchmark", str(data_file), "--n", "2", "--max-new-tokens", "4",
                    "--engine", "hf", "--bootstrap", "0", "--out-dir", str(tmp_path / "e")]) == 0
    cfg = json.loads((tmp_path / "e" / "summary.json").read_text())["config"]
    assert cfg["templates"] == {"math": "dapo"} and cfg["prompt_from"] == f"{ck}/prompt.json"
    # a flag still overrides it
    assert ev.main(["--model", str(ck), "--benchmark", str(data_file), "--n", "2", "--max-new-tokens", "4",
                    "--engine", "hf", "--bootstrap", "0", "--prompt-template", "raw",
                    "--out-dir", str(tmp_path / "e2")]) == 0
    assert json.loads((tmp_path / "e2" / "summary.json").read_text())["config"]["templates"] == {"math": "raw"}


def test_underfilled_auto_is_dapos_error_unless_the_rounds_exhaust_the_data():
    """auto: error on a data set larger than one step's draws (DAPO), train on the built-in tasks' 85 prompts."""
    a = lad.Args()                                                    # 10 rounds x 16 prompts = 160 draws
    assert lad.resolve_underfilled(a, 85).underfilled == "train"
    assert lad.resolve_underfilled(a, 160).underfilled == "error"
    assert lad.resolve_underfilled(a, 17_917).underfilled == "error"
    assert lad.resolve_underfilled(dataclasses.replace(a, underfilled="error"), 85).underfilled == "error"
    assert lad.resolve_underfilled(dataclasses.replace(a, underfilled="train"), 10 ** 6).underfilled == "train"
