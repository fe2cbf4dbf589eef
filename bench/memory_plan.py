"""Memory plan vs measured: memplan.py's per-phase peaks against the peaks of lad.py's real phases, on CPU.

SPEC "Numbers to meet", GPU memory: a plan that predicts each phase's per-GPU peak from a model config
and the run's flags, within 0.75-1.33 of what is measured (on CPU for small models here). Each case
builds a small random-init Qwen2 (transformers' Qwen2Config / Qwen2ForCausalLM), an AdamW over it, warms
it up with one optimiser step (so AdamW's states exist, as from the second step of a run on), and runs
what lad.py's loop runs:
    rollout       rollout.HFEngine.generate of one micro-batch's prompts (left-padded: ragged lengths) up to
                  the response length, sampling from the trained module (float32 cases without checkpointing:
                  lad.py's HF engine does not autocast, and checkpointing does not change generate)
    old_logprobs  policy.Policy forward under no_grad on one micro-batch from policy.make_batch
    update        two micro-batches of Policy forward with grad + lad.lad_loss + backward (the second one
                  accumulates into allocated gradients, as every micro-batch after a step's first)
    step          clip_grad_norm_ + AdamW.step
Micro-batches are ragged (every other response one token shorter), so transformers passes SDPA a mask as
in a real batch. Measured = the bytes of the storages alive when the phase starts (weights, AdamW states,
gradients) + the peak of bytes created during it (bench/logprob_memory.py's LiveBytes instrument), against
the plan's sum for that phase (memplan.Settings with cuda=False: no CUDA context, the CPU AdamW path).
"activations" compares the parts that exclude those resident storages (plan minus its resident terms vs
the LiveBytes peak). Cases: float32 with and without activation checkpointing, micro-batches of 1 to 8,
a token budget, a vocabulary-sized head (Qwen2's 151936), and torch.autocast bf16 (lad.py's --bf16).

    python bench/memory_plan.py                       # every case (a few minutes on 2 idle cores)
    python bench/memory_plan.py --cases a-mb1,b-chunk128

Deliberately left out (not measurable here; the plan takes them from documented accounting): vLLM's
share of the GPU and its KV cache, the CUDA context and NCCL buffers, FSDP2's unsharded parameters and
bf16 MixedPrecisionPolicy (CPU FSDP2 computes in float32), CUDA kernels' workspaces, allocator
fragmentation. LiveBytes sees every tensor an op returns, not a kernel's private scratch memory.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import lad  # noqa: E402
import memplan  # noqa: E402
from policy import Policy, make_batch  # noqa: E402
import rollout  # noqa: E402
from common import parse_args  # noqa: E402
from logprob_memory import LiveBytes  # noqa: E402

MiB = 2 ** 20


@dataclasses.dataclass
class Args:
    """Memory plan (memplan.py) vs the measured peaks of lad.py's phases on small CPU models."""

    cases: str = "all"
    """comma-separated case names (see CASES), or all"""
    threads: int = 2
    """torch CPU threads (memory does not depend on it)"""


# name: (hidden, intermediate, layers, heads, kv heads, vocab, tied, micro-batch, token budget, prompt,
#        response, chunk, checkpointing, bf16)
CASES = {
    "a-mb1": (256, 1408, 4, 4, 2, 4096, False, 1, 0, 64, 96, 1024, False, False),
    "a-mb4": (256, 1408, 4, 4, 2, 4096, False, 4, 0, 64, 96, 1024, False, False),
    "a-mb8": (256, 1408, 4, 4, 2, 4096, False, 8, 0, 64, 96, 1024, False, False),
    "a-mb8-ckpt": (256, 1408, 4, 4, 2, 4096, False, 8, 0, 64, 96, 1024, True, False),
    "a-mb2-bf16": (256, 1408, 4, 4, 2, 4096, False, 2, 0, 32, 96, 128, False, True),
    "a-mb2-bf16-ckpt": (256, 1408, 4, 4, 2, 4096, False, 2, 0, 32, 96, 128, True, True),
    "b-vocab": (128, 704, 2, 2, 1, 151936, True, 2, 0, 32, 160, 1024, False, False),
    "b-chunk128": (128, 704, 2, 2, 1, 151936, True, 2, 0, 32, 160, 128, False, False),
    "c-tokens768": (512, 2816, 2, 8, 2, 8192, False, 0, 768, 64, 128, 256, False, False),
    "c-tokens768-ckpt": (512, 2816, 2, 8, 2, 8192, False, 0, 768, 64, 128, 256, True, False),
}


