"""LAD as the loss of TRL's GRPOTrainer: a subclass at its loss hook (_compute_loss), nothing else changed.

TRL samples, scores and computes group-normalised advantages as usual; only the policy loss is
lad.lad_loss (paper Eq. 8) instead of TRL's clipped surrogate. Runs on CPU on the embedded default
(tiny.py's warm-started tiny model and the built-in sum task, verifier.sum_task_reward), no download:

    pip install -r requirements.txt -r requirements-frameworks.txt
    python examples/trl_lad.py --steps 20

For a real model: --model <hf-path-or-id> and a dataset of {"prompt", "gold"} rows with your own
reward function (see README "In other frameworks"). Tested with trl==1.16.0, transformers==5.19.0.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from lad import lad_loss  # noqa: E402


class LADGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose loss is lad_loss. TRL names -> lad_loss names: per_token_logps -> logp,
    old_per_token_logps -> old_logp, advantages -> advantages, completion_mask -> mask."""

    def __init__(self, *args, lad_divergence="js", lad_eta=0.25, lad_ratio="token", **kwargs):
        super().__init__(*args, **kwargs)
        self.lad_kwargs = dict(divergence=lad_divergence, eta=lad_eta, ratio=lad_ratio)
        self.lad_record = None   # set to a list to keep each call's tensors (tests compare against lad_loss)

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1))
        # TRL skips old_per_token_logps when the batch is on-policy (num_iterations == 1): then pi_old = pi.
        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        weights = None
        if self.use_vllm and self.vllm_importance_sampling_correction:
            weights = inputs["importance_sampling_ratio"]           # TRL's truncated IS correction
        loss, stats = lad_loss(per_token_logps, old, inputs["advantages"], mask, agg="token-mean",
                               weights=weights, **self.lad_kwargs)
        if self.lad_record is not None:
            self.lad_record.append(dict(logp=per_token_logps.detach().clone(), old_logp=old.detach().clone(),
                                        advantages=inputs["advantages"].detach().clone(),
                                        mask=mask.detach().clone(), loss=loss.detach().clone()))
        mode = "train" if self.model.training else "eval"
        for k, v in stats.items():
            self._metrics[mode][k].append(self.accelerator.gather(v.detach().float()).mean().item())
        if mode == "train":   # TRL turns HF's accumulation scaling off; scale as its own losses do
            loss = loss / self.current_gradient_accumulation_steps
        return loss


def sum_reward(prompts, completions, gold, **_):
    """Reward of the built-in task: verifier.sum_task_reward on each completion."""
    from verifier import sum_task_reward
    return [sum_task_reward(c, g) for c, g in zip(completions, gold)]


def build(model=None, steps=20, out="runs/trl_lad", prompts_per_step=2, group_size=4, lr=1e-4,
          max_completion_length=8, divergence="js", eta=0.25, seed=0, report_to="none"):
    """The trainer on the embedded default (model=None: tiny.py's warm-started model and train split)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tiny
    path = model or tiny.default_model_dir(seed)
    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = [{"prompt": r["prompt"], "gold": r["gold"]} for r in tiny.task_split("train")]
    cfg = GRPOConfig(
        output_dir=out, max_steps=steps, learning_rate=lr, seed=seed,
        per_device_train_batch_size=prompts_per_step * group_size, num_generations=group_size,
        max_completion_length=max_completion_length, temperature=1.0, beta=0.0,
        logging_steps=1, save_strategy="no", report_to=report_to, use_cpu=not torch.cuda.is_available(),
        bf16=False, dataloader_num_workers=0)
    return LADGRPOTrainer(model=policy, processing_class=tok, reward_funcs=sum_reward,
                          train_dataset=Dataset.from_list(rows), args=cfg,
                          lad_divergence=divergence, lad_eta=eta)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="HF path or id (default: tiny.py's embedded model)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="runs/trl_lad")
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--divergence", default="js")
    p.add_argument("--eta", type=float, default=0.25)
    p.add_argument("--report-to", default="none", help="none, or wandb (WANDB_MODE=offline for no network)")
    a = p.parse_args(argv)
    trainer = build(a.model, a.steps, a.out, a.prompts_per_step, a.group_size, a.lr,
                    divergence=a.divergence, eta=a.eta, report_to=a.report_to)
    trainer.train()
    return trainer


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
