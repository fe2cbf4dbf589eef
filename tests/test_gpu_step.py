"""bench/gpu_step.py on CPU (the GPU figures' script, issue 6): the smoke run writes its JSON with
positive throughput and a passing fp32 FSDP2-vs-single check; on 2 ranks, a perturbed FSDP2 side makes
the check FAIL with exit code 1; every real shape's parameter count matches its Qwen2.5 model card."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--shape", "tiny", "--prompt-len", "16", "--response-len", "48", "--prompts-per-rank", "2"]
FIELDS = ["args", "device", "torch", "world_size", "mode", "params", "micro_batch", "tokens_per_step",
          "response_tokens_per_step", "update_s", "logprob_s", "update_tokens_per_s", "update_response_tokens_per_s",
          "update_tokens_per_s_per_device", "logprob_tokens_per_s", "flops_per_token_6n", "flops_per_token_attn",
          "mfu", "mfu_attn", "logprob_mfu", "peak_tflops", "peak_mem_allocated_gib", "peak_mem_reserved_gib",
          "mem_estimate_gib", "cpu_max_rss_gib", "sdpa_call", "check", "status"]


def run(cmd, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_cpu_smoke_run(tmp_path):
    out = tmp_path / "tiny.json"
    r = run([sys.executable, "bench/gpu_step.py", *SMALL, "--steps", "2", "--warmup", "1", "--check",
             "--out", str(out)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert not [k for k in FIELDS if k not in res], [k for k in FIELDS if k not in res]
    assert res["status"] == "ok" and res["world_size"] == 1 and res["mode"] == "fsdp2 fp32"
    assert res["tokens_per_step"] == 16 * 64 and res["response_tokens_per_step"] == 16 * 48
    assert res["update_tokens_per_s"] > 0 and res["update_response_tokens_per_s"] > 0 and res["logprob_tokens_per_s"] > 0
    assert len(res["update_s"]) == 2 and res["timed_steps"] == 2
    assert res["mfu"] is None and res["peak_mem_allocated_gib"] is None and res["cpu_max_rss_gib"] > 0   # CPU
    assert res["sdpa_call"] == {"mask": "none", "is_causal": True, "q_dtype_at_call": "float32"}   # no padding
    fp32 = res["check"]["fp32"]
    assert fp32["pass"] and fp32["loss_rel_diff"] <= 1e-5 and fp32["grad_norm_rel_diff"] <= 1e-5, fp32
    assert res["check"]["bf16"]["pass"] and res["check"]["pass"]
    assert "fp32: loss single" in r.stdout and "PASS" in r.stdout and "not a performance figure" in r.stdout


def test_check_fails_on_perturbed_weights_two_ranks(tmp_path):
    """2 ranks (gloo): FSDP2 over both vs the whole batch on each; one perturbed weight on the FSDP2 side."""
    out = tmp_path / "bad.json"
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             "bench/gpu_step.py", *SMALL, "--steps", "0", "--check", "--check-perturb", "1.0",
             "--out", str(out)])
    assert r.returncode != 0 and "check FAILED" in r.stderr, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["status"] == "check_failed" and res["world_size"] == 2 and not res["check"]["pass"]
    assert not res["check"]["fp32"]["pass"] and res["check"]["fp32"]["loss_rel_diff"] > 1e-3
    assert "FAIL" in r.stdout and "update_tokens_per_s" not in res          # --steps 0: the check alone


def test_shapes_match_published_param_counts(monkeypatch):
    monkeypatch.setattr(os, "environ", dict(os.environ))       # the import sets an allocator variable
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_step

    for shape, spec in gpu_step.SHAPES.items():
        if spec[-1] is not None:                                # meta device: no memory, no init
            assert gpu_step.count_params(gpu_step.make_config(shape)) == pytest.approx(spec[-1], abs=0.006e9), shape


def test_out_of_memory_halves_auto_micro_batch_else_names_the_flag(monkeypatch, tmp_path, capsys):
    """An OOM (simulated: the GPU path cannot run here) halves an automatic micro-batch and starts again;
    with --micro-batch given, exit code 3 and a message naming the flag to lower, in the JSON too."""
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_step

    real, tried = gpu_step.run_benchmark, []

    def flaky(args, cfg, n_params, micro, *rest):
        tried.append(micro)
        if micro > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(args, cfg, n_params, micro, *rest)

    monkeypatch.setattr(gpu_step, "run_benchmark", flaky)
    os.environ["OMP_NUM_THREADS"] = "1"                         # main keeps torch's thread count: set it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                    # a tiny model: 2 threads only contend
    base = [*SMALL, "--fsdp", "false", "--steps", "1", "--warmup", "0"]
    try:
        out = tmp_path / "auto.json"
        assert gpu_step.main(gpu_step.lad.parse_args(gpu_step.Args, base + ["--out", str(out)])) == 0
        auto = json.loads(out.read_text())
        auto_tried = list(tried)
        tried.clear()
        out = tmp_path / "fixed.json"
        code = gpu_step.main(gpu_step.lad.parse_args(gpu_step.Args, base + ["--micro-batch", "4", "--out", str(out)]))
    finally:
        torch.set_num_threads(threads)
    assert auto_tried == [8, 4, 2] and auto["micro_batch_tries"] == [8, 4, 2] and auto["micro_batch"] == 2
    assert auto["status"] == "ok" and auto["update_tokens_per_s"] > 0
    assert code == 3
    res = json.loads(out.read_text())
    assert tried == [4] and res["status"] == "oom" and "Lower --micro-batch (try 2)" in res["error"]
    assert "Lower --micro-batch (try 2)" in capsys.readouterr().err
