"""LAD as the loss of TRL's GRPOTrainer: a subclass at its loss hook (_compute_loss), nothing else changed.

TRL samples, scores and computes group-normalised advantages as usual; only the policy loss is
lad.lad_loss (paper Eq. 8) instead of TRL's clipped surrogate. The batch geometry is lad.py's: each
step generates --prompts-per-step x --group-size responses and takes --updates-per-rollout optimiser
steps on disjoint mini-batches of them (TRL: steps_per_generation). Runs on CPU on the embedded
default (the tiny model warm-started on builtin-sum, its reward tasks.sum_reward), no download:

    pip install -r requirements.txt -r requirements-frameworks.txt
    python examples/trl_lad.py --steps 20
    (1 GPU: the same with --model <hf-path>; more GPUs: accelerate launch examples/trl_lad.py ...)

For a real model: --model <hf-path> and a dataset of {"prompt", "gold"} rows with your own reward
function (docs/frameworks.md). Tested with trl==1.16.0, transformers==5.19.0.
Deliberately left out: TRL's vLLM modes and its own KL (beta 0, as the paper's LAD).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import tasks  # noqa: E402
import tiny  # noqa: E402
from common import parse_args  # noqa: E402
from lad import lad_loss  # noqa: E402


class LADGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose loss is lad_loss. TRL names -> lad_loss names: per_token_logps -> logp,
    old_per_token_logps -> old_logp, advantages -> advantages, completion_mask -> mask."""

    def __init__(self, *args, lad_divergence="js", lad_eta=0.25, lad_ratio="token", **kwargs):
        super().__init__(*args, **kwargs)
        self.lad_kwargs = dict(divergence=lad_divergence, eta=lad_eta, ratio=lad_ratio)

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1))
        # TRL skips old_per_token_logps when the batch is on-policy (one update per generation): pi_old = pi.
        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        weights = None
        if self.use_vllm and self.vllm_importance_sampling_correction:
            weights = inputs["importance_sampling_ratio"]           # TRL's truncated IS correction
        loss, stats = lad_loss(per_token_logps, old, inputs["advantages"], mask, agg="token-mean",
                               weights=weights, **self.lad_kwargs)
        mode = "train" if self.model.training else "eval"
        for k, v in stats.items():
            self._metrics[mode][k].append(self.accelerator.gather(v.detach().float()).mean().item())
        if mode == "train":   # TRL turns HF's accumulation scaling off; scale as its own losses do
            loss = loss / self.current_gradient_accumulation_steps
        return loss


def sum_reward(prompts, completions, gold, **_):
    """The reward of builtin-sum (tasks.sum_reward) on each completion."""
    return [tasks.sum_reward(c, g) for c, g in zip(completions, gold)]


@dataclasses.dataclass
class Args:
    """TRL's GRPOTrainer with LAD's loss on the embedded default (see the module docstring)."""

    model: str = ""
    """HF model folder; empty = the tiny model warm-started on builtin-sum (lad.py's default)"""
    steps: int = 20
    """rollout steps (TRL: generations); each takes --updates-per-rollout optimiser steps"""
    out: str = "runs/trl_lad"
    """TRL's output folder"""
    prompts_per_step: int = 2
    """prompts per rollout step (as lad.py)"""
    group_size: int = 8
    """responses per prompt (G; TRL: num_generations)"""
    updates_per_rollout: int = 1
    """optimiser steps per rollout, on disjoint mini-batches (as lad.py; TRL: steps_per_generation)"""
    max_new_tokens: int = 12
    """response length cap (TRL: max_completion_length; builtin-sum's 12, as lad.py)"""
    lr: float = 1e-4
    """AdamW learning rate, constant"""
    divergence: str = "js"
    """LAD's f (paper Table 5), as lad.py"""
    inv_eta: float = 4.0
    """1/eta (Eq. 5), as lad.py"""
    seed: int = 0
    """TRL's seed"""
    wandb: str = "disabled"
    """disabled, offline or online (TRL's report_to wandb, with WANDB_MODE set from this)"""


def build(args):
    """The trainer on the embedded default (args.model empty: the warm-started tiny model, builtin-sum's
    training prompts) or on args.model with the same prompts."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = args.model or tiny.default_model_dir(tasks.SUM)
    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = [{"prompt": r["prompt"], "gold": r["gold"]} for r in tasks.builtin_rows(tasks.SUM, "train")]
    if args.wandb != "disabled":
        os.environ.setdefault("WANDB_MODE", args.wandb)
    n = args.prompts_per_step * args.group_size
    if n % args.updates_per_rollout:
        raise SystemExit(f"trl_lad.py: error: {n} responses per step do not split into {args.updates_per_rollout} mini-batches")
    cfg = GRPOConfig(
        output_dir=args.out, max_steps=args.steps * args.updates_per_rollout, learning_rate=args.lr, seed=args.seed,
        per_device_train_batch_size=n // args.updates_per_rollout, steps_per_generation=args.updates_per_rollout,
        num_generations=args.group_size, max_completion_length=args.max_new_tokens, temperature=1.0, beta=0.0,
        logging_steps=1, save_strategy="no", report_to="none" if args.wandb == "disabled" else "wandb",
        use_cpu=not torch.cuda.is_available(), bf16=False, dataloader_num_workers=0)
    return LADGRPOTrainer(model=policy, processing_class=tok, reward_funcs=sum_reward,
                          train_dataset=Dataset.from_list(rows), args=cfg,
                          lad_divergence=args.divergence, lad_eta=1.0 / args.inv_eta)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    build(parse_args(Args)).train()