def config_of(c):
    h, i, layers, heads, kv, vocab, tied = c[:7]
    return {"model_type": "qwen2", "hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
            "tie_word_embeddings": tied, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6, "pad_token_id": 0, "eos_token_id": 1}


def settings_of(c):
    """The plan's settings of a case: the HF engine generating one micro-batch's sequences per call."""
    mb, budget, prompt, response, chunk, ckpt, bf16 = c[7:]
    seqs = budget // (prompt + response) if budget else mb
    return memplan.Settings(micro_batch=mb or 1, micro_batch_tokens=budget, prompt_tokens=prompt,
                            max_new_tokens=response, logprob_chunk=chunk, activation_checkpointing=ckpt, bf16=bf16,
                            engine="hf", gen_batch=seqs, prompts_per_step=seqs, group_size=1, cuda=False,
                            gpu_memory_gb=1024)


def storages_bytes(tensors):
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def resident(lm, opt):
    """Bytes of the weights, their gradients and AdamW's states that exist now."""
    ps = list(lm.parameters())
    return storages_bytes(ps + [p.grad for p in ps] + [v for st in opt.state.values() for v in st.values()])


def micro_batches(s, vocab, seed):
    """Two ragged micro-batches of lad.py's items: prompts of prompt_tokens, responses of max_new_tokens
    (every other one a token shorter), as many per micro-batch as the count or the token budget allows."""
    n = s.micro_batch_tokens // (s.prompt_tokens + s.max_new_tokens) if s.micro_batch_tokens else s.micro_batch
    g = torch.Generator().manual_seed(seed)
    return [[(torch.randint(2, vocab, (s.prompt_tokens,), generator=g).tolist(),
              torch.randint(2, vocab, (s.max_new_tokens - b % 2,), generator=g).tolist()) for b in range(n)]
            for _ in range(2)]


def update_micro(policy, items, denom):
    """One micro-batch of lad.main's update: Policy forward with grad, lad_loss over the global denominator,
    backward."""
    ids, attn, pos, tgt, valid = make_batch(items, 0, torch.device("cpu"))
    logp, _, _ = policy(ids, attn, pos, tgt, valid)
    old = logp.detach() + 0.01
    adv = torch.linspace(-1, 1, logp.shape[0])
    loss, _ = lad.lad_loss(logp.float(), old, adv, valid.float(), denom=denom)
    loss.backward()


