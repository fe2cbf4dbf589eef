"""eval.py -- Avg@k, Pass@k and diversity of checkpoints (or generation files) on math and code benchmarks
and on the built-in task, side by side.

Implements the evaluation of the LAD paper (Sec. 5.1 and Appendix C.2-C.3; Tables 1, 3, 4, 7):
Avg@k (mean accuracy over the k samples of a problem), Pass@k with the unbiased estimator of Chen et al.
(2021), lexical diversity distinct-n (Table 4 uses n = 3, 4; we report 1..4), and three figures the
paper does not tabulate but that explain its claims: distinct correct final answers per prompt, mean
response length and truncation rate. Every figure is computed per benchmark and macro-averaged over
benchmarks (each benchmark weighs the same, as in the paper's "Avg" column), each with a spread.
The metric functions and their names are metrics.py's, the row loader, templates and prompt encoder
data.py's, the rewards tasks.py's; the pipeline (generate_rows -> score_rows -> metrics.problem_values)
is written here once and lad.py's periodic evaluation calls it, so its curves and these tables agree.

Commands
    built-in task, CPU (tiny model):   python eval.py --benchmark builtin-sum --model runs/<run>/ckpt-000200 --name lad
    built-in code task, CPU:           python eval.py --benchmark builtin-code --model runs/<run>/ckpt-000200
    math benchmarks, 1 GPU (vLLM):     python eval.py --model <hf-path> --engine vllm \\
                                           --benchmark aime24,aime25,amc23,math500,minerva,olympiadbench
    8 GPUs (one shard per GPU, then score the union):
        for i in 0 1 2 3 4 5 6 7; do CUDA_VISIBLE_DEVICES=$i python eval.py --model <hf-path> --engine vllm \\
            --benchmark aime24,amc23 --shard $i/8 --out-dir runs/eval/m/shard$i & done; wait
        python eval.py --benchmark aime24,amc23 --out-dir runs/eval/m \\
            --generations "$(ls runs/eval/m/shard*/samples.jsonl | paste -sd,)"
    score generations made elsewhere:  python eval.py --benchmark aime24 --generations gens.jsonl
    code, 1 GPU (Table 2: n = 16):     python eval.py --model <hf-path> --engine vllm --benchmark humanevalplus,livecodebench \\
                                           --lcb-start 2024-08-01 --lcb-end 2025-02-01
    side by side (table + plot):       python eval.py --compare runs/eval/grpo/summary.json \\
                                           runs/eval/lad/summary.json --plot docs/passk.png

Protocol defaults (recorded in summary.json with every other setting): n = 32 samples per problem
(Table 1 reports Avg@32, Table 7 Pass@32), temperature 1.0 and top_p 1.0 (the paper's sampling
temperature, App. C.2; it states no separate evaluation temperature), 8192 new tokens (App. C.2; 4096
for its 1.5B models), and lad.py's prompt (the paper gives none: "...put your final answer within
\\boxed{}", so lad.py's checkpoints are scored as they were trained; `--prompt-template dapo` for models
trained on DAPO-Math's own prompt), in the tokenizer's chat template when it has one, as lad.py does.
Code benchmarks (Table 2: Avg@16, Pass@16, so n = 16 when every benchmark is code): the code prompt
(data.TEMPLATES["code"]); the reward is training's (tasks.judge -> sandbox.py: 1 iff the last fenced python
block passes every test, bubblewrap sandbox, 6 s per test, 60 s a program); HumanEval+ is reported as base + plus
tests (`humanevalplus`, EvalPlus's HumanEval+) and base tests only (`humanevalplus:base`, its HumanEval;
not in the macro); LiveCodeBench can be cut to a contest-date window (--lcb-start/--lcb-end, dates from
the `_meta` file beside it). samples.jsonl keeps a compact reference of a code problem, not its tests.

Deliberately left out
    - the GPT-4 "logical diversity" judge (App. C.2): it needs a network and a paid API;
    - CodeForces ratings (Table 2): they need contest data we do not have (problem ratings, contestants'
      results); the shared files hold none (checked: ../shared/data/SOURCES.md lists no CodeForces data);
    - LiveCodeBench's private tests: the shared copy holds public tests only (1-6 per problem), so its
      figures are upper bounds of official LCB grading;
    - majority voting and any answer post-processing beyond verifier.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import data
import rollout
import tasks
import tiny
from common import UsageError, parse_args
from data import BENCHMARKS, ID_FIELDS, TEMPLATES, _gold_str, prompt_ids, read_rows, render_prompt
from metrics import default_ks, problem_values

ROOT = Path(__file__).resolve().parent


@dataclass
class Args:
    """Avg@k, Pass@k and diversity, side by side (see the module docstring)."""

    CHOICES = {"kind": ["auto", "math", "sum", "code"], "on_bad_row": ["error", "skip"], "engine": ["auto", "hf", "vllm"],
               "chat": ["auto", "true", "false"], "device": ["auto", "cpu", "cuda"], "grader": list(tasks.GRADERS)}
    benchmark: str = ""
    """comma-separated: builtin-sum, builtin-code (tasks.py's held-out prompts), aime24, aime25, amc23, math500, minerva, olympiadbench, humanevalplus, livecodebench, or .jsonl/.parquet paths (default builtin-sum when generating)"""
    data_dir: str = ""
    """folder holding the benchmark files (default: ./data/bench, else ../shared/data/bench next to this repo)"""
    problem_field: str = ""
    """field holding the problem text in a custom file (default: problem, question or prompt)"""
    answer_field: str = ""
    """field holding the gold answer in a custom file (default: answer, final_answer or gold, else the last \\boxed{} of solution)"""
    id_field: str = ""
    """field holding the problem id (default: id, idx, unique_id or problem_id, else the row number)"""
    kind: str = "auto"
    """task kind: math, sum (builtin-sum's), code (sandboxed tests) or auto (from the rows or the built-in task)"""
    limit: int = 0
    """evaluate only the first LIMIT problems of each benchmark (0: all; after the date filter); recorded, for quick runs"""
    lcb_start: str = ""
    """LiveCodeBench: keep problems whose contest date (from <file>_meta.jsonl beside the file) is on or after YYYY-MM-DD"""
    lcb_end: str = ""
    """LiveCodeBench: keep problems whose contest date is on or before YYYY-MM-DD (inclusive)"""
    shard: str = ""
    """i/N: evaluate only problems whose index is i mod N (data-parallel generation; merge with --generations)"""
    on_bad_row: str = "error"
    """a benchmark row that cannot be loaded: error (exit 2, every bad row listed) or skip (listed and recorded)"""
    model: str = ""
    """HF model folder, or a hub id already in the local Hugging Face cache (no download), as lad.py; default for one built-in task alone: the tiny model warm-started on it"""
    engine: str = "auto"
    """rollout engine: hf (transformers generate), vllm, or auto (vLLM with a GPU, else hf)"""
    device: str = "auto"
    """hf engine device: cpu, cuda, or auto (cuda when available)"""
    gpu_memory_utilization: float = 0.9
    """vllm engine: fraction of the GPU it may take (nothing is trained alongside, unlike lad.py's 0.4)"""
    dtype: str = "auto"
    """model dtype: float32, bfloat16, float16, or auto (bfloat16 on GPU, float32 on CPU)"""
    n: int = 0
    """samples per problem (0: 16 when every benchmark is code, Table 2's Avg@16/Pass@16; else 32, Table 1's Avg@32)"""
    k: str = ""
    """Pass@k values, comma-separated (default: 1, 2, 4, ... up to n, and n); each must be <= n"""
    temperature: float = 1.0
    """sampling temperature (paper App. C.2: 1.0; 0 = greedy)"""
    top_p: float = 1.0
    """nucleus sampling threshold (1.0 = off; the paper states none)"""
    max_new_tokens: int = 0
    """response token limit (0: 8192 for math and code, paper App. C.2; a built-in task's own, as lad.py: 12 for builtin-sum and files of sum rows, 32 for builtin-code)"""
    prompt_template: str = "auto"
    """boxed (lad.py's default prompt), dapo (DAPO-Math's), raw, or a string containing {problem}; auto: a lad.py checkpoint's own (its prompt.json), else boxed for math, code for code, raw for a built-in task"""
    chat: str = "auto"
    """wrap the prompt in the tokenizer's chat template: true, false, auto (a lad.py checkpoint's own setting, else true when the tokenizer has one); as lad.py"""
    batch_size: int = 16
    """problems per engine.generate call (times n sequences)"""
    seed: int = 0
    """sampling seed (and bootstrap seed); batch b of shard i samples with seed + b + 100003 i: reproducible, and no two batches share a stream"""
    generations: str = ""
    """score existing generations instead of sampling: comma-separated JSONL files (docs/eval.md gives the format)"""
    out_dir: str = ""
    """output folder for samples.jsonl, summary.json, summary.md (default runs/eval/<name>)"""
    name: str = ""
    """label of this run in tables and plots (default: the model folder's or generations file's name)"""
    grader: str = "ours"
    """math reward's grader: ours (verifier.py), math-verify (HF's package), dapo (verl's math_dapo); as lad.py's
    flag (docs/verifier.md compares them)"""
    weak_sandbox: bool = False
    """code rewards without bubblewrap (only the resource limits and audit hook; warns): for hosts that cannot
    create user namespaces (docs/sandbox.md says what that does not protect); as lad.py's flag"""
    bootstrap: int = 1000
    """bootstrap resamples of the problems for the 95% intervals (0: none)"""
    compare: list[str] = field(default_factory=list)
    """summary.json files to print side by side (first = baseline for the differences); no evaluation"""
    plot: str = ""
    """with --compare: the Pass@k-versus-k PNG to write (default next to --out-dir's compare.md)"""


# ----------------------------------------------------------------------------------------------------
# BENCHMARKS (the row loaders, templates and prompt encoder live in data.py, shared with lad.py)
# ----------------------------------------------------------------------------------------------------


def load_file(path: Path, args: Args) -> tuple[list[dict], list[str]]:
    """All rows of a benchmark file -> (problems, errors); each error names its file and line."""
    return data.load_file(path, args.problem_field, args.answer_field, args.id_field)


def data_dirs(args: Args) -> list[Path]:
    if args.data_dir:
        return [Path(args.data_dir)]
    return [Path("data/bench"), ROOT / "data" / "bench", ROOT.parent / "shared" / "data" / "bench"]


def load_benchmark(name: str, args: Args) -> tuple[list[dict], list[str], str, str]:
    """-> (problems, errors, kind, source) for a benchmark name (a built-in task's too) or a file path."""
    if name in tasks.BUILTIN:          # a built-in task's held-out split; its prompts are used raw
        task = tasks.BUILTIN[name]
        probs = [{"id": r["id"], "problem": r["prompt"], "gold": r["gold"], "meta": {}, "kind": r["kind"]}
                 for r in tasks.builtin_rows(task, "heldout")]
        return probs, [], task.kind, f"tasks.py {name} heldout"
    if name in BENCHMARKS:
        tried = [d / f"{stem}{ext}" for d in data_dirs(args) for stem in BENCHMARKS[name] for ext in (".jsonl", ".parquet")]
        path = next((p for p in tried if p.is_file()), None)
        if path is None:
            dirs = ", ".join(str(d) for d in data_dirs(args))
            raise UsageError(f"benchmark {name!r}: no file {BENCHMARKS[name][0]}.jsonl/.parquet in {dirs} (set --data-dir)")
    else:
        path = Path(name)
        if path.suffix not in (".jsonl", ".parquet"):
            raise UsageError(f"unknown benchmark {name!r}; choose from {', '.join([*tasks.BUILTIN, *BENCHMARKS])}, or a .jsonl/.parquet file")
        if not path.is_file():
            raise UsageError(f"benchmark file not found: {path}")
    problems, errors = load_file(path, args)
    kinds = sorted({p["kind"] for p in problems}) or ["math"]
    if len(kinds) > 1:
        raise UsageError(f"{path}: mixes task kinds {kinds}; one benchmark file holds one kind")
    return problems, errors, kinds[0], str(path)


def bench_name(spec: str) -> str:
    return spec if spec in tasks.BUILTIN or spec in BENCHMARKS else Path(spec).stem


# LiveCodeBench contest-date window (contamination control). Line i of livecodebench_v5_test.jsonl is
# described by line i of livecodebench_v5_test_meta.jsonl ({question_id, contest_id, contest_date, ...}).

def is_lcb(name: str) -> bool:
    """Benchmarks the --lcb-start/--lcb-end window applies to: `livecodebench` and files named livecodebench*."""
    return name.lower().startswith("livecodebench")


def parse_day(text: str, what: str):
    """YYYY-MM-DD (or an ISO date-time such as 2024-08-03T00:00:00) -> datetime.date; ValueError naming `what`."""
    try:
        return datetime.datetime.fromisoformat(text).date() if "T" in text else datetime.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: not a date YYYY-MM-DD: {text!r}") from None


def meta_path(source: str) -> Path:
    """The `_meta` file beside a benchmark file: x.jsonl -> x_meta.jsonl."""
    p = Path(source)
    return p.with_name(p.stem + "_meta.jsonl")


def contest_dates(meta: Path) -> dict:
    """line number -> contest date of every row of a _meta file; errors name meta:line."""
    if not meta.is_file():
        raise UsageError(f"--lcb-start/--lcb-end need the contest dates in {meta} (row i describes row i of the "
                        f"benchmark file); it does not exist")
    dates = {}
    for where, row, lineno in read_rows(meta):
        if isinstance(row, Exception):
            raise UsageError(str(row))
        if not isinstance(row, dict) or "contest_date" not in row:
            raise UsageError(f"{where}: no 'contest_date' field")
        try:
            dates[lineno] = parse_day(row["contest_date"], where)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return dates


def date_filter(problems: list[dict], source: str, start, end) -> list[dict]:
    """The problems whose contest date lies in [start, end] (either may be None); a problem without a
    date in the _meta file is an error (naming both lines), never silently dropped."""
    meta = meta_path(source)
    dates = contest_dates(meta)
    with open(source, encoding="utf-8") as f:
        n_rows = sum(1 for ln in f if ln.strip())
    if len(dates) != n_rows:
        raise UsageError(f"{meta}: {len(dates)} rows, but {source} has {n_rows}: line i must describe line i")
    kept = []
    for p in problems:
        where = p["gold"]["where"] if isinstance(p.get("gold"), dict) else ""
        line = where.rsplit(":", 1)[-1]
        if not line.isdigit():
            raise UsageError(f"{source}: problem {p['id']}: no line number to look its contest date up by ({where!r})")
        if int(line) not in dates:
            raise UsageError(f"{where}: no contest date: {meta} has no row {line}")
        d = dates[int(line)]
        if (start is None or d >= start) and (end is None or d <= end):
            kept.append(p)
    return kept


# ----------------------------------------------------------------------------------------------------
# THE PIPELINE: generate_rows -> score_rows -> metrics.problem_values (lad.py's periodic evaluation too)
# ----------------------------------------------------------------------------------------------------

def generate_rows(engine, tok, problems, *, n, temperature, top_p, max_new_tokens, seed, batch_size, bench="",
                  bar=None) -> list[dict]:
    """n responses to each problem ({"id", "gold", "kind", "ids": its encoded prompt}) from a rollout engine,
    batch_size problems per engine.generate call, batch b seeded seed + b -> per-sample rows {"benchmark",
    "id", "sample", "response", "truncated", "num_tokens", "gold", "kind"}, grouped by problem, unscored."""
    rows = []
    for b, lo in enumerate(range(0, len(problems), batch_size)):
        batch = problems[lo:lo + batch_size]
        samples = engine.generate([p["ids"] for p in batch], n, temperature=temperature, top_p=top_p,
                                  max_new_tokens=max_new_tokens, seed=seed + b)
        texts = tok.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
        counts = {}
        for s, text in zip(samples, texts):
            p = batch[s.prompt_index]
            j = counts[s.prompt_index] = counts.get(s.prompt_index, -1) + 1
            rows.append({"benchmark": bench, "id": p["id"], "sample": j, "response": text,
                         "truncated": bool(s.truncated), "num_tokens": len(s.response_ids), "gold": p["gold"],
                         "kind": p["kind"]})
        if bar is not None:
            bar.update(len(batch))
    return rows


def score_rows(rows: list[dict], *, weak_sandbox: bool = False, grader: str = "ours", progress: bool = False) -> None:
    """Judge every row by its kind (tasks.judge, training's reward; math with `grader`): adds "reward", "reason",
    "detail", "base_reward" (EvalPlus problems: the base tests alone) and "answer" (tasks.answer_key)."""
    chunk = 256
    for kind in sorted({r["kind"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        for lo in tqdm(range(0, len(idx), chunk), desc=f"score ({kind})", unit="chunk", disable=not progress):
            part = [rows[i] for i in idx[lo:lo + chunk]]
            verdicts = tasks.judge([r["response"] for r in part], [r["gold"] for r in part], kind,
                                   weak_sandbox=weak_sandbox, grader=grader)
            for r, v in zip(part, verdicts):
                r.update(reward=float(v.reward), reason=v.reason, detail=v.detail, base_reward=v.base_reward,
                         answer=tasks.answer_key(r["response"], kind))


def generate(problems_by_bench: dict, cfg: dict) -> list[dict]:
    """Load cfg's model into a rollout engine (rollout.py) and sample cfg['n'] responses to every problem,
    each benchmark's prompts in its template -> per-sample rows (unscored)."""
    try:
        tok = AutoTokenizer.from_pretrained(cfg["model"])
    except OSError as err:
        raise UsageError(f"--model {cfg['model']!r}: not a model folder, nor a hub id in the local cache "
                         f"({str(err).splitlines()[0]})") from None
    use_chat = data.use_chat_template(tok, cfg["chat"])
    cfg["chat_template_used"] = use_chat
    cfg["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    model = None
    if cfg["engine"] == "auto":
        ok, why = rollout.vllm_status()
        cfg["engine"] = "vllm" if ok else "hf"
        print(f"eval.py: engine auto -> {cfg['engine']} ({why})", file=sys.stderr, flush=True)
    if cfg["engine"] == "hf":
        device = cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = cfg["dtype"] if cfg["dtype"] != "auto" else ("bfloat16" if device == "cuda" else "float32")
        cfg["device"], cfg["dtype"] = device, dtype
        model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=getattr(torch, dtype)).to(device)
    extra = {"batch_size": cfg["batch_size"] * cfg["n"]} if cfg["engine"] == "hf" else \
        {"gpu_memory_utilization": cfg["gpu_memory_utilization"], "dtype": None if cfg["dtype"] == "auto" else cfg["dtype"]}
    engine, cfg["engine"] = rollout.make_engine(cfg["engine"], model=model, tokenizer=tok, model_path=cfg["model"],
                                                seed=cfg["seed"], **extra)
    if cfg["engine"] == "vllm":
        import vllm
        cfg["device"], cfg["dtype"] = ("cuda" if torch.cuda.is_available() else "cpu"), engine.dtype
        cfg["versions"]["vllm"] = vllm.__version__
    rows, batches = [], 0
    seed0 = cfg["seed"] + 100003 * (cfg["shard"][0] if cfg["shard"] else 0)
    total = sum(len(p) for p in problems_by_bench.values())
    bar = tqdm(total=total, desc=f"generate ({cfg['engine']}, n={cfg['n']})", unit="problem")
    for bench, problems in problems_by_bench.items():
        template = cfg["templates"][bench]
        encoded = [{**p, "ids": prompt_ids(tok, p["problem"] if p["meta"].get("templated") else
                                           render_prompt(template, p["problem"]), use_chat)} for p in problems]
        rows += generate_rows(engine, tok, encoded, n=cfg["n"], temperature=cfg["temperature"], top_p=cfg["top_p"],
                              max_new_tokens=cfg["max_new_tokens"], seed=seed0 + batches,
                              batch_size=cfg["batch_size"], bench=bench, bar=bar)
        batches += -(-len(problems) // cfg["batch_size"])
    bar.close()
    if hasattr(engine, "close"):       # vLLM: shut its engine core down now rather than at interpreter exit
        engine.close()
    return rows


# ----------------------------------------------------------------------------------------------------
# GENERATIONS FILES
#
# One JSON object per line, either one sample {"id", "response"} or one problem {"id", "responses": [...]}.
# Optional: "benchmark" (needed when several are scored), "gold" (else taken from --benchmark by id),
# "sample", "truncated", "num_tokens", "kind" (math, sum or code). eval.py's own samples.jsonl is such a
# file; for code its "gold" is a compact reference (code_ref_of), so scoring it needs --benchmark.
# ----------------------------------------------------------------------------------------------------

RESPONSE_FIELDS = ("response", "output", "completion", "generation")
RESPONSES_FIELDS = ("responses", "outputs", "completions", "generations")


def code_ref_of(gold: dict) -> dict:
    """What samples.jsonl keeps of a code problem's gold (its tests stay in the benchmark file: HumanEval+
    holds up to 1000 inputs a problem): where it came from, its format and test counts."""
    ref = {"code_ref": gold.get("where"), "format": gold.get("format"), "tests": len(gold.get("tests", ()))}
    if gold.get("format") == "evalplus":
        ref["base_tests"] = gold.get("n_base")
    return ref


def read_generations(paths: list[Path], args: Args, golds: dict, excluded=frozenset()) -> tuple[list[dict], int]:
    """Per-sample rows from generation files -> (rows, samples skipped); `golds` maps (bench, id) -> gold
    for rows without one (or with a code_ref); rows of problems in `excluded` (the date filter) are skipped."""
    benches = sorted({b for b, _ in golds} | {b for b, _ in excluded})
    rows, errors, skipped = [], [], 0
    for path in paths:
        if not path.is_file():
            raise UsageError(f"generations file not found: {path}")
        for where, row, _ in read_rows(path):
            try:
                if isinstance(row, Exception):
                    raise row
                if not isinstance(row, dict):
                    raise ValueError(f"{where}: not a JSON object")
                idf = args.id_field or next((f for f in ID_FIELDS if f in row), None)
                if idf is None or idf not in row:
                    raise ValueError(f"{where}: no id field (looked for {args.id_field or ', '.join(ID_FIELDS)})")
                pid = str(row[idf])
                bench = row.get("benchmark")
                if bench is None:
                    if len(benches) != 1:
                        raise ValueError(f"{where}: no 'benchmark' field and --benchmark names "
                                         f"{len(benches)} benchmarks; cannot tell which this row belongs to")
                    bench = benches[0]
                if (bench, pid) in excluded:
                    many = next((row[f] for f in RESPONSES_FIELDS if isinstance(row.get(f), list)), None)
                    skipped += 1 if many is None else len(many)
                    continue
                gold = row.get("gold")
                if isinstance(gold, dict) and "code_ref" in gold:   # samples.jsonl of a code benchmark
                    if (bench, pid) not in golds:
                        raise ValueError(f"{where}: gold of {bench}/{pid} is a reference to {gold['code_ref']}; "
                                         f"pass that benchmark with --benchmark to score it")
                    gold = None
                if gold is None:
                    if (bench, pid) not in golds:
                        raise ValueError(f"{where}: problem {bench}/{pid} is not in --benchmark and the row has no 'gold'")
                    gold = golds[(bench, pid)]
                rf = next((f for f in RESPONSES_FIELDS if isinstance(row.get(f), list)), None)
                if rf is not None:
                    responses = row[rf]
                    trunc = row.get("truncated") if isinstance(row.get("truncated"), list) else [None] * len(responses)
                    ntok = row.get("num_tokens") if isinstance(row.get("num_tokens"), list) else [None] * len(responses)
                    items = list(zip(range(len(responses)), responses, trunc, ntok))
                else:
                    f = next((f for f in RESPONSE_FIELDS if f in row), None)
                    if f is None:
                        raise ValueError(f"{where}: no response field (looked for {', '.join(RESPONSE_FIELDS + RESPONSES_FIELDS)})")
                    items = [(row.get("sample"), row[f], row.get("truncated"), row.get("num_tokens"))]
                for j, resp, tr, nt in items:
                    if not isinstance(resp, str):
                        raise ValueError(f"{where}: response is {type(resp).__name__}, not text")
                    rows.append({"benchmark": bench, "id": pid, "sample": j, "response": resp,
                                 "truncated": None if tr is None else bool(tr),
                                 "num_tokens": None if nt is None else int(nt),
                                 "gold": gold if isinstance(gold, dict) else _gold_str(gold),
                                 "kind": row.get("kind"), "where": where})
            except ValueError as e:
                errors.append(str(e))
    if errors:
        raise UsageError(f"{len(errors)} bad generation row(s):\n  " + "\n  ".join(errors[:50]))
    # number the samples of each problem in file order where the file did not
    counts = {}
    for r in rows:
        key = (r["benchmark"], r["id"])
        counts[key] = counts.get(key, 0) + 1
        if r["sample"] is None:
            r["sample"] = counts[key] - 1
    return rows, skipped


# ----------------------------------------------------------------------------------------------------
# SCORING AND FIGURES
# ----------------------------------------------------------------------------------------------------


BASE = ":base"
"""Suffix of the line that scores an EvalPlus benchmark on its base tests only (humanevalplus:base is
HumanEval as EvalPlus reports it; humanevalplus itself is HumanEval+, base + plus tests)."""


def base_rows(rows: list[dict]) -> list[dict]:
    """Copies of the EvalPlus rows scored on their base tests (benchmark <name>:base); not in the macro."""
    return [{**r, "benchmark": r["benchmark"] + BASE, "reward": r["base_reward"]}
            for r in rows if r.get("base_reward") is not None]


def reason_counts(rows: list[dict], bench: str) -> dict:
    """How many samples of a benchmark got each reason (tasks.REASONS: ok, wrong_answer, and code's timeout, ...)."""
    out = {}
    for r in rows:
        if r["benchmark"] == bench and r.get("reason"):
            out[r["reason"]] = out.get(r["reason"], 0) + 1
    return dict(sorted(out.items()))


def protocol(kinds: dict, problems: dict, cfg: dict) -> dict:
    """The evaluation protocol of this run, in numbers and words (summary.json config.protocol)."""
    out = {"sampling": {k: cfg[k] for k in ("n", "k", "temperature", "top_p", "max_new_tokens", "seed")},
           "metrics": "per problem Avg@n (mean 0/1 reward of its n samples) and unbiased Pass@k (Chen et al. 2021), "
                      "then the mean over a benchmark's problems; macro = mean over benchmarks (each weighs the same)",
           "paper": "Table 1 / 7: Avg@32 / Pass@32 on the math benchmarks; Table 2: Avg@16 and Pass@16 on "
                    "LiveCodeBench and HumanEval+ (its CodeForces rating is left out: no contest data here)"}
    out["rewards"] = {k: tasks.describe(k, cfg["grader"]) for k in sorted(set(kinds.values()))}
    code = [b for b, k in kinds.items() if k == "code"]
    if code:
        formats = {b: sorted({p["gold"]["format"] for p in problems.get(b, []) if isinstance(p.get("gold"), dict)})
                   for b in code}
        out["tests"] = {b: ("EvalPlus: base + plus inputs, expected outputs from the canonical solution, atol as EvalPlus; "
                            f"{b}{BASE} scores the base inputs only") if "evalplus" in f else
                        "the file's tests" + (" (the shared LiveCodeBench copy holds public tests only)" if is_lcb(b) else "")
                        for b, f in formats.items()}
        out["lcb_filter"] = cfg["lcb_filter"]
    return out


def per_problem(rows: list[dict]) -> dict:
    """(bench, id) -> list of that problem's rows, samples in order."""
    groups = {}
    for r in rows:
        groups.setdefault((r["benchmark"], r["id"]), []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: r["sample"])
    return groups


def summarise(groups: dict, benches: list[str], ks: list[int], n_boot: int, seed: int, base_of=None) -> dict:
    """Per-benchmark mean, std over problems and bootstrap 95% interval of every figure, and the macro
    average over benchmarks (its interval from resampling the problems of every benchmark at once).
    `base_of` maps a derived base-tests line (<name>:base) to its benchmark; derived lines are not in the macro."""
    base_of = base_of or {}
    rng = np.random.default_rng(seed)
    out, boots = {}, {}
    for b in benches:
        probs = [(pid, s) for (bb, pid), s in groups.items() if bb == b]
        if not probs:
            continue
        ns = sorted({len(s) for _, s in probs})
        if ns[0] < max(ks):
            short = next(pid for pid, s in probs if len(s) == ns[0])
            raise UsageError(f"{b}: problem {short} has n={ns[0]} samples, fewer than k={max(ks)}; "
                            f"Pass@k needs n >= k (set --k)")
        vals = [problem_values(s, ks) for _, s in probs]
        idx = rng.integers(0, len(vals), size=(n_boot, len(vals))) if n_boot else None
        metrics = {}
        for name in vals[0]:
            if not all(name in v for v in vals):
                continue
            x = np.array([v[name] for v in vals], dtype=float)
            entry = {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0}
            if n_boot:
                boots[(b, name)] = x[idx].mean(1)
                entry["ci95"] = [float(np.percentile(boots[(b, name)], q)) for q in (2.5, 97.5)]
            metrics[name] = entry
        # per-problem values let --compare compute paired intervals of differences between runs
        out[b] = {"problems": len(vals), "samples_per_problem": ns[0] if len(ns) == 1 else ns,
                  "metrics": metrics,
                  "per_problem": {"ids": [pid for pid, _ in probs],
                                  "values": {m: [v[m] for v in vals] for m in metrics}}}
    for b, parent in base_of.items():
        if b in out:
            out[b].update(tests="base", base_of=parent)
            out[parent]["tests"] = "base+plus"
    done = [b for b in out if b not in base_of]
    macro = {}
    for m in (out[done[0]]["metrics"] if done else []):
        if not all(m in out[b]["metrics"] for b in done):
            continue
        macro[m] = {"mean": float(np.mean([out[b]["metrics"][m]["mean"] for b in done]))}
        if n_boot:
            bm = np.mean([boots[(b, m)] for b in done], axis=0)
            macro[m]["ci95"] = [float(np.percentile(bm, q)) for q in (2.5, 97.5)]
    return {"benchmarks": out, "macro": {"benchmarks": done, "metrics": macro}}


# ----------------------------------------------------------------------------------------------------
# TABLES AND PLOT
# ----------------------------------------------------------------------------------------------------

def metric_order(names) -> list[str]:
    def key(m):
        if m.startswith("eval/avg@"):
            return (0, 0)
        if m.startswith("eval/pass@"):
            return (1, int(m.split("@")[1]))
        order = ["distinct-1", "distinct-2", "distinct-3", "distinct-4", "distinct_answers",
                 "len_tokens", "len_words", "truncated"]
        return (2, order.index(m[5:]) if m[5:] in order else 99)
    return sorted(set(names), key=key)


def fmt(metric: str, x: float | None) -> str:
    """Accuracies (Avg@, Pass@) and the truncation rate in percent, as in the paper's tables."""
    if x is None:
        return "-"
    if metric.startswith(("eval/avg@", "eval/pass@")) or metric == "eval/truncated":
        return f"{100 * x:.1f}"
    if metric.startswith("eval/distinct-"):
        return f"{x:.3f}"
    return f"{x:.2f}"


def label(metric: str, n=None) -> str:
    """Table label: eval/pass@4 -> Pass@4; eval/avg@n -> Avg@32 when every problem had n = 32 samples."""
    m = metric[5:]
    if m == "avg@n":
        return f"Avg@{n}" if isinstance(n, int) else "Avg@n"
    return {"avg": "Avg", "pass": "Pass"}.get(m.split("@")[0], m) + ("@" + m.split("@")[1] if "@" in m else "")


def common_n(summaries: list[dict]):
    """The one number of samples per problem shared by every benchmark of every summary, else None."""
    ns = {json.dumps(v["samples_per_problem"]) for s in summaries for v in s["benchmarks"].values()}
    return json.loads(ns.pop()) if len(ns) == 1 else None


def summary_table(summary: dict) -> str:
    """Markdown: one row per benchmark and the macro average; mean [95% interval] per figure."""
    rows = [(b, v["metrics"], v["problems"]) for b, v in summary["benchmarks"].items()]
    members = summary["macro"]["benchmarks"]
    if len(members) > 1:
        rows.append(("macro", summary["macro"]["metrics"], sum(n for b, _, n in rows if b in members)))
    names = metric_order(m for _, ms, _ in rows for m in ms)
    n = common_n([summary])
    lines = ["| benchmark | problems | " + " | ".join(label(m, n) for m in names) + " |",
             "|---" * (len(names) + 2) + "|"]
    for b, ms, np_ in rows:
        cells = []
        for m in names:
            e = ms.get(m)
            if e is None:
                cells.append("-")
            elif "ci95" in e:
                cells.append(f"{fmt(m, e['mean'])} [{fmt(m, e['ci95'][0])}, {fmt(m, e['ci95'][1])}]")
            else:
                cells.append(fmt(m, e["mean"]))
        lines.append(f"| {b} | {np_} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_diff_interval(base: dict, other: dict, benches: list[str], metric: str, n_boot: int, seed: int):
    """95% paired bootstrap interval of mean(other - base) over the problems both runs scored (macro when
    several benchmarks: the mean of the per-benchmark differences, all resampled jointly); None when the
    runs did not score the same problems or a summary lacks per-problem values."""
    rng = np.random.default_rng(seed)
    reps = []
    for b in benches:
        pa = base["benchmarks"].get(b, {}).get("per_problem", {})
        pb = other["benchmarks"].get(b, {}).get("per_problem", {})
        if metric not in pa.get("values", {}) or metric not in pb.get("values", {}) or set(pa["ids"]) != set(pb["ids"]):
            return None
        va = dict(zip(pa["ids"], pa["values"][metric]))
        d = np.array([v - va[i] for i, v in zip(pb["ids"], pb["values"][metric])], dtype=float)
        reps.append(d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1))
    m = np.mean(reps, axis=0)
    return float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))


def signed(metric: str, x: float) -> str:
    d = fmt(metric, x)
    return d if d.startswith("-") else "+" + d


def compare_table(summaries: list[dict], labels: list[str], n_boot: int = 1000, seed: int = 0) -> str:
    """Markdown: one row per (benchmark, figure), one column per run, then each run minus the first with
    its paired bootstrap 95% interval over problems (same problems in both runs, so the pairing removes
    the problem-to-problem spread that an unpaired comparison would carry)."""
    benches = []
    for s in summaries:
        benches += [b for b in s["benchmarks"] if b not in benches]
    members = [b for b in benches if all(b in s["macro"]["benchmarks"] for s in summaries)]
    scopes = benches + (["macro"] if len(members) > 1 else [])

    def get(s, scope):
        return s["macro"]["metrics"] if scope == "macro" else s["benchmarks"].get(scope, {}).get("metrics", {})

    n = common_n(summaries)
    head = ["benchmark", "metric"] + labels + [f"{lb} - {labels[0]}" for lb in labels[1:]]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for scope in scopes:
        names = metric_order(m for s in summaries for m in get(s, scope))
        for m in names:
            vals = [get(s, scope).get(m, {}).get("mean") for s in summaries]
            diffs = []
            for s, v in zip(summaries[1:], vals[1:]):
                if v is None or vals[0] is None:
                    diffs.append("-")
                    continue
                ci = paired_diff_interval(summaries[0], s, members if scope == "macro" else [scope], m,
                                          n_boot, seed) if n_boot else None
                diffs.append(signed(m, v - vals[0]) + (f" [{signed(m, ci[0])}, {signed(m, ci[1])}]" if ci else ""))
            lines.append(f"| {scope} | {label(m, n)} | " + " | ".join(fmt(m, v) for v in vals) + " | "
                         + " | ".join(diffs) + (" |" if diffs else "|"))
    return "\n".join(lines) + "\n"


def plot_pass_at_k(summaries: list[dict], labels: list[str], path: Path) -> None:
    """One panel per benchmark (and macro): Pass@k versus k, log2 axis, shaded 95% interval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = []
    for s in summaries:
        benches += [b for b in s["benchmarks"] if b not in benches]
    scopes = benches + (["macro"] if len(summaries[0]["macro"]["benchmarks"]) > 1 else [])
    fig, axes = plt.subplots(1, len(scopes), figsize=(4.2 * len(scopes), 3.4), squeeze=False)
    for ax, scope in zip(axes[0], scopes):
        for s, lb in zip(summaries, labels):
            ms = s["macro"]["metrics"] if scope == "macro" else s["benchmarks"].get(scope, {}).get("metrics", {})
            pts = sorted((int(m.split("@")[1]), e) for m, e in ms.items() if m.startswith("eval/pass@"))
            if not pts:
                continue
            ks = [k for k, _ in pts]
            line, = ax.plot(ks, [100 * e["mean"] for _, e in pts], marker="o", label=lb)
            if all("ci95" in e for _, e in pts):
                ax.fill_between(ks, [100 * e["ci95"][0] for _, e in pts], [100 * e["ci95"][1] for _, e in pts],
                                color=line.get_color(), alpha=0.15, linewidth=0)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_title(scope)
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Pass@k (%)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_compare(args: Args) -> str:
    summaries, labels = [], []
    for f in args.compare:
        p = Path(f)
        if not p.is_file():
            raise UsageError(f"--compare: file not found: {p}")
        try:
            s = json.loads(p.read_text())
            s["benchmarks"], s["macro"]  # noqa: B018 -- shape check
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UsageError(f"--compare: {p} is not an eval.py summary.json ({type(e).__name__}: {e})") from None
        summaries.append(s)
        labels.append(s.get("name") or p.parent.name)
    if len(summaries) < 2:
        raise UsageError("--compare needs at least two summary.json files")
    if len(set(labels)) < len(labels):   # the same name twice: disambiguate by folder
        labels = [f"{lb} ({Path(f).parent.name})" for lb, f in zip(labels, args.compare)]
    table = compare_table(summaries, labels, args.bootstrap, args.seed)
    # settings that differ between runs make a comparison unfair: say so under the table
    keys = ("n", "temperature", "top_p", "max_new_tokens", "prompt_template", "chat", "benchmark", "k")
    notes = []
    cfgs = [s.get("config", {}) for s in summaries]
    for key in keys:
        # chat: the setting as it resolved (auto becomes true or false with the tokenizer), not the flag
        vals = [c.get("chat_template_used", c.get("chat")) if key == "chat" else c.get(key) for c in cfgs]
        if len({json.dumps(v) for v in vals}) > 1:
            notes.append(f"- settings differ: {key} = " + ", ".join(f"{lb}: {v}" for lb, v in zip(labels, vals)))
    text = (table + "\nValues: means over problems (accuracies and truncation in %); differences: "
            "[paired bootstrap 95% interval over problems].\n" + ("\n" + "\n".join(notes) + "\n" if notes else ""))
    out_dir = Path(args.out_dir or "runs/eval/compare")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(text)
    plot = Path(args.plot) if args.plot else out_dir / "pass_at_k.png"
    plot_pass_at_k(summaries, labels, plot)
    print(text, end="")
    print(f"wrote {out_dir / 'compare.md'} and {plot}", file=sys.stderr)
    return text


def resolve(args: Args) -> tuple[dict, dict]:
    """Check the arguments and fill every default that depends on others -> (config, templates)."""
    if args.n < 0:
        raise UsageError(f"--n must be >= 1 (or 0: the protocol's default), got {args.n}")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UsageError("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.bootstrap < 0 or args.limit < 0 or args.batch_size < 1:
        raise UsageError("--bootstrap and --limit must be >= 0, --batch-size >= 1")
    if (args.prompt_template not in ("auto", *TEMPLATES)) and "{problem}" not in args.prompt_template:
        raise UsageError(f"--prompt-template must be auto, {', '.join(TEMPLATES)} or contain {{problem}}")
    shard = None
    if args.shard:
        m = re.fullmatch(r"(\d+)/(\d+)", args.shard)
        if not m or not int(m[1]) < int(m[2]):
            raise UsageError(f"--shard must be i/N with 0 <= i < N, got {args.shard!r}")
        shard = (int(m[1]), int(m[2]))
    window = []
    for flag, text in (("--lcb-start", args.lcb_start), ("--lcb-end", args.lcb_end)):
        try:
            window.append(parse_day(text, flag) if text else None)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if window[0] and window[1] and window[0] > window[1]:
        raise UsageError(f"--lcb-start {args.lcb_start} is after --lcb-end {args.lcb_end}")
    cfg = dataclasses.asdict(args)
    cfg.pop("compare"), cfg.pop("plot")
    cfg["shard"] = shard
    cfg["lcb_window"] = window
    return cfg


def main(argv=None) -> int:
    args = parse_args(Args, argv)
    try:
        if args.compare:
            run_compare(args)
            return 0
        return evaluate(args)
    except UsageError as e:
        print(f"eval.py: error: {e}", file=sys.stderr)
        return 2


def parse_ks(args: Args) -> list[int] | None:
    """--k as a sorted list (None: the default grid, chosen once the samples are known)."""
    try:
        ks = sorted({int(x) for x in args.k.split(",")}) if args.k else None
    except ValueError:
        raise UsageError(f"--k must be comma-separated integers, got {args.k!r}") from None
    if ks and min(ks) < 1:
        raise UsageError(f"--k values must be >= 1, got {args.k}")
    return ks


def load_benchmarks(specs: list[str], args: Args, cfg: dict):
    """Every --benchmark, filtered (LiveCodeBench dates, --limit, --shard) -> (problems, kinds, sources,
    excluded); every bad row is reported with its file and line, and stops the run unless --on-bad-row skip."""
    problems, kinds, sources, bad = {}, {}, {}, []
    window, excluded = cfg.pop("lcb_window"), set()
    cfg["lcb_filter"] = {"start": args.lcb_start or None, "end": args.lcb_end or None, "inclusive": True,
                         "benchmarks": {}} if any(window) else None
    if any(window) and not any(is_lcb(bench_name(s)) for s in specs):
        raise UsageError("--lcb-start/--lcb-end filter LiveCodeBench, but --benchmark names none "
                        f"(livecodebench or a livecodebench*.jsonl file): {args.benchmark!r}")
    for spec in specs:
        probs, errors, kind, source = load_benchmark(spec, args)
        name = bench_name(spec)
        bad += errors
        if any(window) and is_lcb(name):
            kept = date_filter(probs, source, *window)
            keep = {id(p) for p in kept}
            excluded |= {(name, p["id"]) for p in probs if id(p) not in keep}
            cfg["lcb_filter"]["benchmarks"][name] = {"kept": len(kept), "of": len(probs),
                                                     "dates_from": str(meta_path(source))}
            print(f"{name}: {len(kept)} of {len(probs)} problems with contest dates in "
                  f"[{args.lcb_start or '-inf'}, {args.lcb_end or '+inf'}]", file=sys.stderr)
            probs = kept
        if args.limit:
            probs = probs[:args.limit]
        if cfg["shard"]:
            i, n_sh = cfg["shard"]
            probs = probs[i::n_sh]
        problems[name], kinds[name], sources[name] = probs, (kind if args.kind == "auto" else args.kind), source
        print(f"{name}: {len(probs)} problems from {source}" + (f", {len(errors)} bad rows" if errors else ""),
              file=sys.stderr)
    if bad:
        listing = "\n  ".join(bad)
        if args.on_bad_row == "error":
            raise UsageError(f"{len(bad)} benchmark row(s) cannot be loaded (--on-bad-row skip to go on without them):\n  {listing}")
        print(f"warning: skipping {len(bad)} bad row(s):\n  {listing}", file=sys.stderr)
    cfg["bad_rows"] = bad
    return problems, kinds, sources, excluded


def trained_prompt(model: str) -> dict:
    """The prompt settings a lad.py checkpoint was trained with (its prompt.json), or {} for other models."""
    path = Path(model) / "prompt.json" if model else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def kind_defaults(kinds: dict, args: Args, cfg: dict, ks, scoring_only: bool) -> None:
    """The settings that depend on the benchmarks' kinds (templates, --max-new-tokens 0, --n 0), into cfg; a
    checkpoint's own prompt.json decides the math template and the chat setting where the flags say auto."""
    trained = trained_prompt(args.model)
    math_template = trained.get("template", "boxed")
    cfg["templates"] = {b: (args.prompt_template if args.prompt_template != "auto" else
                            "raw" if b in tasks.BUILTIN else {"sum": "raw", "code": "code"}.get(k, math_template))
                        for b, k in kinds.items()}
    if args.chat == "auto" and "chat" in trained:
        cfg["chat"] = "true" if trained["chat"] else "false"
    cfg["prompt_from"] = f"{args.model}/prompt.json" if trained else "flags"
    if args.max_new_tokens == 0:   # the longest any benchmark needs: a built-in task's own limit, else 8192
        cfg["max_new_tokens"] = max((tasks.BUILTIN[b].new_tokens if b in tasks.BUILTIN else
                                     tasks.SUM.new_tokens if k == "sum" else 8192 for b, k in kinds.items()), default=8192)
    if args.n == 0:
        cfg["n"] = 16 if kinds and all(k == "code" for k in kinds.values()) else 32
    if ks and not scoring_only and max(ks) > cfg["n"]:
        raise UsageError(f"Pass@{max(ks)} needs n >= {max(ks)} samples per problem, but --n is {cfg['n']}")


def scored_samples(args: Args, problems: dict, kinds: dict, excluded: set, cfg: dict) -> tuple[list[dict], str]:
    """--generations: the files' samples, each benchmark's verifier kind settled -> (rows, run name)."""
    golds = {(b, p["id"]): p["gold"] for b, ps in problems.items() for p in ps}
    paths = [Path(x.strip()) for x in args.generations.split(",") if x.strip()]
    rows, skipped = read_generations(paths, args, golds, excluded)
    if cfg["lcb_filter"]:
        cfg["lcb_filter"]["samples_skipped"] = skipped
    for r in rows:
        # task kind: --kind, else the loaded benchmark's, else the row's own (eval.py writes it),
        # else a built-in task's and math otherwise
        where, row_kind = r.pop("where"), r.pop("kind")
        b = r["benchmark"]
        if b not in kinds:
            kinds[b] = args.kind if args.kind != "auto" else row_kind or (
                tasks.BUILTIN[b].kind if b in tasks.BUILTIN else "math")
        if row_kind not in (None, kinds[b]) and args.kind == "auto":
            raise UsageError(f"{where}: kind {row_kind!r}, but {b} is scored as {kinds[b]!r} (set --kind)")
    for k in ("model", "engine", "device", "dtype", "temperature", "top_p", "max_new_tokens",
              "prompt_template", "chat", "batch_size", "n"):
        cfg[k] = None                       # not ours: the file's producer chose them
    cfg["templates"] = {}
    return rows, args.name or (paths[0].parent.name if len(paths) > 1 or paths[0].stem == "samples" else paths[0].stem)


def generated_samples(args: Args, specs: list[str], problems: dict, kinds: dict, cfg: dict) -> tuple[list[dict], str]:
    """Samples generated here from --model (the tiny model for a built-in task) -> (rows, run name)."""
    if not specs:
        raise UsageError("nothing to evaluate: give --benchmark, --generations or --compare")
    if not args.model:
        if len(problems) != 1 or next(iter(problems)) not in tasks.BUILTIN:
            raise UsageError("--model is required (an HF model folder), except for one built-in task alone "
                             "(builtin-sum or builtin-code: the tiny model warm-started on it)")
        task = tasks.BUILTIN[next(iter(problems))]
        cfg["model"] = tiny.default_model_dir(task, 0, lambda m: print(m, file=sys.stderr))
    elif not Path(args.model).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")       # a hub id: the local cache only, no download
    return generate(problems, cfg), args.name or Path(cfg["model"]).name


def report_missing(problems: dict, rows: list[dict], cfg: dict) -> None:
    """Problems of a benchmark with no samples are reported (and recorded), never silently left out."""
    have = {(r["benchmark"], r["id"]) for r in rows}
    missing = {b: [p["id"] for p in ps if (b, p["id"]) not in have] for b, ps in problems.items()}
    missing = {b: ids for b, ids in missing.items() if ids}
    for b, ids in missing.items():
        print(f"warning: {b}: {len(ids)} problem(s) have no generations (e.g. {ids[:3]}); figures exclude them",
              file=sys.stderr)
    cfg["missing_problems"] = missing


def score_and_summarise(rows: list[dict], problems: dict, kinds: dict, ks: list[int], args: Args):
    """Reward every sample, add EvalPlus's base-only view, summarise -> (summary, base_of)."""
    for r in rows:
        r["kind"] = kinds[r["benchmark"]]
    score_rows(rows, weak_sandbox=args.weak_sandbox, grader=args.grader, progress=True)
    rows, bad = drop_bad_problems(rows)
    extra = base_rows(rows)        # EvalPlus: the same samples on the base tests only (<name>:base)
    base_of = {r["benchmark"]: r["benchmark"][:-len(BASE)] for r in extra}
    benches = []
    for b in dict.fromkeys(list(problems) + [r["benchmark"] for r in rows]):
        benches += [b] + [d for d, parent in base_of.items() if parent == b]
    summary = summarise(per_problem(rows + extra), benches, ks, args.bootstrap, args.seed, base_of)
    for b, entry in summary["benchmarks"].items():
        if b not in base_of:
            entry["reasons"] = reason_counts(rows, b)
            entry["bad_problems"] = bad.get(b, [])
    summary["bad_problems"] = sum(len(v) for v in bad.values())
    return summary, base_of


def drop_bad_problems(rows: list[dict]) -> tuple[list[dict], dict]:
    """A problem whose own reference fails (the sandbox's reason bad_problem: EvalPlus's canonical solution
    on some input) says nothing about the model: its samples leave the figures, and it is reported with the
    sandbox's detail, which starts with its file:line. -> (rows kept, {bench: [{"id", "detail"}]})."""
    bad = {}
    for r in rows:
        if r.get("reason") == "bad_problem" and r["id"] not in {x["id"] for x in bad.get(r["benchmark"], [])}:
            bad.setdefault(r["benchmark"], []).append({"id": r["id"], "detail": r.get("detail", "")})
    for b, probs in bad.items():
        print(f"warning: {b}: {len(probs)} problem(s) excluded, their reference fails: "
              + "; ".join(p["detail"] for p in probs[:3]), file=sys.stderr)
    ids = {(b, p["id"]) for b, probs in bad.items() for p in probs}
    return [r for r in rows if (r["benchmark"], r["id"]) not in ids], bad


def write_outputs(out_dir: Path, summary: dict, rows: list[dict], kinds: dict, base_of: dict) -> None:
    """samples.jsonl, summary.json and summary.md under out_dir; the table to stdout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "samples.jsonl", "w") as f:
        for r in rows:
            keep = ("benchmark", "id", "sample", "response", "answer", "reward", "reason", "gold", "truncated",
                    "num_tokens", "kind")
            out = {k: r.get(k) for k in keep}
            if isinstance(r["gold"], dict):        # a test spec: a compact reference, and the judge's detail
                out.update(gold=code_ref_of(r["gold"]), detail=r.get("detail"), base_reward=r.get("base_reward"))
            f.write(json.dumps(out) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = summary_table(summary)
    notes = "".join(f"{d}: the samples of {b} on its base tests only (EvalPlus's base benchmark; {b} is base + plus); "
                    "not in the macro.\n" for d, b in base_of.items())
    (out_dir / "summary.md").write_text(f"# {summary['name']}\n\n{table}\nmean [bootstrap 95% interval over problems]; "
                                        f"accuracies and truncation in %.\n{notes}")
    print(table, end="")
    print(f"wrote {out_dir}/samples.jsonl, summary.json, summary.md ({summary['seconds']} s)", file=sys.stderr)


def evaluate(args: Args) -> int:
    """The evaluation recipe: load -> samples (generated or read) -> score -> summarise -> write."""
    cfg = resolve(args)
    t0 = time.time()
    scoring_only = bool(args.generations)
    if scoring_only and args.shard:
        raise UsageError("--shard splits generation; score all shards at once with --generations a,b,...")
    specs = [s.strip() for s in (args.benchmark or ("" if scoring_only else "builtin-sum")).split(",") if s.strip()]
    specs = [t.name if (t := tasks.builtin(s, "eval.py")) else s for s in specs]
    if len({bench_name(s) for s in specs}) < len(specs):
        raise UsageError(f"--benchmark names a benchmark twice: {args.benchmark}")
    ks = parse_ks(args)

    problems, kinds, sources, excluded = load_benchmarks(specs, args, cfg)
    kind_defaults(kinds, args, cfg, ks, scoring_only)
    try:                               # a judge that cannot run here (code without bwrap): say so before sampling
        tasks.require(set(kinds.values()), weak_sandbox=args.weak_sandbox)
    except ValueError as e:
        raise UsageError(str(e)) from None
    cfg.update(kinds=kinds, sources=sources, command="python " + " ".join(sys.argv))
    rows, name = (scored_samples(args, problems, kinds, excluded, cfg) if scoring_only
                  else generated_samples(args, specs, problems, kinds, cfg))
    cfg["name"] = name
    report_missing(problems, rows, cfg)
    if not rows:
        raise UsageError("no samples to score")
    if ks is None:   # default Pass@k grid: up to the smallest number of samples any problem has
        ks = default_ks(min(len(g) for g in per_problem(rows).values()) if scoring_only else cfg["n"])
    cfg["k"] = ks
    summary, base_of = score_and_summarise(rows, problems, kinds, ks, args)
    cfg["protocol"] = protocol(kinds, problems, cfg)
    summary = {"name": name, "config": cfg, **summary, "seconds": round(time.time() - t0, 1)}
    write_outputs(Path(args.out_dir or f"runs/eval/{name}"), summary, rows, kinds, base_of)
    return 0


if __name__ == "__main__":
    sys.exit(main())
