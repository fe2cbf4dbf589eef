"""bench/workload.py -- the benches' common workload: a random-init Qwen2 of a named shape, a synthetic train
file, and lad.py run on them (its public entry point, lad.main, or its command line under torchrun) with its
metrics.jsonl read back.

Measures nothing itself. bench/step_ratio.py, bench/sync_cost.py and bench/gpu_step.py time lad.py's own
training step through it, so that a figure is the step users run: the phases and their timers are lad.main's
(perf/rollout_s, perf/reward_s, perf/logprob_s, perf/update_s, perf/sync_s, perf/step_s and, on a GPU,
perf/<phase>_peak_gb; docs/metrics.md).

The workload, chosen so that every step does the same work:
    model   a random-init Qwen2 of SHAPES (tiny = tiny.py's embedded architecture; qwen2-512x8, 57M; the
            Qwen2.5 0.5b/1.5b/3b/7b configs), saved with a byte-level tokenizer of the model's vocabulary
            (tiny.py's 259 tokens, padded with never-encoded filler tokens up to the vocabulary), cached
            under tiny.cache_root() (LAD_CACHE or .cache/) and built once per (shape, layers, seed);
    data    PROMPTS math rows of exactly prompt_len tokens of random letters (one token per character), each
            with the gold NEVER, an answer a random model does not write: every reward is 0, every
            advantage 0;
    flags   --dynamic-sampling false (all groups train although their rewards are equal), --eval-every 0,
            --chat false, the prompt as it is (--prompt-template "{problem}"), --max-new-tokens the
            response length: a random-init model almost never samples EOS (about 1 / vocabulary per token),
            so responses have that length. With every advantage 0, GRPO's gradient is exactly 0 and LAD's
            (JS) is 0 up to the rounding of log r, so the weights stay put and two runs of the same seed
            sample the same tokens whatever their loss: equal work, apart from the loss.

Commands
    python bench/workload.py --shape 0.5b --out /tmp/w      # writes /tmp/w/train.jsonl, prints the model folder
    python lad.py --model <that folder> --train-data /tmp/w/train.jsonl --prompt-template "{problem}" \\
        --chat false --dynamic-sampling false --eval-every 0 --max-new-tokens 1536

Deliberately left out: real weights or data (a step's time does not depend on their values), checkpoints
(lad.py always writes one at the end of a run; the run folders here are temporary and deleted).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import lad  # noqa: E402
import tiny  # noqa: E402
from common import parse_args  # noqa: E402

# name: hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings, published total params
SHAPES = {
    "tiny": None,                                              # tiny.py's MODEL_CONFIG (0.89M), its tokenizer
    "qwen2-512x8": (512, 1536, 8, 8, 2, 32000, False, None),   # 57M: the model, not the loss, is the step
    "0.5b": (896, 4864, 24, 14, 2, 151936, True, 0.49e9),      # Qwen2.5 model cards' config.json
    "1.5b": (1536, 8960, 28, 12, 2, 151936, True, 1.54e9),
    "3b": (2048, 11008, 36, 16, 2, 151936, True, 3.09e9),
    "7b": (3584, 18944, 28, 28, 4, 152064, False, 7.61e9),
}
NEVER = "918273645"
"""The gold of every synthetic row: a number a random-init model does not write, so every reward is 0."""
PROMPTS = 64
"""Rows of the synthetic train file (lad.py cycles through them)."""


def make_config(shape, layers=0):
    """The transformers Qwen2Config of a shape (layers: fewer decoder layers, e.g. a CPU run of a real width)."""
    from transformers import Qwen2Config

    if SHAPES[shape] is None:
        if layers:
            raise ValueError("--layers applies to the larger shapes, not tiny")
        return tiny.make_model(0)[0].config
    h, i, n_layers, heads, kv, vocab, tied, _ = SHAPES[shape]
    return Qwen2Config(hidden_size=h, intermediate_size=i, num_hidden_layers=layers or n_layers,
                       num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                       tie_word_embeddings=tied, rope_theta=1e6, rms_norm_eps=1e-6,
                       max_position_embeddings=32768, pad_token_id=0, eos_token_id=1, bos_token_id=None)


def count_params(cfg):
    """Parameters of a config's model, tied weights counted once (built on the meta device: no memory)."""
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in Qwen2ForCausalLM(cfg).parameters())


