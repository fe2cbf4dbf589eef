"""policy.py -- the policy being trained: its log-probs, its construction for a run, its checkpoints.

lad.py's loop calls every forward through `Policy`: an HF causal LM whose LM head and float32 log-softmax
run over response positions only, `logprob_chunk` tokens at a time (checkpointed when gradients are on), so
the float32 logits held at once are (chunk, vocab), never (batch, length, vocab); it also gives each
token's entropy and, for FlowRL, log Z of the prompt. `build_trainer` makes the run's `Trainer` (the HF
model, the Policy over it wrapped by DDP or sharded by FSDP2, AdamW with its warmup schedule, the frozen
initial policy where a loss needs one) and restores a checkpoint into it; `save_checkpoint` writes one
(HF folder, trainer.pt, rank{r}.pt, prompt.json). Helpers take lad.py's `args` and `Ranks`.

Commands: none (a module; lad.py uses it). Deliberately left out: tensor/pipeline/sequence parallelism
(FSDP2 data parallelism only), optimiser offload, sharded (per-rank) checkpoint files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import AutoModelForCausalLM, AutoTokenizer

import data
from baselines import LogZHead, prompt_mean_hidden
from common import UsageError, seed_for


class Policy(torch.nn.Module):
    """An HF causal LM whose forward returns log pi(y_t | x, y_<t) and the entropy of each response
    token, computing the LM head and log-softmax chunk by chunk over response positions only, so the
    float32 logits held at once are (logprob_chunk, vocab), never (batch, length, vocab). With grad
    enabled each chunk is checkpointed (its logits are recomputed in backward instead of kept).
    log_z_head: FlowRL's LogZHead, a submodule here so that DDP averages its gradients with the model's
    and the one optimiser trains both (as the authors attach it to the actor)."""

    def __init__(self, lm, chunk, temperature, log_z_head=None, bf16=False):
        super().__init__()
        self.lm, self.chunk, self.temperature, self.bf16 = lm, chunk, temperature, bf16
        self.log_z_head = log_z_head

    def _head(self, h, tgt):
        # at most two (c, V) float32 tensors alive at once (logits then log-softmax, then log-softmax and
        # p): at chunk 1024 and a 152k vocabulary each is 0.6 GB, so every extra temporary counts
        logits = self.lm.get_output_embeddings()(h).float()                        # (c, V) float32
        logits = logits.div_(self.temperature) if self.temperature != 1 else logits  # in place: Linear's
        logp_all = torch.log_softmax(logits, -1)                                   # backward needs no output
        del logits
        logp = logp_all.gather(-1, tgt[:, None])[:, 0]
        with torch.no_grad():                                                      # entropy estimate, detached
            ent = -logp_all.exp().mul_(logp_all).sum(-1)
        return logp, ent

    def forward(self, ids, attn, pos, tgt, valid, prompt_mask=None):
        """ids/attn (B, L) right-padded prompt+response; pos (B, T) index of the hidden state that
        predicts response token t (prompt_len + t - 1); tgt (B, T) the tokens; valid (B, T) bool.
        Returns logp (B, T), entropy (B, T) and, with prompt_mask (B, L), log Z (B,) of log_z_head (else None),
        float32. With bf16, the model's matmuls run under bf16 autocast (the weights stay float32)."""
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self._forward(ids, attn, pos, tgt, valid, prompt_mask)

    def _forward(self, ids, attn, pos, tgt, valid, prompt_mask):
        # no KV cache: a training forward never reuses it, and it would keep every layer's K/V alive
        hidden = self.lm.base_model(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state  # (B, L, H)
        log_z = None if prompt_mask is None else self.log_z_head(prompt_mean_hidden(hidden, prompt_mask)).float()
        h = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))[valid]       # (N, H)
        t = tgt[valid]                                                                      # (N,)
        lps, ents = [], []
        for lo in range(0, h.shape[0], self.chunk):
            hc, tc = h[lo:lo + self.chunk], t[lo:lo + self.chunk]
            if torch.is_grad_enabled():
                lp, en = torch.utils.checkpoint.checkpoint(self._head, hc, tc, use_reentrant=False)
            else:
                lp, en = self._head(hc, tc)
            lps.append(lp)
            ents.append(en)
        logp = torch.zeros(valid.shape, dtype=torch.float32, device=ids.device)
        ent = torch.zeros(valid.shape, dtype=torch.float32, device=ids.device)
        logp = logp.masked_scatter(valid, torch.cat(lps)) if lps else logp
        ent = ent.masked_scatter(valid, torch.cat(ents)) if ents else ent
        return logp, ent, log_z


