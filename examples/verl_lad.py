"""LAD as a verl policy loss: verl's registered policy-loss signature, our per-token loss, verl's aggregation.

Select it with two lines of verl configuration (the first makes verl's workers import this module,
which registers the loss; the module must be importable, e.g. PYTHONPATH=<this repo>):

    actor_rollout_ref.model.external_lib=examples.verl_lad
    actor_rollout_ref.actor.policy_loss.loss_mode=lad

(or export VERL_USE_EXTERNAL_MODULES=examples.verl_lad instead of the first line). The loss
aggregation is verl's own actor_rollout_ref.actor.loss_agg_mode (token-mean, token-sum,
seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm), applied by verl's agg_loss with
its global batch information, so data/sequence parallel scaling is verl's. LAD's divergence and
eta come from LAD_DIVERGENCE / LAD_ETA / LAD_RATIO in the workers' environment (default js, 0.25,
token). Tested against verl 0.9.1's core_algos (imported on CPU, installed with --no-deps).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lad import lad_token_loss  # noqa: E402

try:  # verl present: its aggregation and registry
    from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss
    HAVE_VERL = True
except ImportError:  # verl absent: same semantics as verl's agg_loss, one data-parallel rank
    HAVE_VERL = False

    def agg_loss(loss_mat, loss_mask, loss_agg_mode, dp_size=1, batch_num_tokens=None,
                 global_batch_size=None, loss_scale_factor=None):
        """verl 0.9.1 agg_loss's modes (loss = sum over this rank * dp_size / global count)."""
        masked = loss_mat * loss_mask
        if loss_agg_mode == "token-mean":
            n = loss_mask.sum() if batch_num_tokens is None else batch_num_tokens
            return masked.sum() / n * dp_size
        if loss_agg_mode == "token-sum":
            return masked.sum() * dp_size
        if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"):
            tok = loss_mask.sum(-1)
            seq = masked.sum(-1) if loss_agg_mode != "seq-mean-token-mean" else masked.sum(-1) / (tok + 1e-8)
            seq_mask = (tok > 0).to(seq.dtype)
            g = seq_mask.sum() if global_batch_size is None else global_batch_size
            loss = (seq * seq_mask).sum() / g * dp_size
            if loss_agg_mode == "seq-mean-token-sum-norm":
                loss = loss / (loss_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)
            return loss
        raise ValueError(f"Invalid loss_agg_mode: {loss_agg_mode}")

    def register_policy_loss(name):
        return lambda fn: fn

DIVERGENCE = os.environ.get("LAD_DIVERGENCE", "js")
ETA = float(os.environ.get("LAD_ETA", "0.25"))
RATIO = os.environ.get("LAD_RATIO", "token")


def _global_batch_info(config):
    info = getattr(config, "global_batch_info", None) if config is not None else None
    return dict(info) if info else {}


@register_policy_loss("lad")
def compute_policy_loss_lad(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                            response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config=None,
                            rollout_is_weights: torch.Tensor | None = None):
    """verl policy loss "lad": lad_token_loss (paper Eq. 8, gradient Eq. 9) aggregated by verl's agg_loss.

    old_log_prob, log_prob, advantages, response_mask: (bs, response_length), verl's names for
    lad's old_logp, logp, advantages, mask (verl broadcasts the per-response advantage over its
    tokens). rollout_is_weights: verl's rollout correction, a per-token multiplier (as lad's weights).
    Returns (loss scalar, metrics dict of floats) as verl's policy losses do.
    """
    mask = response_mask.to(log_prob.dtype)
    per_tok = lad_token_loss(log_prob, old_log_prob, advantages, mask, divergence=DIVERGENCE, eta=ETA,
                             ratio=RATIO)
    if rollout_is_weights is not None:
        per_tok = per_tok * rollout_is_weights.detach()
    loss = agg_loss(loss_mat=per_tok, loss_mask=mask, loss_agg_mode=loss_agg_mode, **_global_batch_info(config))
    with torch.no_grad():
        n = mask.sum().clamp_min(1)
        log_r = (log_prob - old_log_prob).detach()
        metrics = {"actor/ppo_kl": float((-log_r * mask).sum() / n),
                   "actor/lad_ratio_mean": float((log_r.clamp(-20, 20).exp() * mask).sum() / n)}
    return loss, metrics
