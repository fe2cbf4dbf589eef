"""memplan.py -- the per-GPU memory plan of a lad.py run, from a model's config.json and the run's flags.

SPEC "Numbers to meet", GPU memory: predict each phase's per-GPU peak before a run starts. The paper's
runs (App. C.2) are big: Qwen2.5-7B, 256 prompts x 8 responses of up to 8192 tokens on two 140 GB GPUs
(math); DeepSeek-R1-Distill-Qwen-7B on eight 80 GB GPUs (code); 1.5B backbones at 4096 tokens. This says,
without a GPU, without vLLM and without weights, whether such a run fits, and if not which flags make it.

A plan is a table of named terms in bytes (terms() below: one line each, with where its formula comes
from; TERMS: the phases each one counts in), summed per phase of one training step as lad.py runs it:
    rollout       the engine awake: vLLM's share of the GPU, or HF generate's KV cache
    old_logprobs  the trainer's no-grad forward of one micro-batch (lad.old_logprobs)
    ref_logprobs  the same through the frozen reference model (FlowRL --flowrl-ref init, GRPO --kl-coef > 0)
    update        forward + backward of one micro-batch with every gradient allocated (lad.main's step 4)
    step          clip_grad_norm_ + AdamW.step
Sizes are worst cases: every response at --max-new-tokens, every prompt at the longest prompt, ragged
lengths whenever a forward holds several sequences (policy.make_batch right-pads, so transformers passes
SDPA a mask; see the attention term). A run fits when every phase leaves HEADROOM (10%) of the GPU free
and vLLM's share can hold what vLLM needs to start. bench/memory_plan.py measures the rollout (HF
engine), old_logprobs, update and step phases of small models on CPU and compares them with this plan
(bench/RESULTS.md "memory plan"); the GPU-only terms rest on the sources named beside them.

Commands (through lad.py; this module has no CLI and imports no torch)
    python lad.py --plan true --model DIR --world-size 8 --gpu-memory-gb 80 [the run's flags]
    exit 0: fits; 1: does not fit (the plan names flags that would make it fit); 2: usage error

Deliberately left out, and what the plan cannot know here: allocator fragmentation (run with
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True and keep some headroom), the CUDA context and NCCL
buffers (documented constants below, measurable only on a GPU), vLLM's internals (its KV cache,
activations and CUDA graphs live inside the gpu_memory_utilization share it is given: vLLM's own
accounting; its weights and one sequence's KV must fit in that share), kernels' private workspaces,
and architectures other than Qwen2/Llama-style decoder blocks (attention + SwiGLU MLP + RMSNorm).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

GiB = 2 ** 30
# Documented constants for what only a GPU can measure (assumptions, not measurements):
CUDA_CONTEXT = 1.0 * GiB        # CUDA context + cuBLAS workspaces of one PyTorch process (typically 0.5-1 GiB)
NCCL_BUFFERS = 1.0 * GiB        # NCCL communicators' buffers with world > 1 (NCCL_BUFFSIZE 4 MiB x channels x peers)
VLLM_ASLEEP = 0.10              # vLLM docs (sleep mode): level 1 "releas[es] up to 90%+" of the memory it holds
VLLM_OVERHEAD = 2.0 * GiB       # vLLM's non-KV memory beyond its weights (profiled activations, CUDA graphs)
HEADROOM = 0.10                 # of the GPU a plan must leave free to fit: fragmentation, what it cannot count
ARCHITECTURES = ("qwen2", "llama", "mistral")


@dataclasses.dataclass
class Settings:
    """The run's settings that decide memory; field names are lad.py's flags where one exists."""

    world_size: int = 1
    fsdp: bool = False
    activation_checkpointing: bool = False
    bf16: bool = False                 # autocast bf16 compute over float32 master weights (without FSDP)
    micro_batch: int = 64              # responses per forward (used when micro_batch_tokens == 0)
    micro_batch_tokens: int = 0        # padded prompt + response tokens per forward; 0 = count-based
    max_new_tokens: int = 1024
    prompt_tokens: int = 512           # the longest prompt, in tokens
    logprob_chunk: int = 1024
    ragged: bool = True                # a forward's sequences differ in length (lad.py's; bench/gpu_step.py's do not)
    engine: str = "vllm"               # "vllm", "hf", or "none" (no engine: bench/gpu_step.py's update alone)
    gpu_memory_utilization: float = 0.4
    vllm_tp: int = 1
    gen_batch: int = 512               # sequences per HF generate() call
    prompts_per_step: int = 16
    group_size: int = 8
    ref_model: bool = False            # a frozen copy of the initial model is loaded
    log_z_head: bool = False           # FlowRL's LogZHead is trained with the policy
    gpu_memory_gb: float = 80.0        # total memory of one GPU, GiB (torch.cuda total_memory / 2**30)
    cuda: bool = True                  # plan a CUDA run; False: the CPU path bench/memory_plan.py measures


# ----------------------------------------------------------------------------------------------------
# The model's sizes, from its config.json
# ----------------------------------------------------------------------------------------------------


def load_config(path) -> dict:
    """config.json of an HF model folder (or the file itself) as a dict; ValueError naming the file."""
    p = Path(path)
    f = p / "config.json" if p.is_dir() else p
    try:
        cfg = json.loads(f.read_text())
    except FileNotFoundError:
        raise ValueError(f"no model config at {f}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the model config {f}: {e}") from None
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in need if not isinstance(cfg, dict) or not isinstance(cfg.get(k), int)]
    if missing:
        raise ValueError(f"{f} is not a decoder config.json (missing {', '.join(missing)})")
    if cfg.get("model_type") not in ARCHITECTURES:
        raise ValueError(f"{f}: model_type {cfg.get('model_type')!r}; the plan knows {', '.join(ARCHITECTURES)} "
                         f"(Qwen2/Llama-style decoder blocks)")
    return cfg


@dataclasses.dataclass
class Model:
    """A decoder's sizes, as the terms use them."""

    h: int                 # hidden size
    i: int                 # MLP intermediate size
    layers: int
    heads: int
    q: int                 # heads x head_dim
    kv: int                # kv heads x head_dim
    kv_copy: bool          # transformers' repeat_kv copies K, V to q's heads (1 < kv heads < heads; else a view)
    vocab: int
    tied: bool             # the LM head is the input embedding
    layer_params: int
    root_params: int       # embeddings, final norm, LM head (untied): FSDP2's root unit
    logz_params: int       # FlowRL's LogZHead: 2 x [Linear(h, h) + LayerNorm(h)] + Linear(h, 1)
    params: int            # the model's parameters (tied embeddings once)