@dataclasses.dataclass
class Trainer:
    """What is trained: the HF model `lm` (saved, synced into the engine) and its tokenizer; `policy`, the
    Policy over lm that every forward of the loop goes through (DDP-wrapped under torchrun, sharded in place
    under FSDP2); FlowRL's log Z head (or None); the optimiser and its lr schedule (--warmup-steps); pi_ref, the frozen initial policy (or None);
    Clip-Cov's per-rank generator; the run's initial model (pi_ref's source, kept across resumes)."""
    lm: torch.nn.Module
    tok: object
    policy: torch.nn.Module
    head: torch.nn.Module | None
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    reference: torch.nn.Module | None
    generator: torch.Generator
    init_model: str


def build_trainer(args, ctx, model_path, ckpt):
    """Load the model (resume > --model > the tiny warm start), wrap it (Policy, FSDP2 or DDP), make AdamW,
    restore a checkpoint's state or seed a fresh start, load pi_ref. Returns (Trainer, start step, cursor)."""
    st = read_trainer_state(args, ctx, ckpt)
    if args.model and not Path(args.model).exists() and ckpt is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")                  # no network at run time
    lm, tok = load_hf(model_path, ctx.device, "model", args.max_position_embeddings)
    head = None
    if args.loss == "flowrl":
        with torch.random.fork_rng(devices=[]):        # the head's init is a function of --seed alone
            torch.manual_seed(seed_for("init", args.seed))
            head = LogZHead(lm.config.hidden_size).to(ctx.device)
    policy = Policy(lm, args.logprob_chunk, args.temperature, log_z_head=head, bf16=args.bf16)
    if args.activation_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.fsdp:                      # before the optimiser sees the parameters: fully_shard swaps them for DTensors
        shard_policy(policy, lm, ctx.device.type == "cuda")
    # one optimiser for the model and the head (the authors train ProjZ with the actor's), model first
    opt = torch.optim.AdamW(list(lm.parameters()) + (list(head.parameters()) if head is not None else []),
                            lr=args.lr, weight_decay=args.weight_decay)
    ctx.ddp = ctx.world > 1 and not args.fsdp
    if ctx.ddp:                        # buffers (rotary tables) are equal on every rank: no per-forward broadcast
        policy = torch.nn.parallel.DistributedDataParallel(
            policy, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None, broadcast_buffers=False)
    # linear warmup over the first --warmup-steps optimiser steps, then constant (LambdaLR steps after each)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / args.warmup_steps) if args.warmup_steps else 1.0)
    generator = torch.Generator().manual_seed(seed_for("clipcov", args.seed, rank=ctx.rank))
    tr = Trainer(lm, tok, policy, head, opt, sched, None, generator, model_path)
    start, cursor = load_state(args, ctx, tr, ckpt, st)
    if needs_reference(args):
        ref_lm = load_hf(tr.init_model, ctx.device, "reference (initial) model",
                         args.max_position_embeddings)[0].requires_grad_(False).eval()
        tr.reference = Policy(ref_lm, args.logprob_chunk, args.temperature, bf16=args.bf16)
        if args.fsdp:
            shard_policy(tr.reference, ref_lm, ctx.device.type == "cuda")
    return tr, start, cursor


def needs_reference(args) -> bool:
    """Whether --loss needs the frozen initial policy's log-probs (FlowRL's pi_ref, GRPO's KL anchor)."""
    return (args.loss == "flowrl" and args.flowrl_ref == "init") or (args.loss == "grpo" and args.kl_coef > 0)