def make_tokenizer(vocab):
    """tiny.py's byte-level tokenizer (one token per byte; <pad> 0, <eos> 1) padded to `vocab` tokens with
    filler tokens of three byte-characters each: no merge ever produces them, so text encodes exactly as
    with tiny.py's, and every id a model of that vocabulary samples decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alpha = tiny._byte_chars()
    vocab_map = {t: i for i, t in enumerate(tiny.SPECIALS + alpha)}
    for j in range(vocab - len(vocab_map)):
        vocab_map[alpha[j % 256] + alpha[(j >> 8) % 256] + alpha[j >> 16]] = len(vocab_map)
    tok = Tokenizer(models.BPE(vocab=vocab_map, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                  model_max_length=32768)


def model_dir(shape, layers=0, seed=0, log=print):
    """The folder of a random-init model of `shape` (HF format, with its tokenizer), built once under a file
    lock (several ranks may ask at once) in tiny.cache_root(); float32 weights, initialised on the GPU where
    there is one (a 7B model's init on CPU takes minutes)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    root = tiny.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"bench-{shape}{f'-L{layers}' if layers else ''}-s{seed}-v1"
    with open(root / ".bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (final / "config.json").exists():
                log(f"workload: writing a random-init {shape} model (once) to {final}")
                tmp = root / f".tmp-{final.name}-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                if SHAPES[shape] is None:
                    tiny.init_model_dir(tmp, seed=seed)
                else:
                    import transformers
                    from transformers import Qwen2ForCausalLM

                    transformers.utils.logging.disable_progress_bar()

                    cfg = make_config(shape, layers)
                    torch.manual_seed(seed)
                    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
                        lm = Qwen2ForCausalLM(cfg).float()
                    lm.generation_config.pad_token_id, lm.generation_config.eos_token_id = 0, 1
                    lm.save_pretrained(tmp)
                    make_tokenizer(cfg.vocab_size).save_pretrained(tmp)
                    del lm
                os.replace(tmp, final)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(final)


def train_file(path, prompt_len, seed=0, rows=PROMPTS):
    """A math train file of `rows` prompts of `prompt_len` random lowercase letters (prompt_len tokens with
    the byte-level tokenizers above), gold NEVER; returns the path."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(rows):
            fh.write(json.dumps({"id": f"w{i}", "problem": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                                                                   for _ in range(prompt_len)),
                                 "answer": NEVER}) + "\n")
    return str(path)


def lad_args(model, data, **flags):
    """lad.Args for a bench run on this workload: the flags above, then `flags` (any lad.py field)."""
    base = dict(model=model, train_data=data, prompt_template="{problem}", chat="false", dynamic_sampling=False,
                eval_every=0, save_every=0, engine="hf")
    return lad.Args(**{**base, **flags})


def command_line(args):
    """lad.py's flags for the fields of `args` that differ from lad.Args' defaults."""
    out = []
    for f in dataclasses.fields(lad.Args):
        v = getattr(args, f.name)
        if v != f.default:
            out += [f"--{f.name.replace('_', '-')}", ("true" if v else "false") if isinstance(v, bool) else str(v)]
    return out


def run_lad(args, nproc_per_node=1, keep=False):
    """Train with lad.py on `args` and return its metrics.jsonl rows (rank 0; [] on other ranks).

    nproc_per_node 1: lad.main(args) in this process (under torchrun, each rank calls it: the process group is
    lad.main's, ended here afterwards); >= 2: `torchrun --nproc_per_node=N lad.py <flags>` as a subprocess.
    lad.py's own output goes to <run folder>/bench.log; on failure its last lines are raised. The run folder
    (args.out, or a temporary one) is deleted unless keep."""
    if nproc_per_node >= 2:
        return wait_lad(launch_lad(args, nproc_per_node, keep))
    rank, made = int(os.environ.get("RANK", "0")), not args.out
    out = args.out or tempfile.mkdtemp(prefix="lad-bench-")
    args = dataclasses.replace(args, out=out)
    log = Path(out) / f"bench{rank or ''}.log"
    try:
        with open(log, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            try:
                lad.main(args)
            except BaseException:
                import traceback

                traceback.print_exc()
                fh.flush()
                raise RuntimeError(f"lad.main failed:\n{log.read_text()[-3000:]}") from None
            finally:
                if lad.dist_on():              # lad.main ends a one-rank group itself, not torchrun's
                    torch.distributed.destroy_process_group()
        return _rows(out) if rank == 0 else []
    finally:
        if not keep and (made or rank == 0):   # lad.main's run folder is rank 0's; the others' hold a log
            shutil.rmtree(out, ignore_errors=True)


@dataclasses.dataclass
class Launched:
    """A lad.py run started by launch_lad: its process, command, run folder, log file."""
    proc: subprocess.Popen
    cmd: list
    out: str
    log: object
    keep: bool


def launch_lad(args, nproc_per_node=1, keep=False):
    """Start lad.py on `args` as a subprocess (`python lad.py`, or torchrun for nproc_per_node >= 2) and return
    at once; wait_lad(handle) gives its metrics rows. Several may run at the same time."""
    out = args.out or tempfile.mkdtemp(prefix="lad-bench-")
    args = dataclasses.replace(args, out=out)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}"]
                if nproc_per_node >= 2 else [sys.executable])
    cmd = [*launcher, str(ROOT / "lad.py"), *command_line(args)]
    log = open(Path(out) / "bench.log", "w")
    return Launched(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), cmd, out, log, keep)


def wait_lad(h):
    """The metrics rows of a launch_lad run, once it has finished (RuntimeError with its log's tail if it failed)."""
    try:
        code = h.proc.wait()
        h.log.close()
        if code != 0:
            raise RuntimeError(f"{' '.join(h.cmd)} failed (exit {code}):\n{(Path(h.out) / 'bench.log').read_text()[-3000:]}")
        return _rows(h.out)
    finally:
        if not h.keep:
            shutil.rmtree(h.out, ignore_errors=True)


def _rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines() if x.strip()]


def step_tokens(row, prompt_len, responses):
    """(all tokens, response tokens) the step's forwards saw: every response with its prompt."""
    resp = row["rollout/response_len_mean"] * responses
    return responses * prompt_len + resp, resp


@dataclasses.dataclass
class Args:
    """Write the benches' workload (a random-init model of a shape and a synthetic train file)."""

    CHOICES = {"shape": list(SHAPES)}

    shape: str = "tiny"
    """model shape: tiny (tiny.py's), qwen2-512x8 (57M), 0.5b, 1.5b, 3b, 7b (Qwen2.5 configs)"""
    layers: int = 0
    """decoder layers; 0 = the shape's"""
    prompt_len: int = 32
    """prompt tokens of every row"""
    seed: int = 0
    """seed of the weights and of the prompts"""
    out: str = ""
    """folder for train.jsonl (the model goes to the cache folder, printed)"""


if __name__ == "__main__":
    a = parse_args(Args)
    if not a.out:
        sys.exit("workload.py: error: --out DIR is required")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    print(f"model: {model_dir(a.shape, a.layers, a.seed)}")
    print(f"train file: {train_file(Path(a.out) / 'train.jsonl', a.prompt_len, a.seed)}")