def model_of(cfg: dict) -> Model:
    """Sizes of a Qwen2/Llama-style decoder: q/k/v/o projections (Qwen2: biased q/k/v), a SwiGLU MLP, two
    RMSNorms per layer; embeddings, final norm and an untied LM head."""
    h, i, nh = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    d = cfg.get("head_dim") or h // nh
    nkv = cfg.get("num_key_value_heads", nh)
    q, kv = nh * d, nkv * d
    qkv_bias = cfg["model_type"] == "qwen2" or cfg.get("attention_bias", False)
    layer = h * (q + 2 * kv) + q * h + (q + 2 * kv if qkv_bias else 0) + 3 * h * i + 2 * h
    tied = cfg.get("tie_word_embeddings", False)
    root = cfg["vocab_size"] * h * (1 if tied else 2) + h
    return Model(h=h, i=i, layers=cfg["num_hidden_layers"], heads=nh, q=q, kv=kv, kv_copy=1 < nkv < nh,
                 vocab=cfg["vocab_size"], tied=tied,
                 layer_params=layer, root_params=root, logz_params=2 * (h * h + 3 * h) + h + 1,
                 params=cfg["num_hidden_layers"] * layer + root)


# ----------------------------------------------------------------------------------------------------
# The terms
# ----------------------------------------------------------------------------------------------------

