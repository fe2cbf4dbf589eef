"""memplan.py, the per-GPU memory plan: its terms against hand-computed values, the directions its flags
must move it, its verdicts on the paper's setups (tests/data/configs: the paper's backbones), that every
suggested set of flags fits when applied, lad.Args -> Settings, and -- with bench/memory_plan.py's
measurement of lad.py's real phases on a tiny CPU model -- that the plan is within 10% of what is measured."""

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import lad  # noqa: E402
import policy  # noqa: E402
import memplan  # noqa: E402

CONFIGS = ROOT / "tests" / "data" / "configs"
GiB = memplan.GiB

_spec = importlib.util.spec_from_file_location("memory_plan", ROOT / "bench" / "memory_plan.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["memory_plan"] = bench                     # its dataclass looks itself up there
_spec.loader.exec_module(bench)

# a small Qwen2: hidden 64, MLP 256, 2 layers, 4 heads of 16 over 2 KV heads, vocabulary 1000, untied head
SMALL = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}
# 2 responses per forward, prompts 8 + responses 24 tokens (T = 64 padded tokens, N = 48), 16-row chunks
SMALL_RUN = memplan.Settings(micro_batch=2, prompt_tokens=8, max_new_tokens=24, logprob_chunk=16, cuda=False,
                             gpu_memory_gb=1)


def cfg(name):
    return memplan.load_config(CONFIGS / name)


def apply(s, flags):
    """Settings with '--flag value' strings applied, as lad.py's command line would read them."""
    kw = {}
    for f in flags:
        name, value = f[2:].split()[0].replace("-", "_"), f.split()[1]
        old = getattr(s, name)
        kw[name] = value == "true" if isinstance(old, bool) else type(old)(value)
    return dataclasses.replace(s, **kw)


# ----------------------------------------------------------------------------------------------------
# configs and sizes
# ----------------------------------------------------------------------------------------------------