def run_case(name, c):
    cfg, s = config_of(c), settings_of(c)
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(Qwen2Config(**cfg, attn_implementation="sdpa"))
    if s.activation_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.train()
    policy = Policy(lm, s.logprob_chunk, 1.0, bf16=s.bf16)   # lad.py --bf16: autocast inside Policy.forward
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-6)
    update_micro(policy, [([2, 3], [4, 5])], 2.0)       # warm-up step: AdamW's states exist from here on
    opt.step()
    opt.zero_grad(set_to_none=True)
    batches = micro_batches(s, cfg["vocab_size"], seed=1)
    denom = float(sum(len(r) for mb in batches for _, r in mb))
    measured = {}
    base = resident(lm, opt)
    # lad.py's HF engine samples in the module's float32, and checkpointing does not touch generate
    if not s.bf16 and not s.activation_checkpointing:
        engine = rollout.HFEngine(lm, SimpleNamespace(pad_token_id=0, eos_token_id=1), batch_size=s.gen_batch)
        prompts = [p[:len(p) - b % 2] for b, (p, _) in enumerate(batches[0])]      # ragged: left-padded
        with LiveBytes() as lb:
            engine.generate(prompts, 1, max_new_tokens=s.max_new_tokens, seed=0)
        measured["rollout"] = (base, lb.peak)
    with torch.no_grad(), LiveBytes() as lb:
        policy(*make_batch(batches[0], 0, torch.device("cpu")))
    measured["old_logprobs"] = (base, lb.peak)
    with LiveBytes() as lb:
        for mb in batches:
            update_micro(policy, mb, denom)
    measured["update"] = (base, lb.peak)
    base = resident(lm, opt)
    with LiveBytes() as lb:
        torch.nn.utils.clip_grad_norm_(list(lm.parameters()), 1.0)
        opt.step()
    measured["step"] = (base, lb.peak)
    opt.zero_grad(set_to_none=True)

    p = memplan.plan(cfg, s)
    rows = []
    for phase, (res, live) in measured.items():
        planned = p.peak(phase)
        planned_res = sum(p.phases[phase].get(k, 0) for k in ("weights", "optimizer")
                          + (("gradients",) if phase == "step" else ()))
        rows.append((name, phase, planned, res + live, planned - planned_res, live))
    return rows


def main(a):
    torch.set_num_threads(a.threads)
    names = list(CASES) if a.cases == "all" else a.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"memory_plan.py: error: unknown case(s) {unknown}; choose from {list(CASES)}", file=sys.stderr)
        sys.exit(2)
    print(f"# memory plan vs measured, CPU ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {time.strftime('%Y-%m-%d', time.gmtime())} UTC", flush=True)
    print("# model: hidden/intermediate/layers/heads/kv heads/vocab; settings: micro-batch (or token budget) x "
          "prompt+response tokens, chunk, checkpointing, dtype", flush=True)
    print(f"{'case':18s} {'model':26s} {'settings':36s} {'phase':12s} {'planned MiB':>11s} {'measured MiB':>12s} "
          f"{'ratio':>6s}   {'activations: plan/meas MiB':>26s} {'ratio':>6s}", flush=True)
    t0 = time.time()
    ratios, act_ratios = [], []
    for name in names:
        c = CASES[name]
        h, i, layers, heads, kv, vocab, tied, mb, budget, prompt, response, chunk, ckpt, bf16 = c
        model = f"{h}/{i}/{layers}/{heads}/{kv}/{vocab}{' tied' if tied else ''}"
        sets = (f"{f'{budget} tok' if budget else f'{mb} seq'} x {prompt}+{response}, c{chunk}"
                f"{', ckpt' if ckpt else ''}, {'bf16' if bf16 else 'fp32'}")
        for _, phase, planned, meas, planned_act, meas_act in run_case(name, c):
            r, ra = planned / meas, planned_act / meas_act
            ratios.append(r)
            act_ratios.append(ra)
            print(f"{name:18s} {model:26s} {sets:36s} {phase:12s} {planned / MiB:11.1f} {meas / MiB:12.1f} {r:6.3f}   "
                  f"{planned_act / MiB:12.1f} / {meas_act / MiB:11.1f} {ra:6.3f}", flush=True)
    worst = max(ratios, key=lambda r: max(r, 1 / r))
    worst_act = max(act_ratios, key=lambda r: max(r, 1 / r))
    print(f"activations alone (phase minus its resident storages): worst ratio {worst_act:.3f} over "
          f"{len(act_ratios)} cases ({time.time() - t0:.0f} s)")
    print(f"memory plan vs measured: worst ratio {worst:.3f} over {len(ratios)} cases")


if __name__ == "__main__":
    main(parse_args(Args))