PHASES = ("rollout", "old_logprobs", "ref_logprobs", "update", "step")
RESIDENT = ("weights", "optimizer", "reference model", "hf rollout copy", "cuda context + nccl")
TERMS = {   # term: the phases it counts in (every term's formula and source are in terms() below)
    **{t: PHASES for t in RESIDENT},
    "vllm awake": ("rollout",),
    "vllm asleep": ("old_logprobs", "ref_logprobs", "update", "step"),
    "hf generate": ("rollout",),
    "fsdp reference root": ("ref_logprobs",),
    "fsdp root": ("old_logprobs", "ref_logprobs", "update"),
    "fsdp layers in flight": ("old_logprobs", "ref_logprobs", "update"),
    "autocast weight cache": ("old_logprobs", "ref_logprobs", "update"),
    "activations (no grad)": ("old_logprobs", "ref_logprobs"),
    "gradients": ("update", "step"),
    "ddp buckets": ("update", "step"),
    "fsdp unsharded grads": ("update",),
    "activations + head": ("update",),
    "adamw temporaries": ("step",),
}


def shapes(s: Settings):
    """Per forward: padded tokens T, sequences B, response tokens N, padded length Lp, log-softmax rows c."""
    lp = s.prompt_tokens + s.max_new_tokens
    t = max(s.micro_batch_tokens, lp) if s.micro_batch_tokens else s.micro_batch * lp
    b = t / lp                                   # sequences of the worst (longest) length that make up T
    n = b * s.max_new_tokens
    return t, b, n, lp, min(s.logprob_chunk, n)