def test_load_config_reads_a_folder_or_a_file_and_names_a_bad_one(tmp_path):
    assert memplan.load_config(CONFIGS / "Qwen2.5-7B") == memplan.load_config(CONFIGS / "Qwen2.5-7B" / "config.json")
    with pytest.raises(ValueError, match="no model config at .*nowhere"):
        memplan.load_config(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad/config.json"):
        memplan.load_config(tmp_path / "bad")
    (tmp_path / "gpt2.json").write_text(json.dumps({**SMALL, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        memplan.load_config(tmp_path / "gpt2.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a decoder config"):
        memplan.load_config(tmp_path / "list.json")
    (tmp_path / "partial.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 8}))
    with pytest.raises(ValueError, match="missing intermediate_size"):
        memplan.load_config(tmp_path / "partial.json")


@pytest.mark.parametrize("name, billions", [("Qwen2.5-7B", 7.62), ("DeepSeek-R1-Distill-Qwen-7B", 7.62),
                                            ("DeepSeek-R1-Distill-Qwen-1.5B", 1.78), ("OpenMath-Nemotron-1.5B", 1.54)])
def test_parameter_count_is_transformers_own(name, billions):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = cfg(name)
    with torch.device("meta"):
        lm = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in c.items() if k != "model_type"}))
    counted = sum(p.numel() for p in lm.parameters())                  # tied weights once
    assert memplan.model_of(c).params == counted
    assert round(counted / 1e9, 2) == billions


# ----------------------------------------------------------------------------------------------------
# terms, by hand
# ----------------------------------------------------------------------------------------------------


def test_terms_by_hand_float32():
    m = memplan.model_of(SMALL)
    # layer: q/k/v/o 64x(64+32+32) + 64x64, q/k/v bias 128, MLP 3 x 64 x 256, 2 norms of 64
    assert m.layer_params == 8192 + 4096 + 128 + 49152 + 128 == 61696
    assert m.root_params == 2 * 1000 * 64 + 64 and m.params == 2 * 61696 + 128064 == 251456
    t = memplan.terms(m, SMALL_RUN)
    assert (t["weights"], t["optimizer"], t["gradients"]) == (4 * 251456, 8 * 251456, 4 * 251456)
    # per token, one layer: norms 2 x (12 x 64) + 8 = 1544; attention 4 x 64 x 4 (q, repeated k, v, out)
    # + 32 x 4 (the per-layer mask) + 4 x 4 (logsumexp) = 1168; MLP 4 x 256 x 4 = 4096 -> 6808.
    # Head, 3 chunks of 16 rows: max(3 x 16 x 1000 x 4 + the weight grad 1000 x 64 x 4, the weight grad
    # summed out of place: 3 x 256000) = 768000, + the rows' grad 48 x 64 x 4 = 12288.
    # Head-backward moment: 64 tokens x (2 layers x 6808 + final norm 772) + 48 rows x 256 + 780288
    assert t["activations + head"] == 64 * (2 * 6808 + 772) + 48 * 256 + 780288 + 16 * 48 * 4 == 1716480
    # no grad (no KV cache): 4 residual tensors 4 x 64 x 4 + MLP 3 x 256 x 4 + bool mask 32
    assert t["activations (no grad)"] == 64 * (1024 + 3072 + 32) == 264192
    assert t["adamw temporaries"] == 2 * 4 * 1000 * 64                     # CPU: two of the embedding
    for k in ("ddp buckets", "fsdp root", "fsdp layers in flight", "autocast weight cache", "vllm awake",
              "cuda context + nccl", "reference model"):
        assert t[k] == 0, k


def test_equal_lengths_need_no_mask():
    m = memplan.model_of(SMALL)
    ragged, equal = (memplan.terms(m, dataclasses.replace(SMALL_RUN, ragged=r)) for r in (True, False))
    # SDPA with GQA and no mask: q, k, v at their own widths + out = 2 x (64 + 32) x 4 + logsumexp, 784 not
    # 1168 per token and layer; no (B, 1, Lp, Lp) masks (32 bytes per token); K/V are the cache's storages
    assert ragged["activations + head"] - equal["activations + head"] == 64 * 2 * (1168 - 784)
    assert ragged["activations (no grad)"] - equal["activations (no grad)"] == 64 * 32


def test_terms_by_hand_checkpointing_and_ddp():
    m = memplan.model_of(SMALL)
    t = memplan.terms(m, dataclasses.replace(SMALL_RUN, activation_checkpointing=True, world_size=2))
    # the head's backward over the checkpointed trunk: 64 x (2 layer inputs x 256 + final norm 772 + mask 32)
    # + 48 rows x 256 + 780288, above a layer's recompute 64 x (512 + 6808 + MLP backward 2 x 256 x 4 + 32)
    assert t["activations + head"] == 64 * (512 + 772 + 32) + 48 * 256 + 780288 + 16 * 48 * 4 == 879872
    assert 64 * (512 + 6808 + 2048 + 32) < 879872 - 16 * 48 * 4
    assert t["ddp buckets"] == 4 * 251456                                  # DDP's buckets, without FSDP


def test_no_engine_plans_the_trainer_alone():
    s = dataclasses.replace(SMALL_RUN, fsdp=True, cuda=True, engine="none", gpu_memory_utilization=0.9,
                            gpu_memory_gb=80)
    p = memplan.plan(SMALL, s)
    assert not p.problems and p.fits
    assert not [k for ph in p.phases.values() for k in ph if "vllm" in k or "hf" in k]


def test_fsdp_on_gpu_is_bf16_and_sharded():
    m = memplan.model_of(SMALL)
    t = memplan.terms(m, dataclasses.replace(SMALL_RUN, fsdp=True, world_size=4, cuda=True))
    assert t["weights"] == 251456 and t["optimizer"] == 2 * 251456 and t["ddp buckets"] == 0
    assert t["fsdp root"] == 2 * 128064 and t["fsdp layers in flight"] == 4 * 61696
    assert t["cuda context + nccl"] == memplan.CUDA_CONTEXT + memplan.NCCL_BUFFERS
    assert t["adamw temporaries"] == 4 * 251456 / 4                         # foreach: one float32 set, sharded


# ----------------------------------------------------------------------------------------------------
# directions
# ----------------------------------------------------------------------------------------------------

MATH = memplan.Settings(prompts_per_step=256, group_size=8, max_new_tokens=8192, prompt_tokens=2048,
                        fsdp=True, micro_batch=8, world_size=8, gpu_memory_gb=80)


def test_checkpointing_lowers_the_update_peak():
    p0 = memplan.plan(cfg("Qwen2.5-7B"), MATH)
    p1 = memplan.plan(cfg("Qwen2.5-7B"), dataclasses.replace(MATH, activation_checkpointing=True))
    assert p1.peak("update") < 0.2 * p0.peak("update")
    assert p1.peak("rollout") == p0.peak("rollout")


@pytest.mark.parametrize("n", [2, 4, 8])
def test_fsdp_shards_the_states_by_world_size(n):
    states = ("weights", "optimizer", "gradients")
    one = memplan.plan(cfg("Qwen2.5-7B"), dataclasses.replace(MATH, world_size=1)).phases["update"]
    many = memplan.plan(cfg("Qwen2.5-7B"), dataclasses.replace(MATH, world_size=n)).phases["update"]
    assert sum(many[k] for k in states) == pytest.approx(sum(one[k] for k in states) / n)


def test_token_budget_bounds_the_activations():
    def act(**kw):
        return memplan.plan(cfg("Qwen2.5-7B"), dataclasses.replace(MATH, **kw)).phases["update"]["activations + head"]

    assert act(micro_batch_tokens=40960, micro_batch=1) == act(micro_batch_tokens=40960, micro_batch=64)
    assert act(micro_batch_tokens=20480) < act(micro_batch_tokens=40960) < act(micro_batch_tokens=81920)
    assert act(micro_batch_tokens=40960) == act(micro_batch=4)             # 4 sequences of 10240 either way
    assert act(micro_batch_tokens=100) == act(micro_batch=1)               # one sequence goes alone


def test_logprob_chunk_bounds_the_head():
    def act(chunk):                                 # one short sequence: the head's backward is the peak
        return memplan.plan(cfg("Qwen2.5-7B"), dataclasses.replace(
            MATH, logprob_chunk=chunk, micro_batch=1, prompt_tokens=64, max_new_tokens=2048,
            activation_checkpointing=True)).phases
    a, b = act(256), act(1024)
    # two (chunk, V) float32 tensors in the no-grad pass; in backward three, unless the LM head's weight
    # grad summed over the chunks (3 x V x h bf16: 3.3 GB for Qwen2.5-7B) is the larger, as here
    assert b["old_logprobs"]["activations (no grad)"] - a["old_logprobs"]["activations (no grad)"] \
        == 2 * 768 * 152064 * 4
    assert b["update"]["activations + head"] == a["update"]["activations + head"]


def test_reference_model_adds_its_weights_and_a_phase():
    s = dataclasses.replace(MATH, activation_checkpointing=True, micro_batch_tokens=40960)
    p0, p1 = memplan.plan(cfg("Qwen2.5-7B"), s), memplan.plan(cfg("Qwen2.5-7B"), dataclasses.replace(s, ref_model=True))
    assert "ref_logprobs" not in p0.phases and "ref_logprobs" in p1.phases
    extra = p1.peak("rollout") - p0.peak("rollout")
    assert extra == pytest.approx(4 * p1.model.params / 8)          # its float32 weights, sharded, resident
    # its bf16 root (embeddings, head) is gathered during its own pass only: lad.ref_logprobs reshards it
    assert p1.phases["ref_logprobs"]["fsdp reference root"] == 2 * p1.model.root_params
    assert "fsdp reference root" not in p1.phases["update"]


# ----------------------------------------------------------------------------------------------------
# the paper's setups (App. C.2): verdicts, and suggestions that fit when applied
# ----------------------------------------------------------------------------------------------------

PAPER_MATH = dict(prompts_per_step=256, group_size=8, max_new_tokens=8192, prompt_tokens=2048)
PAPER_15B = dict(prompts_per_step=256, group_size=8, max_new_tokens=4096, prompt_tokens=2048)
PAPER_CODE = dict(prompts_per_step=64, group_size=8, max_new_tokens=8192, prompt_tokens=2048)
FIT = dict(fsdp=True, activation_checkpointing=True)
# the README's GPU commands: model, GPUs x GiB, setup, flags
COMMANDS = [
    ("Qwen2.5-7B", 2, 140, PAPER_MATH, dict(micro_batch_tokens=102400, gpu_memory_utilization=0.5, **FIT)),
    ("Qwen2.5-7B", 8, 80, PAPER_MATH, dict(micro_batch_tokens=81920, gpu_memory_utilization=0.6, **FIT)),
    ("DeepSeek-R1-Distill-Qwen-1.5B", 1, 80, PAPER_15B, dict(micro_batch_tokens=122880, gpu_memory_utilization=0.3,
                                                             **FIT)),
    ("OpenMath-Nemotron-1.5B", 1, 80, PAPER_15B, dict(micro_batch_tokens=122880, gpu_memory_utilization=0.3, **FIT)),
    ("DeepSeek-R1-Distill-Qwen-7B", 8, 80, PAPER_CODE, dict(micro_batch_tokens=81920, gpu_memory_utilization=0.6,
                                                            **FIT)),
]


@pytest.mark.parametrize("name, n, gb, setup, flags", COMMANDS, ids=[f"{c[0]}-{c[1]}x{c[2]}" for c in COMMANDS])
def test_readme_commands_fit(name, n, gb, setup, flags):
    p = memplan.plan(cfg(name), memplan.Settings(world_size=n, gpu_memory_gb=gb, **setup, **flags))
    assert p.fits, memplan.format_plan(p)
    assert p.peak() > 0.5 * p.total                 # and use the GPU: a budget that fits with room to spare
    assert "FITS" in memplan.format_plan(p)


@pytest.mark.parametrize("name, n, gb, setup, flags", COMMANDS, ids=[f"{c[0]}-{c[1]}x{c[2]}" for c in COMMANDS])
def test_lad_defaults_do_not_fit_and_the_suggestion_does(name, n, gb, setup, flags):
    s = memplan.Settings(world_size=n, gpu_memory_gb=gb, **setup)         # lad.py's defaults otherwise
    p = memplan.plan(cfg(name), s)
    assert not p.fits and "DOES NOT FIT" in memplan.format_plan(p)
    assert p.suggestions and "--fsdp true" in p.suggestions
    fixed = apply(s, p.suggestions)
    assert fixed == p.fixed
    assert memplan.plan(cfg(name), fixed).fits
    assert " ".join(p.suggestions) in memplan.format_plan(p)


@pytest.mark.parametrize("name, gb", [("Qwen2.5-7B", 80), ("Qwen2.5-7B", 140), ("DeepSeek-R1-Distill-Qwen-7B", 80)])
def test_7b_without_fsdp_cannot_fit_one_gpu_of_a_rank(name, gb):
    # float32 weights + grads + AdamW are 16 bytes x 7.6B = 113 GiB per GPU without sharding (+ DDP's buckets)
    for n in (1, 2, 8):
        s = memplan.Settings(world_size=n, gpu_memory_gb=gb, micro_batch_tokens=10240, activation_checkpointing=True,
                             **PAPER_MATH)
        p = memplan.plan(cfg(name), s)
        assert not p.fits
        assert sum(p.phases["step"][k] for k in ("weights", "optimizer", "gradients")) > 0.8 * gb * GiB
        assert "--fsdp true" in p.suggestions and memplan.plan(cfg(name), apply(s, p.suggestions)).fits


def test_more_gpus_when_one_cannot_hold_the_states():
    s = memplan.Settings(world_size=1, gpu_memory_gb=40, fsdp=True, activation_checkpointing=True,
                         micro_batch_tokens=10240, **PAPER_MATH)
    p = memplan.plan(cfg("Qwen2.5-7B"), s)
    assert not p.fits and any(f.startswith("--world-size ") for f in p.suggestions)
    assert memplan.plan(cfg("Qwen2.5-7B"), apply(s, p.suggestions)).fits


def test_vllm_share_too_small_or_too_large():
    s = memplan.Settings(world_size=8, gpu_memory_gb=80, micro_batch_tokens=81920, **PAPER_MATH, **FIT)
    small = memplan.plan(cfg("Qwen2.5-7B"), dataclasses.replace(s, gpu_memory_utilization=0.1))
    assert not small.fits and small.problems and "vLLM's share" in memplan.format_plan(small)
    large = memplan.plan(cfg("Qwen2.5-7B"), dataclasses.replace(s, gpu_memory_utilization=0.95))
    assert not large.fits and large.peak("rollout") > 0.9 * large.total
    for p in (small, large):
        fixed = apply(p.settings, p.suggestions)
        assert [f.split()[0] for f in p.suggestions] == ["--gpu-memory-utilization"]
        assert memplan.plan(cfg("Qwen2.5-7B"), fixed).fits


def test_hf_engine_generate_batch():
    s = memplan.Settings(world_size=8, gpu_memory_gb=80, micro_batch_tokens=81920, engine="hf", gen_batch=512,
                         **PAPER_MATH, **FIT)
    p = memplan.plan(cfg("Qwen2.5-7B"), s)
    # 32 prompts x 8 = 256 sequences of 10240 tokens: bf16 KV cache alone is 256 x 10240 x 56 KiB = 140 GiB
    assert not p.fits and p.phases["rollout"]["hf rollout copy"] == 2 * p.model.params
    # the copy (2 bytes x 7.6B) stays during the update too, so the token budget shrinks with it
    assert [f.split()[0] for f in p.suggestions] == ["--micro-batch-tokens", "--gen-batch"]
    fixed = apply(s, p.suggestions)
    assert 1 <= fixed.gen_batch < 256 and memplan.plan(cfg("Qwen2.5-7B"), fixed).fits


# ----------------------------------------------------------------------------------------------------
# lad.py's side, and the measurement
# ----------------------------------------------------------------------------------------------------


def test_settings_from_lad_args():
    a = lad.Args(max_new_tokens=8192, fsdp=True, activation_checkpointing=True, engine="auto", micro_batch=8)
    s = memplan.settings_from_args(a, 8, 80.0, 2048, policy.needs_reference(a))
    assert (s.world_size, s.gpu_memory_gb, s.prompt_tokens, s.max_new_tokens) == (8, 80.0, 2048, 8192)
    assert s.fsdp and s.activation_checkpointing and s.engine == "vllm" and s.cuda
    assert (s.micro_batch, s.micro_batch_tokens, s.bf16) == (8, 0, False)
    assert not s.ref_model and not s.log_z_head
    def ref(**kw):
        a = lad.Args(max_new_tokens=64, **kw)
        return memplan.settings_from_args(a, 1, 80.0, 512, policy.needs_reference(a))   # lad.py's own rule

    assert ref(loss="grpo", kl_coef=0.1).ref_model and not ref(loss="grpo").ref_model
    assert ref(loss="flowrl").ref_model and ref(loss="flowrl").log_z_head
    assert not ref(loss="flowrl", flowrl_ref="old").ref_model and not ref().log_z_head
    assert memplan.settings_from_args(lad.Args(engine="hf", max_new_tokens=64), 1, 80.0, 512, False).engine == "hf"
    with pytest.raises(ValueError, match="resolve_args"):
        memplan.settings_from_args(lad.Args(), 1, 80.0, 512, False)            # --max-new-tokens 0, unresolved
    resolved = memplan.settings_from_args(lad.resolve_args(lad.Args(train_data="x.jsonl")), 1, 80.0, 512, False)
    assert resolved.max_new_tokens == 1024


def test_memplan_imports_no_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, memplan; assert 'torch' not in sys.modules"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# hidden 64, 2 layers, 4 heads of 16 over 2 KV heads (repeat_kv copies, as in the paper's models)
TINY = {"fp32": (64, 256, 2, 4, 2, 512, False, 3, 0, 8, 40, 32, False, False),
        "fp32-ckpt": (64, 256, 2, 4, 2, 512, False, 3, 0, 8, 40, 32, True, False),
        "bf16": (64, 256, 2, 4, 2, 512, True, 3, 0, 8, 40, 32, False, True),
        "budget": (64, 256, 2, 4, 2, 512, False, 0, 96, 8, 40, 32, False, False)}


@pytest.mark.parametrize("case", TINY)
def test_plan_within_10_percent_of_lad_phases_measured(case):
    for name, phase, planned, measured, planned_act, measured_act in bench.run_case(case, TINY[case]):
        assert 0.9 < planned / measured < 1.1, (phase, planned, measured)
        assert 0.9 < planned_act / measured_act < 1.1, (phase, planned_act, measured_act)


def test_the_readme_gpu_commands_carry_the_plans_verdict(capsys, monkeypatch):
    """Each GPU command in the README, run through `lad.py --plan true` on its GPUs (the test config of its
    model, prompts of 2,048 tokens), gives the verdict and peak its comment states."""
    import re

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- gpu-commands -->(.*?)<!-- /gpu-commands -->", text, re.S).group(1)
    pairs = re.findall(r"# .*?(\d+) x (\d+) GB: plan (FITS|DOES NOT FIT), peak ([\d.]+) GiB.*\n(.*lad\.py .*)", block)
    assert len(pairs) == 4
    for gpus, gb, verdict, peak, cmd in pairs:
        argv = cmd.split("lad.py", 1)[1].split()
        model = argv[argv.index("--model") + 1].split("/")[-1]
        argv[argv.index("--model") + 1] = str(ROOT / "tests" / "data" / "configs" / model)
        argv[argv.index("--train-data") + 1] = "builtin-sum"          # prompts: --prompt-tokens below
        code = lad.plan_only(lad.parse_args(lad.Args, argv + ["--plan", "true", "--world-size", gpus,
                                                               "--gpu-memory-gb", gb, "--prompt-tokens", "2048"]))
        out = capsys.readouterr().out
        assert code == (0 if verdict == "FITS" else 1), (cmd, out)
        assert f"verdict: {verdict} -- peak {peak} GiB" in out, (cmd, out)


def test_plan_cli_exit_codes_and_the_gpu_start_refusal(monkeypatch, capsys):
    """`lad.py --plan true`: 1 when the run does not fit (naming the flags that would), 2 for a usage error;
    and a run on a GPU the plan says it cannot fit is refused before any model loads (device faked: the
    refusal comes first, so nothing touches CUDA)."""
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    qwen7b = str(ROOT / "tests" / "data" / "configs" / "Qwen2.5-7B")
    run = lambda *a: subprocess.run([sys.executable, "lad.py", "--plan", "true", "--model", qwen7b, *a],  # noqa: E731
                                    cwd=ROOT, capture_output=True, text=True, timeout=300)
    r = run("--world-size", "1", "--gpu-memory-gb", "80", "--prompt-tokens", "512")
    assert r.returncode == 1 and "DOES NOT FIT" in r.stdout and "--fsdp true" in r.stdout, r.stdout[-2000:]
    r = run("--prompt-tokens", "512")                                  # CPU, no --gpu-memory-gb: a usage error
    assert r.returncode == 2 and "--gpu-memory-gb" in r.stderr, r.stderr[-2000:]

    monkeypatch.setattr(lad.Ranks, "from_env", classmethod(lambda cls: cls(0, 1, 0, 1, torch.device("cuda"))))
    monkeypatch.setattr(lad, "build_trainer", lambda *a: pytest.fail("the model was loaded"))
    args = lad.parse_args(lad.Args, ["--model", qwen7b, "--gpu-memory-gb", "80", "--prompt-tokens", "512"])
    with pytest.raises(lad.UsageError, match="does not fit this GPU"):
        lad.main(args)
    assert "DOES NOT FIT" in capsys.readouterr().out
