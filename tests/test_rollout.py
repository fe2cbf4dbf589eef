"""The engine boundary (rollout.py) driven through the real transformers engine on the tiny model (no mocks)."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lad  # noqa: E402
from policy import Policy, make_batch  # noqa: E402
import rollout  # noqa: E402
import tasks  # noqa: E402
import tiny  # noqa: E402


@pytest.fixture(scope="module")
def model_tok():
    model, tok = tiny.make_model(seed=0)
    model.eval()
    return model, tok


def _prompts(tok, n=3):
    return [tok(r["prompt"])["input_ids"] for r in tasks.sum_split("train")[:n]]


def test_generate_contract(model_tok):
    model, tok = model_tok
    engine, kind = rollout.make_engine("hf", model=model, tokenizer=tok)
    assert kind == "hf" and isinstance(engine, rollout.HFEngine)
    prompts = _prompts(tok, 3)
    out = engine.generate(prompts, 4, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=1)
    assert len(out) == 12
    assert [s.prompt_index for s in out] == [0] * 4 + [1] * 4 + [2] * 4          # grouped by prompt
    for s in out:
        assert 1 <= len(s.response_ids) <= 6
        has_eos = tok.eos_token_id in s.response_ids
        assert s.truncated == (not has_eos)
        if has_eos:                                                          # EOS is last, included once
            assert s.response_ids.index(tok.eos_token_id) == len(s.response_ids) - 1
        else:
            assert len(s.response_ids) == 6
        assert len(s.logprobs) == len(s.response_ids) and all(lp <= 0 for lp in s.logprobs)


def test_seeded_and_global_rng_untouched(model_tok):
    model, tok = model_tok
    engine = rollout.HFEngine(model, tok)
    prompts = _prompts(tok, 2)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = engine.generate(prompts, 8, temperature=1.0, max_new_tokens=8, seed=5)
    assert torch.equal(torch.get_rng_state(), before)                        # the caller's RNG is restored
    b = engine.generate(prompts, 8, temperature=1.0, max_new_tokens=8, seed=5)
    c = engine.generate(prompts, 8, temperature=1.0, max_new_tokens=8, seed=6)
    assert [s.response_ids for s in a] == [s.response_ids for s in b]
    assert [s.response_ids for s in a] != [s.response_ids for s in c]


def test_engine_logprobs_match_trainer(model_tok):
    """The engine's log-probs (generate's logits) equal the trainer's chunked log-softmax on the same
    tokens: the two code paths agree on positions, padding (left vs right) and temperature."""
    model, tok = model_tok
    engine = rollout.HFEngine(model, tok)
    prompts = _prompts(tok, 3)
    for temp in (1.0, 0.7):
        out = engine.generate(prompts, 2, temperature=temp, max_new_tokens=6, seed=2)
        policy = Policy(model, chunk=5, temperature=temp)
        batch = make_batch([(prompts[s.prompt_index], s.response_ids) for s in out], tok.pad_token_id, "cpu")
        with torch.no_grad():
            logp, _, _ = policy(*batch)
        for b, s in enumerate(out):
            torch.testing.assert_close(logp[b, :len(s.logprobs)], torch.tensor(s.logprobs), atol=2e-4, rtol=0)


def test_streamed_logprobs_with_eos_and_top_p():
    """The warm-started model ends its answers with EOS after a few tokens: rows of one generate() call
    stop at different steps (finished rows are padded while the others go on), and with top_p < 1 the
    sampler truncates. The streamed log-probs must still equal the trainer's temperature-only ones."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny.default_model_dir(tasks.SUM, 0, lambda *a: None)
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    engine = rollout.HFEngine(model, tok)
    prompts = _prompts(tok, 4)
    out = engine.generate(prompts, 4, temperature=2.5, top_p=0.95, max_new_tokens=12, seed=3)
    lengths = {len(s.response_ids) for s in out}
    assert len(lengths) > 1 and any(not s.truncated for s in out), lengths
    policy = Policy(model, chunk=7, temperature=2.5)
    batch = make_batch([(prompts[s.prompt_index], s.response_ids) for s in out], tok.pad_token_id, "cpu")
    with torch.no_grad():
        logp, _, _ = policy(*batch)
    for b, s in enumerate(out):
        assert len(s.logprobs) == len(s.response_ids)
        torch.testing.assert_close(logp[b, :len(s.logprobs)], torch.tensor(s.logprobs), atol=2e-4, rtol=0)