def terms(m: Model, s: Settings) -> dict:
    """Every term of the plan, bytes per GPU. Modes: mp = FSDP2's bf16 MixedPrecisionPolicy (policy.shard_policy
    on CUDA: bf16 parameters, activations and residual stream); ac = torch.autocast bf16 without FSDP
    (float32 weights and residual stream, bf16 matmul outputs); else float32 everywhere."""
    mp = s.fsdp and s.cuda
    ac = s.bf16 and not mp
    ba, br = (2 if mp or ac else 4), (2 if mp else 4)          # bytes: matmul outputs; residual stream
    shard = s.world_size if s.fsdp else 1
    p = m.params + (m.logz_params if s.log_z_head else 0)
    t, b, n, lp, c = shapes(s)
    h, i, q, kv, L, V = m.h, m.i, m.q, m.kv, m.layers, m.vocab
    total = s.gpu_memory_gb * GiB

    # -- saved for backward per token, one decoder layer (counted with saved_tensors_hooks on Qwen2, SDPA):
    # each RMSNorm keeps its input, x*rsqrt and the normed output (3 x fp32); under mp its fp32 upcast and
    # two bf16; under ac input and x*rsqrt, and each Linear its own bf16 cast of the normed output (3 for
    # q/k/v, 2 for gate/up); + rsqrt, one float per token
    norms = 2 * (8 * h if mp or ac else 12 * h) + 8 + (5 * 2 * h if ac else 0)
    # SDPA keeps q, k, v, its output and logsumexp; with ragged lengths (B > 1) transformers passes a mask:
    # k, v repeated to q's heads (repeat_kv) and the mask converted to an additive one in q's dtype, per layer
    ragged = s.ragged and b > 1
    rep = q if m.kv_copy else kv
    attn = (2 * (q + rep) * ba + lp * ba if ragged else 2 * (q + kv) * ba) + 4 * m.heads
    mlp = 4 * i * ba                                           # SwiGLU keeps gate, silu(gate), up, their product
    layer = norms + attn + mlp
    final = 12 * h + 4 if br == 4 else 8 * h + 4               # the final norm, and the hidden that gather keeps
    mask = lp if ragged else 0                                 # transformers' bool (B, 1, Lp, Lp) mask, per token
    # policy.Policy._head: (c, V) float32 logits and log-softmax (2 alive); backward: the saved log-softmax and
    # the gather's zeros + scatter (3 alive), then the logits' grad and the LM head's weight grad (in the
    # dtype the weight is used in), which autograd's buffer sums over the chunks out of place (buffer + new
    # + sum) and, tied, until the embedding's backward; + the (N, h) grad of the gathered rows
    head_fwd = 2 * c * V * 4
    head_cast = 2 * V * h if ac else 0                          # autocast's cast of the LM head joins at the head
    wgrad = V * h * ba
    head_bwd = (max(3 * c * V * 4 + wgrad, 3 * wgrad) if n > c else max(3 * c * V * 4, c * V * 4 + wgrad)) \
        + n * h * br
    loss = 16 * n * 4                                           # the loss's (B, T) float32 temporaries

    if s.activation_checkpointing:                              # HF checkpoints each decoder layer (its input)
        grad_act = max(t * (L * h * br + final + mask) + n * h * br + head_bwd,
                       t * (L * h * br + layer + 2 * i * ba + mask) + (wgrad if m.tied else 0)) + head_cast
    else:                                                       # backward of the last layer's MLP: +2 (T, i)
        grad_act = max(t * (L * layer + final) + n * h * br + head_bwd + head_cast,
                       t * (L * layer + 2 * i * ba + h * br) + (wgrad if m.tied else 0) + head_cast,
                       t * L * layer)
    # no grad (policy.Policy runs without a KV cache): the MLP's silu(gate), up and product alive next to 4
    # residual-stream tensors
    nograd_act = max(t * (4 * h * br + 3 * i * ba + mask),
                     t * h * br + n * h * br + head_fwd + head_cast)

    util = s.gpu_memory_utilization * total
    # HF generate (left-padded, so masked): the prefill's no-grad forward over the prompts, or at the last
    # token every layer's KV cache + one layer's repeat_kv copy next to the 3 (b, V) float32 tensors kept
    # from the last step, or 7 of them (logits, generate's float copies of this and the last step,
    # rollout._SampledLogprobs' scaled scores, log-softmax and the last one's, the sampling probabilities)
    gen_b = min(s.gen_batch, max(1, s.prompts_per_step // s.world_size) * s.group_size)
    be = 2 if mp else 4                                          # HF engine dtype: bf16 copy under FSDP, else fp32
    pt = s.prompt_tokens
    hf_gen = max(gen_b * pt * ((4 * h + 3 * i + L * 2 * kv + pt) * be + pt),
                 gen_b * lp * L * 2 * kv * be + max((gen_b * lp * 2 * q * be if m.kv_copy else 0) + 3 * gen_b * V * 4,
                                                    7 * gen_b * V * 4))

    return {
        "weights": 4 * p / shard,                       # policy.load_hf: float32 master weights, FSDP2-sharded
        "optimizer": 8 * p / shard,                     # torch.optim.AdamW: exp_avg + exp_avg_sq, float32
        "reference model": 4 * m.params / shard if s.ref_model else 0,   # policy.build_trainer: float32, frozen
        # FSDP2 keeps the root unit unsharded after forward (reshard_after_forward=False for the root); the
        # reference runs no backward, so lad.ref_logprobs reshards it after its pass
        "fsdp reference root": 2 * m.root_params if s.ref_model and mp else 0,
        "hf rollout copy": m.params * be if s.engine == "hf" and s.fsdp else 0,   # rollout.HFEngine's copy
        "cuda context + nccl": (CUDA_CONTEXT + (NCCL_BUFFERS if s.world_size > 1 else 0)) if s.cuda else 0,
        # vLLM's documented accounting: gpu_memory_utilization x total memory (weights, activations, KV)
        "vllm awake": util if s.engine == "vllm" and s.cuda else 0,
        "vllm asleep": VLLM_ASLEEP * util if s.engine == "vllm" and s.cuda else 0,
        "hf generate": hf_gen if s.engine == "hf" else 0,
        # FSDP2 (mp): the root unit's bf16 parameters, all-gathered at the first forward and resharded only
        # by the backward; two decoder layers in flight (the current one and the prefetched next)
        "fsdp root": 2 * m.root_params if mp else 0,
        "fsdp layers in flight": 2 * 2 * m.layer_params if mp else 0,
        # torch.autocast caches the bf16 cast of every Linear's weight and bias (not the embedding's or norms')
        # until the region exits; the LM head's is in the activations, at the head
        "autocast weight cache": 2 * (L * (m.layer_params - 2 * h) + (p - m.params)) if ac else 0,
        "activations (no grad)": nograd_act,
        "gradients": 4 * p / shard,                                # float32 .grad, FSDP2-sharded
        # DDP (gradient_as_bucket_view=False, its default and lad.py's): buckets hold all gradients again
        "ddp buckets": 4 * p if s.world_size > 1 and not s.fsdp else 0,
        # FSDP2 (mp): the root's bf16 gradients until the end of backward + one layer's bf16 grads and the
        # fp32 copy reduce-scattered (reduce_dtype float32)
        "fsdp unsharded grads": 2 * m.root_params + 6 * m.layer_params if mp else 0,
        "activations + head": grad_act + loss,
        # torch.optim.AdamW's foreach path (its default on CUDA): one float32 temporary per parameter
        # (sqrt(exp_avg_sq)); its single-tensor path on CPU: two of the largest parameter
        "adamw temporaries": 4 * p / shard if s.cuda else 2 * 4 * max(V * h, h * i),
    }


# ----------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    settings: Settings
    model: Model
    phases: dict            # phase -> {term: bytes}, only the terms that count in it and are nonzero
    problems: list          # reasons it cannot run besides a phase over the GPU (vLLM's KV cache)
    suggestions: list       # flag changes that make it fit, verified by re-planning ([] when it fits)
    fixed: Settings | None  # the settings with those changes (None when it fits or nothing does)

    def peak(self, phase=None) -> float:
        if phase is not None:
            return sum(self.phases[phase].values())
        return max(self.peak(ph) for ph in self.phases)

    @property
    def total(self) -> float:
        return self.settings.gpu_memory_gb * GiB

    @property
    def fits(self) -> bool:
        return self.peak() <= (1 - HEADROOM) * self.total and not self.problems


def vllm_need(m: Model, s: Settings) -> float:
    """The least share vLLM starts with: its bf16 weights, its overhead and one whole sequence's bf16 KV
    (vLLM refuses a max_model_len whose KV does not fit its share), per tensor-parallel rank."""
    lp = s.prompt_tokens + s.max_new_tokens
    return (2 * m.params + lp * m.layers * 2 * m.kv * 2) / s.vllm_tp + VLLM_OVERHEAD


def _plan(m: Model, s: Settings) -> Plan:
    values = terms(m, s)
    phases = {ph: {k: values[k] for k, where in TERMS.items() if ph in where and values[k]} for ph in PHASES
              if ph != "ref_logprobs" or s.ref_model}
    problems = []
    if s.engine == "vllm" and s.cuda:
        need = vllm_need(m, s)
        if s.gpu_memory_utilization * s.gpu_memory_gb * GiB < need:
            problems.append(f"vLLM's share ({s.gpu_memory_utilization} x {s.gpu_memory_gb:g} GiB) is under its "
                            f"weights + overhead + one {s.prompt_tokens + s.max_new_tokens}-token sequence's KV "
                            f"({need / GiB:.1f} GiB)")
    return Plan(settings=s, model=m, phases=phases, problems=problems, suggestions=[], fixed=None)


def plan(config: dict, s: Settings) -> Plan:
    """The plan of a run of the model `config` (load_config's dict) with settings s; when it does not fit,
    .suggestions holds the flag changes that make it fit (each set verified by re-planning)."""
    m = model_of(config)
    p = _plan(m, s)
    if not p.fits:
        p.fixed = suggest(m, s)
        p.suggestions = _changes(s, p.fixed) if p.fixed else []
    return p


def _largest(lo, hi, ok):
    """The largest integer x in [lo, hi] with ok(x), ok being true up to some x and false above; or None."""
    if hi < lo or not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def suggest(m: Model, s: Settings) -> Settings | None:
    """Flag changes, cheapest first, until the plan fits: FSDP, then more GPUs, while the states alone do
    not fit; then, at each of these steps until one fits -- as they are, FSDP's bf16 compute (also on one
    GPU), activation checkpointing, a 512- then 256-row log-softmax chunk, 2x more GPUs (up to 64) --
    vLLM's share or HF's generate batch as large as fits, and the largest token budget that fits (a multiple
    of 1024; before activation checkpointing is on, at least 8 sequences: fewer long sequences per forward
    underuse a GPU more than checkpointing's recompute, about a third more compute, costs; after, one).
    The settings that fit, or None."""
    room = (1 - HEADROOM) * s.gpu_memory_gb * GiB

    def fits(x):
        return _plan(m, x).fits

    def base_fits(x):        # the update phase without activations; vLLM's minimum share next to the trainer
        p = _plan(m, dataclasses.replace(x, gpu_memory_utilization=0.0))
        rest = p.peak("update") - p.phases["update"]["activations + head"]
        return rest < room and (x.engine != "vllm" or not x.cuda or p.peak("rollout") + vllm_need(m, x) < room)

    def tune(x):
        p = _plan(m, x)
        if x.engine == "vllm" and x.cuda and (p.problems or p.peak("rollout") > room):
            free = room - _plan(m, dataclasses.replace(x, gpu_memory_utilization=0.0)).peak("rollout")
            x = dataclasses.replace(x, gpu_memory_utilization=min(0.95, math.floor(100 * free / p.total) / 100))
        if x.engine == "hf" and p.peak("rollout") > room:
            g = _largest(1, x.gen_batch, lambda k: _plan(m, dataclasses.replace(x, gen_batch=k)).peak("rollout")
                         <= room)
            x = dataclasses.replace(x, gen_batch=g or 1)
        if not fits(x):
            lp = x.prompt_tokens + x.max_new_tokens
            least = lp if x.activation_checkpointing else 8 * lp
            most = max(1, x.prompts_per_step // x.world_size) * x.group_size * lp
            k = _largest(-(-least // 1024), -(-most // 1024),
                         lambda k: fits(dataclasses.replace(x, micro_batch_tokens=1024 * k)))
            x = dataclasses.replace(x, micro_batch_tokens=1024 * k) if k else x
        return x

    x = s
    while not base_fits(x) and x.world_size < 64:
        x = dataclasses.replace(x, fsdp=True) if not x.fsdp and x.cuda else \
            dataclasses.replace(x, world_size=x.world_size * 2)
    steps = [lambda y: y,
             lambda y: dataclasses.replace(y, fsdp=y.fsdp or y.cuda),
             lambda y: dataclasses.replace(y, activation_checkpointing=True),
             lambda y: dataclasses.replace(y, logprob_chunk=min(y.logprob_chunk, 512)),
             lambda y: dataclasses.replace(y, logprob_chunk=min(y.logprob_chunk, 256))]
    steps += [lambda y: dataclasses.replace(y, world_size=y.world_size * 2)] * 6
    for step in steps:
        x = step(x)
        if x.world_size > 64:
            break
        x = tune(x)
        if fits(x):
            return x
    return None


FLAGS = ("world_size", "fsdp", "activation_checkpointing", "bf16", "micro_batch_tokens", "logprob_chunk",
         "gpu_memory_utilization", "gen_batch")


def _changes(old: Settings, new: Settings) -> list:
    """['--flag value', ...] for the fields that differ (lad.py's spelling; bools as true/false)."""
    out = []
    for f in FLAGS:
        a, b = getattr(old, f), getattr(new, f)
        if a != b:
            out.append(f"--{f.replace('_', '-')} {str(b).lower() if isinstance(b, bool) else b}")
    return out


def format_plan(p: Plan) -> str:
    """Phases x terms in GiB, the peak of each phase and the verdict (with the flags that make it fit)."""
    s, m = p.settings, p.model
    t, b, n, lp, c = shapes(s)
    names = [k for k in TERMS if any(k in p.phases[ph] for ph in p.phases)]
    w = max(len(k) for k in names + ["peak"])
    lines = [f"memory plan: {m.params / 1e9:.2f}B params ({m.layers} layers, hidden {m.h}, vocab {m.vocab}); "
             f"{s.world_size} GPU(s) of {s.gpu_memory_gb:g} GiB; "
             f"{'FSDP2 bf16' if s.fsdp and s.cuda else 'bf16 autocast' if s.bf16 else 'float32'}"
             f"{', activation checkpointing' if s.activation_checkpointing else ''}; engine {s.engine}",
             f"  per forward: {t:.0f} padded tokens ({b:.2f} x {lp}-token sequences), log-softmax chunk {c:.0f}",
             "  " + " " * w + "".join(f"{ph:>14s}" for ph in p.phases)]
    for k in names + ["peak"]:
        cells = [p.peak(ph) if k == "peak" else p.phases[ph].get(k) for ph in p.phases]
        lines.append("  " + f"{k:<{w}s}" + "".join(f"{'' if v is None else f'{v / GiB:.2f}':>14s}" for v in cells))
    free = f", {(p.total - p.peak()) / GiB:.1f} GiB free" if p.peak() < p.total else ""
    lines.append(f"verdict: {'FITS' if p.fits else 'DOES NOT FIT'} -- peak {p.peak() / GiB:.1f} GiB "
                 f"({max(p.phases, key=p.peak)}) of {s.gpu_memory_gb:g} GiB{free} (a fit leaves "
                 f"{100 * HEADROOM:.0f}% free)")
    if s.engine == "vllm" and s.cuda:
        per_token = m.layers * 2 * m.kv * 2 / s.vllm_tp
        kv_tokens = max(0.0, s.gpu_memory_utilization * p.total - 2 * m.params / s.vllm_tp - VLLM_OVERHEAD) / per_token
        lines.append(f"  vLLM: a {s.gpu_memory_utilization * s.gpu_memory_gb:.1f} GiB share holds its bf16 weights "
                     f"({2 * m.params / s.vllm_tp / GiB:.1f} GiB), ~{VLLM_OVERHEAD / GiB:g} GiB overhead and KV for "
                     f"~{kv_tokens / 1e3:.0f}k tokens ({kv_tokens / lp:.1f} sequences of {lp})")
    lines += [f"  problem: {x}" for x in p.problems]
    if not p.fits:
        lines.append("  fits with: " + (" ".join(p.suggestions) if p.suggestions else
                                        "nothing the plan can change (up to 64 GPUs)"))
    return "\n".join(lines)


def settings_from_args(args, world_size, gpu_memory_gb, prompt_tokens, ref_model) -> Settings:
    """Settings of a lad.Args on world_size GPUs of gpu_memory_gb GiB with prompts of up to prompt_tokens
    tokens; ref_model: the run loads the frozen initial model (policy.needs_reference). The Args must be
    resolved (lad.resolve_args: max_new_tokens filled in). --engine auto plans vLLM (what lad.py picks on a
    GPU with vLLM installed)."""
    if args.max_new_tokens < 1:
        raise ValueError("settings_from_args needs resolved Args (lad.resolve_args fills in --max-new-tokens 0)")
    return Settings(world_size=world_size, fsdp=args.fsdp, activation_checkpointing=args.activation_checkpointing,
                    bf16=args.bf16, micro_batch=args.micro_batch,
                    micro_batch_tokens=args.micro_batch_tokens, max_new_tokens=args.max_new_tokens,
                    prompt_tokens=prompt_tokens, logprob_chunk=args.logprob_chunk,
                    engine="hf" if args.engine == "hf" else "vllm",
                    gpu_memory_utilization=args.gpu_memory_utilization, vllm_tp=args.vllm_tp,
                    gen_batch=args.gen_batch, prompts_per_step=args.prompts_per_step, group_size=args.group_size,
                    ref_model=ref_model, log_z_head=args.loss == "flowrl", gpu_memory_gb=gpu_memory_gb)
