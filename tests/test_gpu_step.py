"""bench/gpu_step.py on CPU (the GPU figures' script): the smoke run writes one JSON line per case -- a passing
FSDP2-vs-one-device check, and lad.main's step with positive throughput, the per-phase peak-memory fields and
their empty memory-plan slots; on 2 ranks a perturbed FSDP2 side makes the check FAIL with exit code 1; every
real shape's parameter count matches its Qwen2.5 model card; an out-of-memory halves an automatic micro-batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--shape", "tiny", "--prompt-len", "8", "--max-new-tokens", "16", "--prompts-per-step", "2"]
STEP_FIELDS = ["args", "lad_args", "device", "torch", "world_size", "mode", "precision", "params", "micro_batch",
               "tokens_per_step", "response_tokens_per_step", "response_len_mean", "update_s", "logprob_s",
               "rollout_s", "step_s", "step_tokens_per_s", "update_tokens_per_s", "update_response_tokens_per_s",
               "update_tokens_per_s_per_device", "logprob_tokens_per_s", "flops_per_token_6n", "flops_per_token_attn",
               "mfu", "mfu_attn", "logprob_mfu", "peak_tflops", "peak_gb", "cpu_max_rss_gib", "sdpa_train_calls",
               "status"]


def run(cmd, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_cpu_smoke_run(tmp_path):
    out = tmp_path / "tiny.jsonl"
    r = run([sys.executable, "bench/gpu_step.py", *SMALL, "--steps", "1", "--out", str(out)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    check, step = lines(out)
    assert check["case"] == "check" and check["status"] == "ok" and check["pass"]
    fp32 = check["fp32"]
    assert fp32["pass"] and fp32["loss_rel_diff"] <= 1e-5 and fp32["grad_norm_rel_diff"] <= 1e-5, fp32
    assert check["bf16"]["pass"]
    assert step["case"] == "step" and not [k for k in STEP_FIELDS if k not in step], \
        [k for k in STEP_FIELDS if k not in step]
    assert step["status"] == "ok" and step["world_size"] == 1 and step["mode"] == "fsdp2 fp32"
    la = step["lad_args"]                      # lad.main ran the workload's flags
    assert la["fsdp"] and not la["dynamic_sampling"] and la["eval_every"] == 0 and la["steps"] == 2
    n = 2 * 8
    assert step["responses_per_step"] == n and step["timed_steps"] == 1 and len(step["update_s"]) == 1
    assert 0 < step["response_len_mean"] <= 16
    assert step["tokens_per_step"] == pytest.approx(n * 8 + step["response_tokens_per_step"])
    assert step["update_tokens_per_s"] > 0 and step["logprob_tokens_per_s"] > 0 and step["step_tokens_per_s"] > 0
    assert step["mfu"] is None and step["cpu_max_rss_gib"] > 0                          # CPU: no peak, no CUDA
    assert set(step["peak_gb"]) == {"rollout", "reward", "logprob", "update", "sync"}
    assert all(v["measured_gb"] is None for v in step["peak_gb"].values())              # CPU: no allocator peak
    pred = {p: v["memplan_predicted_gb"] for p, v in step["peak_gb"].items()}              # the plan of the same run
    assert all(pred[p] > 0 for p in ("rollout", "logprob", "update")) and pred["reward"] is None
    assert step["sdpa_train_calls"]["calls"] > 0
    assert "fp32: loss single" in r.stdout and "PASS" in r.stdout and "not a performance figure" in r.stdout


def test_check_fails_on_perturbed_weights_two_ranks(tmp_path):
    """2 ranks (gloo): FSDP2 over both vs the whole batch on each; one perturbed weight on the FSDP2 side."""
    out = tmp_path / "bad.jsonl"
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             "bench/gpu_step.py", *SMALL, "--steps", "0", "--check-perturb", "1.0", "--out", str(out)])
    assert r.returncode != 0 and "check FAILED" in r.stderr, r.stdout[-2000:] + r.stderr[-3000:]
    (res,) = lines(out)                                                 # --steps 0: the check alone
    assert res["case"] == "check" and res["status"] == "check_failed" and res["world_size"] == 2
    assert not res["pass"] and not res["fp32"]["pass"] and res["fp32"]["loss_rel_diff"] > 1e-3
    assert "FAIL" in r.stdout


def test_shapes_match_published_param_counts(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import workload

    for shape, spec in workload.SHAPES.items():
        if spec is not None and spec[-1] is not None:                   # meta device: no memory, no init
            assert workload.count_params(workload.make_config(shape)) == pytest.approx(spec[-1], abs=0.006e9), shape


def test_out_of_memory_halves_auto_micro_batch_else_names_the_flag(monkeypatch, tmp_path, capsys):
    """An OOM (simulated: the GPU path cannot run here) halves an automatic micro-batch and starts again;
    with --micro-batch given, exit code 3 and a message naming the flag to lower, in the JSON line too."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_step

    tried = []

    def flaky(args, model, data, micro, pps):
        tried.append(micro)
        if micro > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        row = {f"perf/{p}_s": 1.0 for p in (*gpu_step.PHASES, "step")}
        row.update({"rollout/response_len_mean": 16.0, "loss/objective": 0.0, "train/grad_norm": 0.0})
        return [row], {}, gpu_step.workload.lad_args(model, data, micro_batch=micro, max_new_tokens=args.max_new_tokens)

    monkeypatch.setattr(gpu_step, "run_step", flaky)
    base = [*SMALL, "--check", "false", "--steps", "1"]
    threads = torch.get_num_threads()                          # main sets the thread count, as lad.main does
    try:
        out = tmp_path / "auto.jsonl"
        assert gpu_step.main(gpu_step.parse_args(gpu_step.Args, base + ["--out", str(out)])) == 0
        (auto,) = lines(out)
        auto_tried = list(tried)
        tried.clear()
        out = tmp_path / "fixed.jsonl"
        code = gpu_step.main(gpu_step.parse_args(gpu_step.Args, base + ["--micro-batch", "4", "--out", str(out)]))
    finally:
        torch.set_num_threads(threads)
    assert auto_tried == [8, 4, 2] and auto["micro_batch_tries"] == [8, 4, 2] and auto["micro_batch"] == 2
    assert auto["status"] == "ok" and auto["update_tokens_per_s"] == pytest.approx(2 * 8 * (8 + 16))
    assert code == 3 and tried == [4]
    (res,) = lines(out)
    assert res["status"] == "oom" and "Lower --micro-batch (try 2)" in res["error"]
    assert "Lower --micro-batch (try 2)" in capsys.readouterr().err