def load_hf(path, device, what, max_position_embeddings=0):
    """An HF causal LM in float32 on device and its tokenizer (pad = EOS where it has none); its context
    raised to max_position_embeddings when given (a config override: RoPE positions past the trained
    length, the user's choice, docs/gpu.md)."""
    override = {"max_position_embeddings": max_position_embeddings} if max_position_embeddings else {}
    try:
        tok = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **override).to(device)
    except OSError as e:
        raise UsageError(f"cannot load the {what} {path!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return lm, tok


def shard_policy(policy, lm, cuda):
    """FSDP2: each decoder layer is one unit (its all-gather overlaps the previous layer's compute), the
    Policy the root (embeddings, final norm, the possibly tied LM head). On GPU, bf16 compute with fp32
    master weights, optimiser state and gradient reduction. Like DDP, FSDP2 averages gradients over ranks,
    so global_denominators applies unchanged. Parameter names stay the HF ones."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda else MixedPrecisionPolicy()
    for layer in lm.base_model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(policy, mp_policy=mp)
    return policy


def read_trainer_state(args, ctx, ckpt):
    """A checkpoint's trainer.pt, checked against this run before any weights load (None: a fresh start)."""
    if ckpt is None:
        return None
    st = torch.load(ckpt / "trainer.pt", weights_only=False)
    if st["args"].get("loss", "lad") != args.loss:
        raise UsageError(f"--resume: checkpoint was trained with --loss {st['args'].get('loss')}, not {args.loss}")
    if st["world"] != ctx.world:
        raise UsageError(f"--resume: checkpoint was written by {st['world']} ranks, this run has {ctx.world}")
    if args.fsdp and not st["args"].get("fsdp", False):
        # its optimiser state is keyed by parameter position; set_optimizer_state_dict needs names
        raise UsageError("--resume: checkpoint was written without --fsdp; resume it with --fsdp false")
    if "optimizer" not in st and not args.fresh_optimizer:
        raise UsageError(f"--resume: {ckpt} was saved without its optimiser state (--save-optimizer false); "
                         "add --fresh-optimizer true to resume with a fresh AdamW")
    return st


def load_state(args, ctx, tr, ckpt, st):
    """Resume from st, read_trainer_state's (optimiser, step, data cursor, RNG states, the log Z head,
    Clip-Cov's generator, the initial model's path), or a fresh start (per-rank seeds). Returns (start step, cursor)."""
    if ckpt is None:
        random.seed(seed_for("init", args.seed, rank=ctx.rank))
        torch.manual_seed(seed_for("init", args.seed, rank=ctx.rank))
        return 0, 0
    if not args.fresh_optimizer and args.fsdp:   # a full (gathered) optimiser state, re-sharded on load
        set_optimizer_state_dict(tr.lm, tr.opt, st["optimizer"], options=StateDictOptions(full_state_dict=True))
    elif not args.fresh_optimizer:
        tr.opt.load_state_dict(st["optimizer"])
    if "scheduler" in st and not args.fresh_optimizer:
        tr.sched.load_state_dict(st["scheduler"])
    if tr.head is not None:
        tr.head.load_state_dict(st["log_z_head"])
    rs = torch.load(ckpt / f"rank{ctx.rank}.pt", weights_only=False)
    tr.generator.set_state(rs["clipcov_generator"])
    torch.set_rng_state(rs["torch"])
    random.setstate(rs["python"])
    if ctx.device.type == "cuda" and rs["cuda"] is not None:
        torch.cuda.set_rng_state_all(rs["cuda"])
    tr.init_model = st.get("init_model", tr.init_model)
    return st["step"], rs["cursor"]


def save_checkpoint(args, ctx, tr, out, step, cursor):
    """out/ckpt-NNNNNN: the HF folder (rank 0; weights in --save-dtype) with prompt.json (the prompt template and
    chat setting it was trained with), trainer.pt (step, args, the initial
    model's path, the log Z head, and AdamW's state unless --save-optimizer false) and rank{r}.pt (data cursor,
    RNG states, Clip-Cov's generator); then out/latest, and with --keep-last N the older ones removed."""
    ck = Path(out) / f"ckpt-{step:06d}"
    ck.mkdir(parents=True, exist_ok=True)
    dtype = save_dtype(args, ctx)
    model_sd = opt_sd = None
    if args.fsdp:                      # gather full state dicts (collectives: every rank takes part)
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(tr.lm, options=full)
        opt_sd = get_optimizer_state_dict(tr.lm, tr.opt, options=full) if args.save_optimizer else None
    if ctx.rank == 0:
        if dtype != torch.float32:     # a cast copy, tensor by tensor; the trained weights stay float32
            model_sd = {k: v.to(dtype) for k, v in (model_sd or tr.lm.state_dict()).items()}
        tr.lm.save_pretrained(ck, state_dict=model_sd)
        tr.tok.save_pretrained(ck)
        # the prompt format it was trained in: eval.py scores the checkpoint in it unless told otherwise
        (ck / "prompt.json").write_text(json.dumps({"template": args.prompt_template, "chat": data.use_chat_template(
            tr.tok, args.chat), "train_data": args.train_data}, indent=1) + "\n")
        state = {"step": step, "world": ctx.world, "args": dataclasses.asdict(args), "init_model": tr.init_model,
                 "scheduler": tr.sched.state_dict(),
                 **({"log_z_head": tr.head.state_dict()} if tr.head is not None else {})}
        if args.save_optimizer:
            state["optimizer"] = opt_sd if opt_sd is not None else tr.opt.state_dict()
        torch.save(state, ck / "trainer.pt")
    torch.save({"cursor": cursor, "torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "clipcov_generator": tr.generator.get_state()}, ck / f"rank{ctx.rank}.pt")
    if dist.is_initialized():
        dist.barrier()
    if ctx.rank == 0:
        (Path(out) / "latest").write_text(ck.name + "\n")
        done = sorted(p for p in Path(out).glob("ckpt-*") if (p / "trainer.pt").is_file())
        for old in done[:-args.keep_last] if args.keep_last else []:
            shutil.rmtree(old)
    return ck


def save_dtype(args, ctx):
    """--save-dtype resolved: auto = the compute dtype (bf16 under --bf16, or --fsdp on a GPU; else float32)."""
    if args.save_dtype == "auto":
        return torch.bfloat16 if args.bf16 or (args.fsdp and ctx.device.type == "cuda") else torch.float32
    return torch.bfloat16 if args.save_dtype == "bf16" else torch.float32


def find_checkpoint(path):
    p = Path(path)
    if (p / "trainer.pt").is_file():
        return p
    if (p / "latest").is_file():
        ck = p / (p / "latest").read_text().strip()
        if (ck / "trainer.pt").is_file():
            return ck
    raise UsageError(f"--resume {path}: no checkpoint there (expected trainer.pt, or a run folder with 'latest')")


def make_batch(items, pad_id, device):
    """items: list of (prompt_ids, response_ids). Returns ids, attn, pos, tgt, valid (see Policy.forward)."""
    L = max(len(p) + len(r) for p, r in items)
    T = max(1, max(len(r) for _, r in items))
    ids = torch.full((len(items), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(items), L), dtype=torch.long)
    pos = torch.zeros((len(items), T), dtype=torch.long)
    tgt = torch.full((len(items), T), pad_id, dtype=torch.long)
    valid = torch.zeros((len(items), T), dtype=torch.bool)
    for b, (p, r) in enumerate(items):
        ids[b, :len(p) + len(r)] = torch.tensor(list(p) + list(r))
        attn[b, :len(p) + len(r)] = 1
        pos[b, :len(r)] = torch.arange(len(p) - 1, len(p) + len(r) - 1)
        tgt[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        valid[b, :len(r)] = True
    return [x.to(device) for x in (ids, attn, pos, tgt, valid)]


def prompt_mask_of(items, L, device):
    """(B, L) 1 at the prompt positions of make_batch's rows (the prompt comes first in each)."""
    plen = torch.tensor([len(p) for p, _ in items], device=device)
    return (torch.arange(L, device=device)[None] < plen[:, None]).float()