def test_auto_engine_says_why():
    ok, why = rollout.vllm_status()
    assert ok == rollout.vllm_usable()
    if not torch.cuda.is_available():
        assert not ok and why.startswith("no GPU")


def test_sync_is_live_and_factory_errors(model_tok):
    model, tok = model_tok
    engine, kind = rollout.make_engine("auto", model=model, tokenizer=tok)
    assert kind == ("vllm" if rollout.vllm_usable() else "hf")
    if kind != "hf":
        pytest.skip("auto picked vLLM (GPU present); the HF-specific checks below do not apply")
    prompts = _prompts(tok, 1)
    greedy = engine.generate(prompts, 1, temperature=0, max_new_tokens=6, seed=0)[0].response_ids
    engine.sleep()
    engine.wake()
    engine.sync_weights(list(model.named_parameters()))                      # no-op: it shares the module
    with torch.no_grad():                                                    # changing the trainer's module
        lm_head = model.get_output_embeddings().weight                       # changes what the engine samples
        saved = lm_head.clone()
        lm_head.zero_()
        lm_head[tok.convert_tokens_to_ids("7")] = 1.0
        model.model.norm.weight.fill_(1.0)
    try:
        changed = engine.generate(prompts, 1, temperature=0, max_new_tokens=6, seed=0)[0].response_ids
    finally:
        with torch.no_grad():
            lm_head.copy_(saved)
    assert changed != greedy
    with pytest.raises(ValueError, match="unknown engine"):
        rollout.make_engine("tpu", model=model, tokenizer=tok)
    with pytest.raises(ValueError, match="needs the trainer's model"):
        rollout.make_engine("hf")


def _perturb(model, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_rollout_copy_follows_the_trainer_only_through_sync(model_tok, tmp_path):
    """The HF engine's rollout copy (what it samples from when the trainer is FSDP-sharded; forced here on
    an unsharded module, the torchrun tests in test_train.py cover the sharded one): it starts from the
    trainer's weights, not model_path's; after the trainer changes it keeps the old policy until
    sync_weights(hf_named_tensors(trainer)), then gives the trainer module's greedy tokens, samples and
    log-probs exactly (both float32 on CPU). Tied embeddings: the tiny model ties its LM head."""
    import copy

    model, tok = model_tok
    model.save_pretrained(tmp_path)                         # model_path: the unperturbed weights
    trainer = copy.deepcopy(model)                          # the module-scoped fixture stays untouched
    assert trainer.get_output_embeddings().weight is trainer.get_input_embeddings().weight
    _perturb(trainer, seed=1)
    engine, _ = rollout.make_engine("hf", model=trainer, tokenizer=tok, model_path=str(tmp_path), rollout_copy=True)
    direct = rollout.HFEngine(trainer, tok)                 # samples from the trainer's module itself
    assert engine.model is not trainer and engine.dtype == "float32"
    prompts = _prompts(tok, 3)

    def run(e):
        greedy = e.generate(prompts, 1, temperature=0, max_new_tokens=8, seed=0)
        sampled = e.generate(prompts, 4, temperature=1.0, max_new_tokens=8, seed=7)
        return [s.response_ids for s in greedy + sampled], [lp for s in greedy + sampled for lp in s.logprobs]

    def assert_same(a, b):
        assert a[0] == b[0]
        torch.testing.assert_close(torch.tensor(a[1]), torch.tensor(b[1]), atol=1e-6, rtol=0)

    assert_same(run(engine), run(direct))                   # the constructor synced from the trainer
    _perturb(trainer, seed=2)
    stale, now = run(engine), run(direct)
    assert stale[0][:3] != now[0][:3]                       # greedy tokens differ before the sync
    assert stale[1] != now[1]
    engine.sync_weights(rollout.hf_named_tensors(trainer))
    assert_same(run(engine), now)
    # a partial or mismatched sync fails loudly instead of sampling from a mix of weights
    named = list(rollout.hf_named_tensors(trainer))
    with pytest.raises(ValueError, match="no tensor for 1 parameter"):
        engine.sync_weights(named[1:])
    with pytest.raises(ValueError, match="does not match the rollout copy"):
        engine.sync_weights([("model.bogus.weight", torch.zeros(2))])
    with pytest.raises(ValueError, match="needs model_path"):
        rollout.make_engine("hf", model=trainer, tokenizer=tok, rollout_copy=True)
