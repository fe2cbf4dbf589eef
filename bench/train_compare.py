"""The paper's comparison (Tables 1, 4, 5, 6) at small scale, with intervals: LAD against its baselines on
the embedded default, every method on the same budget and at a learning rate chosen for it the same way.

The protocol (fixed before the runs; README "What it does on the embedded default" and docs/baselines.md
"The comparison" state it with the results):

- Task and budget: the embedded default (`python lad.py` with its defaults: builtin-sum, the tiny Qwen2
  warm start, 200 steps of 16 prompts x 8 responses, 4 updates per rollout, 12 new tokens, temperature 1)
  for every method, every other lad.py flag at its default (the methods' own knobs are the authors' settings,
  baselines.BaselineArgs). `--underfilled train` is given explicitly (lad.py's default, auto, resolves to it
  on these small prompt sets too: a step whose dynamic sampling cannot fill its batch in 10 rounds, which a
  collapsed policy reaches on this task, trains on the groups it kept, and the run counts it). Output-only
  flags: `--eval-every <steps>` (held-out evaluation at step 0 and at the last step only), `--save-every 0
  --save-optimizer false` (one checkpoint, at the end).
- Held-out evaluation: builtin-sum's 29 held-out prompts, 16 samples each at temperature 1, at the last step.
- Learning rate, chosen per method by one sweep: the 85 training prompts are split by a fixed rule (the 17
  whose sha256 of the prompt id is smallest are the validation prompts), written as builtin-sum rows to
  OUT_DIR/sweep_train.jsonl (68) and sweep_val.jsonl (17); each sweep run trains on the 68 and is scored on
  the 17 (`--train-data OUT_DIR/sweep_train.jsonl --eval-data OUT_DIR/sweep_val.jsonl --prompt-template raw
  --max-new-tokens 12`), lr in --lrs (1e-4, 3e-4, 1e-3), --sweep-seeds seeds (0, 1). A method's chosen lr
  is the one with the best mean validation Avg@16 over those seeds (ties: the smaller lr). The held-out
  prompts are never used in the sweep. Swept: grpo, flowrl, clip-cov, kl-cov, entadv and LAD with each
  divergence (kl, rkl, jf, tv, hd, js) at 1/eta = 4 (the methods of the runs below); LAD at another 1/eta takes
  lad-js's lr.
- Runs on all 85 training prompts, scored on the 29 held-out: the main table (--methods at their chosen
  lr, --seeds seeds), the same methods at the common lr --common-lr (lad.py's default 3e-4; a run is
  shared when a chosen lr equals it), the divergence claim (lad-<f> for every f, each at its chosen lr,
  --claim-seeds seeds) and the eta claim (lad-js at 1/eta in --inv-etas, at lad-js's chosen lr).
- Statistics over seeds: per figure the mean and a 95% t-interval; paired differences against GRPO (seed s
  against seed s, both at their chosen lr), and LAD-JS's against every method, with their t-intervals. A
  claim holds when the interval of its difference lies above 0, does not hold when it lies below 0, and is
  not resolved when it contains 0:
  "LAD improves accuracy" = lad-js - grpo on Avg@16 (Pass@16 a second row); "LAD improves diversity" =
  lad-js - grpo on distinct correct answers per prompt (distinct-4 a second row); "strict divergences beat
  non-strict ones" = per seed, mean Avg@16 of {tv, hd, js} minus that of {kl, rkl, jf}; "robust to eta" =
  lad-js at each 1/eta - grpo on Avg@16: holds if every interval lies above 0, does not hold if any lies
  below 0, else not resolved.

Runs are single processes, `python lad.py ...`, --jobs at a time (2 on the 2-core machine), each with
--threads torch threads: lad.py gives one process every core of the machine (torch.set_num_threads of
os.cpu_count()), so a run is started through a two-line launcher that has os.cpu_count() report --threads
and then runs lad.py as __main__ (nothing else differs from `python lad.py ...`). Each run's folder holds
its metrics.jsonl, log.txt (stdout and stderr) and run.json (command, wall and CPU seconds, peak RSS). A run
whose metrics.jsonl already holds its last step with an evaluation is skipped, so the command resumes where
it stopped; an unfinished folder is removed and the run redone from step 0. To stop between runs: create
OUT_DIR/STOP (no new run starts; the running ones finish; the reports are written; the file is removed).

    python bench/train_compare.py                       # everything: sweep, main, common lr, claims (hours)
    python bench/train_compare.py --dry-run             # list the runs (those done marked) and stop
    python bench/train_compare.py --report-only         # re-read finished runs: tables, verdicts, plot
    python bench/train_compare.py --methods grpo lad-js --lrs 3e-4 1e-3 --sweep-seeds 1 --seeds 2 \
        --claims false --common false --steps 2 --extra "--eval-k 4 --eval-prompts 4"    # a smoke run (the test's)
    cp runs/compare/compare.png docs/compare.png        # the README's plot

Writes to OUT_DIR: sweep.md (validation Avg@16 per method and lr, the chosen lr), table.md (every table:
main, common lr, divergences, eta, each with paired differences against GRPO), verdicts.md (the four
claims), per_seed.md (each seed's main figures), readme.md (the README's table and verdicts), results.json
(every run's figures per seed, the chosen lrs, the CPU time), compare.png (held-out
Pass@k against k per method at its chosen lr and training entropy over steps, 95% interval bands). Prints
a progress bar over runs, then the total CPU time of all the runs and the wall time of this invocation.

Left out: the paper's scale (7B models, 8192 tokens, real benchmarks); intervals over prompts (eval.py
--compare does those for two checkpoints; here the unit is the seed, which carries the training noise);
any correction for multiple comparisons (each verdict is one pre-declared interval); tuning anything but the
lr (every other knob stays at its authors' value).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import parse_args  # noqa: E402


@dataclasses.dataclass
class Args:
    """The paper's comparison at small scale: lr sweep, main table, claims, with t-intervals over seeds."""

    methods: list[str] = dataclasses.field(default_factory=lambda: ["grpo", "flowrl", "clip-cov", "kl-cov", "entadv",
                                                                  "lad-js"])
    """methods of the main and common-lr tables: a lad.py --loss other than lad, or lad-<divergence>"""
    seeds: int = 8
    """seeds of the main and common-lr tables (lad.py --seed 0 .. N-1)"""
    claim_seeds: int = 8
    """seeds of the divergence and eta claims"""
    sweep_seeds: int = 2
    """seeds of the lr sweep"""
    lrs: list[str] = dataclasses.field(default_factory=lambda: ["1e-4", "3e-4", "1e-3"])
    """the lr grid of the sweep (lad.py --lr)"""
    common_lr: float = 3e-4
    """the lr every method gets in the common-lr table (lad.py's default), and every lr when --sweep is false"""
    divergences: list[str] = dataclasses.field(default_factory=lambda: ["kl", "rkl", "jf", "tv", "hd", "js"])
    """LAD's divergences in the sweep and the divergence claim"""
    inv_etas: list[str] = dataclasses.field(default_factory=lambda: ["0.25", "1", "4", "16"])
    """1/eta of lad-js in the eta claim (lad.py --inv-eta)"""
    sweep: bool = True
    """run the lr sweep (false: every method at --common-lr)"""
    claims: bool = True
    """run the divergence and eta claims"""
    common: bool = True
    """run the common-lr table"""
    val_prompts: int = 17
    """training prompts held out for the sweep's validation (those with the smallest sha256 of their id)"""
    steps: int = 200
    """rollout steps of every run (lad.py --steps; the evaluation is at step 0 and the last step)"""
    extra: list[str] = dataclasses.field(default_factory=lambda: [""])
    """extra lad.py flags for every run, as one quoted string (e.g. --extra "--eval-k 4"); changes the budget"""
    jobs: int = 2
    """runs at a time"""
    threads: int = 1
    """torch threads of each run"""
    out_dir: str = "runs/compare"
    """where the runs (OUT_DIR/sweep/, OUT_DIR/runs/) and the reports go"""
    dry_run: bool = False
    """list the runs (done ones marked) and stop"""
    report_only: bool = False
    """run nothing: re-read the finished runs and write the reports"""


BASELINES = ("grpo", "flowrl", "clip-cov", "kl-cov", "entadv")
STRICT, NON_STRICT = ("tv", "hd", "js"), ("kl", "rkl", "jf")
# (metrics key, label, decimals); "final_entropy" is train/entropy at the last step (below)
FIGURES = [("eval/avg@n", "Avg@16", 3), ("eval/pass@1", "Pass@1", 3), ("eval/pass@4", "Pass@4", 3),
           ("eval/pass@16", "Pass@16", 3), ("eval/distinct_answers", "distinct correct / prompt", 2),
           ("eval/distinct-1", "distinct-1", 3), ("eval/distinct-2", "distinct-2", 3),
           ("eval/distinct-3", "distinct-3", 3), ("eval/distinct-4", "distinct-4", 3),
           ("final_entropy", "final entropy", 3)]
TABLE_FIGS = ["eval/avg@n", "eval/pass@4", "eval/pass@16", "eval/distinct_answers", "eval/distinct-4", "final_entropy"]
LAUNCHER = ("import os, runpy, sys; os.cpu_count = lambda: int(os.environ['LAD_THREADS']); "
            "sys.argv[0] = 'lad.py'; runpy.run_path('lad.py', run_name='__main__')")


# ----------------------------------------------------------------------------------------------------
# Statistics (pure)
# ----------------------------------------------------------------------------------------------------

def _betainc(a, b, x):
    """Regularised incomplete beta I_x(a, b), by its continued fraction (Lentz; Numerical Recipes 6.4)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f


def t_cdf(t, df):
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p, df):
    """The p-quantile of Student's t (bisection on t_cdf; e.g. t_quantile(0.975, 7) = 2.3646)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci(xs, level=0.95):
    """(mean, low, high, n): the mean of xs (None left out) and its t-interval; low = high = nan below 2 values."""
    xs = [float(x) for x in xs if x is not None and not math.isnan(x)]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = sum(xs) / n
    if n < 2:
        return m, math.nan, math.nan, n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return m, m - h, m + h, n


def paired(a, b):
    """a[s] - b[s] over the seeds both have (dicts seed -> value; None left out), in seed order."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b)) if a[s] is not None and b[s] is not None]


def verdict(lo, hi):
    """A claim's verdict from the interval of its difference: above 0, below 0, or containing 0."""
    if math.isnan(lo) or math.isnan(hi):
        return "not resolved"
    return "holds" if lo > 0 else "does not hold" if hi < 0 else "not resolved"


def verdict_all(intervals):
    """Every interval above 0: holds; any below 0: does not hold; else not resolved (the eta claim)."""
    vs = [verdict(lo, hi) for lo, hi in intervals]
    if vs and all(v == "holds" for v in vs):
        return "holds"
    return "does not hold" if "does not hold" in vs else "not resolved"


def choose_lr(scores):
    """{lr: [validation Avg@16 per seed]} -> the lr of the best mean (ties: the smaller lr)."""
    means = {lr: sum(v) / len(v) for lr, v in scores.items() if v}
    best = max(means.values())
    return min(lr for lr, m in means.items() if m == best)


def fmt_ci(m, lo, hi, n, d=3, sign=""):
    """'0.617 [0.512, 0.722]' (just the mean below 2 values, '-' without any); sign="+" for a difference."""
    if n == 0 or math.isnan(m):
        return "-"
    f = f"{sign}.{d}f"
    return f"{m:{f}}" if math.isnan(lo) else f"{m:{f}} [{lo:{f}}, {hi:{f}}]"


def fmt_diff(m, lo, hi, n, d=3):
    """'+0.052 [-0.031, +0.135]' for a difference."""
    return fmt_ci(m, lo, hi, n, d, sign="+")


# ----------------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Run:
    """One lad.py run: a method at an lr (None: its chosen lr, not known before the sweep), a seed, 1/eta."""
    split: str            # "sweep" (train on sweep_train, score on sweep_val) or "full" (85 train, 29 held-out)
    method: str
    seed: int
    lr: float | None = None
    inv_eta: float = 4.0

    def key(self):
        """The method as the tables name it: lad-js, lad-js@1/eta=16."""
        return self.method if self.inv_eta == 4.0 else f"{self.method}@1/eta={self.inv_eta:g}"

    def folder(self, out_dir):
        eta = "" if self.inv_eta == 4.0 else f"-inveta{self.inv_eta:g}"
        return Path(out_dir) / ("sweep" if self.split == "sweep" else "runs") / f"{self.method}{eta}-lr{self.lr:g}-s{self.seed}"

    def flags(self, a, out_dir):
        """lad.py's command-line flags for this run."""
        m = ["--loss", "lad", "--divergence", self.method[4:]] if self.method.startswith("lad-") else ["--loss", self.method]
        if self.method.startswith("lad-") and self.inv_eta != 4.0:
            m += ["--inv-eta", f"{self.inv_eta:g}"]
        if self.split == "sweep":
            m += ["--train-data", str(Path(out_dir) / "sweep_train.jsonl"), "--eval-data",
                  str(Path(out_dir) / "sweep_val.jsonl"), "--prompt-template", "raw", "--max-new-tokens", "12"]
        return [*m, "--lr", f"{self.lr:g}", "--seed", str(self.seed), "--steps", str(a.steps), "--eval-every",
                str(a.steps), "--underfilled", "train", "--save-every", "0", "--save-optimizer", "false",
                "--out", str(self.folder(out_dir)), *a.extra]


def sweep_methods(a):
    """The swept methods: the baselines of --methods, then LAD with each of --divergences (and --methods' LAD)."""
    lad = [f"lad-{d}" for d in a.divergences if a.claims] + [m for m in a.methods if m.startswith("lad-")]
    return [m for m in a.methods if not m.startswith("lad-")] + sorted(set(lad), key=lad.index)


def plan(a, chosen):
    """Every run of the study in the order they are started, [(group, Run)], lr None where it is a chosen lr
    still unknown. The same Run may appear in several groups (shared runs). Order: the sweep (seed by seed),
    the main table, the claims' first 6 seeds, the common-lr table, the claims' other seeds (the claims'
    seeds are the first thing to cut when time is short)."""
    lrs = [float(x) for x in a.lrs]
    out = []
    if a.sweep:
        for seed in range(a.sweep_seeds):
            for lr in lrs:
                out += [("sweep", Run("sweep", m, seed, lr)) for m in sweep_methods(a)]
    pick = (lambda m: chosen.get(m)) if a.sweep else (lambda m: a.common_lr)
    out += [("main", Run("full", m, s, pick(m))) for s in range(a.seeds) for m in a.methods]
    claim = []
    if a.claims:
        for s in range(a.claim_seeds):
            claim += [("divergence", Run("full", f"lad-{d}", s, pick(f"lad-{d}"))) for d in a.divergences]
            claim += [("eta", Run("full", "lad-js", s, pick("lad-js"), float(v))) for v in a.inv_etas]
    out += [x for x in claim if x[1].seed < 6]
    if a.common:
        out += [("common", Run("full", m, s, a.common_lr)) for s in range(a.seeds) for m in a.methods]
    return out + [x for x in claim if x[1].seed >= 6]


_DONE, _READ = set(), {}


def is_done(folder, steps):
    """The run's metrics.jsonl holds its last step with the held-out evaluation (remembered once true)."""
    p = Path(folder) / "metrics.jsonl"
    if (p, steps) in _DONE:
        return True
    if not p.is_file():
        return False
    with open(p, "rb") as fh:                      # the last line only: files are read every few seconds
        fh.seek(max(0, p.stat().st_size - 65536))
        lines = [x for x in fh.read().decode(errors="replace").splitlines() if x.strip()]
    try:
        row = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:                   # a line being written
        return False
    if row.get("step") == steps and "eval/avg@n" in row:
        _DONE.add((p, steps))
        return True
    return False


def read_run(folder):
    """A finished run's figures: the last step's eval/ figures, final_entropy (train/entropy at the last step,
    or at the last step that trained on something), the step-0 evaluation, entropy per step, and run.json."""
    key = (str(folder), (Path(folder) / "metrics.jsonl").stat().st_mtime_ns)
    if key not in _READ:
        _READ[key] = _read_run(folder)
    return _READ[key]


def _read_run(folder):
    rows = [json.loads(x) for x in (Path(folder) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    final = rows[-1]
    res = {k: v for k, v in final.items() if k.startswith("eval/")}
    ents = [(r["step"], r["train/entropy"]) for r in rows if r.get("train/entropy") is not None]
    res["final_entropy"] = ents[-1][1] if ents else None
    res["final_entropy_step"] = ents[-1][0] if ents else None
    res["eval0"] = {k: v for k, v in rows[0].items() if k.startswith("eval/")} if rows[0]["step"] == 0 else {}
    res["entropy_steps"] = ents
    steps = [r for r in rows if "train/reward_mean" in r]
    res["train_reward_last20"] = sum(r["train/reward_mean"] for r in steps[-20:]) / max(1, len(steps[-20:]))
    res["underfilled_steps"] = sum(1 for r in steps if r.get("rollout/underfilled"))
    res["empty_steps"] = sum(1 for r in steps if r.get("train/entropy") is None)
    meta = Path(folder) / "run.json"
    res["run"] = json.loads(meta.read_text()) if meta.is_file() else {}
    return res


def write_sweep_data(out_dir, n_val):
    """builtin-sum's training prompts split into sweep_train.jsonl and sweep_val.jsonl (the n_val whose
    sha256 of the id is smallest), as builtin-sum rows that data.py loads as kind sum."""
    import tasks
    rows = tasks.builtin_rows(tasks.SUM, "train")
    order = sorted(rows, key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    val = {r["id"] for r in order[:n_val]}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, keep in (("sweep_train.jsonl", False), ("sweep_val.jsonl", True)):
        text = "".join(json.dumps({"id": r["id"], "problem": r["prompt"], "answer": r["gold"], "kind": "sum"}) + "\n"
                       for r in rows if (r["id"] in val) == keep)
        if not (out_dir / name).is_file() or (out_dir / name).read_text() != text:
            (out_dir / name).write_text(text)


def start(run, a, out_dir):
    """Start one run (its unfinished folder removed first); returns (Popen, start time)."""
    folder = run.folder(out_dir)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cmd = [sys.executable, "-c", LAUNCHER, *run.flags(a, out_dir)]
    env = {**os.environ, "LAD_THREADS": str(a.threads), "OMP_NUM_THREADS": str(a.threads),
           "MKL_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    log = open(folder / "log.txt", "w")
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    (folder / "cmd.txt").write_text("python lad.py " + " ".join(run.flags(a, out_dir)) + "\n")
    return p, time.time()


def reap(p, t0, run, out_dir):
    """If the run has ended: record run.json (wall, CPU, peak RSS) and return its exit code; else None."""
    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
    if pid == 0:
        return None
    p.returncode = os.waitstatus_to_exitcode(status)
    folder = run.folder(out_dir)
    info = {"command": (folder / "cmd.txt").read_text().strip(), "wall_s": round(time.time() - t0, 2),
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 2), "max_rss_mb": round(ru.ru_maxrss / 1024, 1),
            "load_avg_end": os.getloadavg()[0], "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "exit_code": p.returncode}
    (folder / "run.json").write_text(json.dumps(info, indent=1) + "\n")
    return p.returncode


def sweep_scores(a, out_dir):
    """{method: {lr: [validation Avg@16 of each finished seed]}} and {method: chosen lr} where complete."""
    scores, chosen = {}, {}
    if not a.sweep:
        return scores, chosen
    for m in sweep_methods(a):
        scores[m] = {}
        for lr in [float(x) for x in a.lrs]:
            folders = [Run("sweep", m, s, lr).folder(out_dir) for s in range(a.sweep_seeds)]
            scores[m][lr] = [read_run(f)["eval/avg@n"] for f in folders if is_done(f, a.steps)]
        if all(len(v) == a.sweep_seeds for v in scores[m].values()):
            chosen[m] = choose_lr(scores[m])
    return scores, chosen


def execute(a, out_dir):
    """Run every unfinished run of the plan, --jobs at a time, the chosen lrs resolved as the sweep ends.
    Returns the runs that failed and those never started (their chosen lr unknown: a sweep run failed)."""
    from tqdm import tqdm

    _, chosen = sweep_scores(a, out_dir)
    done, failed, running = set(), set(), {}          # folders; running: folder -> (Run, Popen, start time)
    bar = tqdm(desc="runs", dynamic_ncols=True, total=0)
    while True:
        todo, unknown = {}, 0
        for _, r in plan(a, chosen):
            if r.lr is None:
                unknown += 1
                continue
            f = r.folder(out_dir)
            if f in done or f in running or f in failed or f in todo:
                continue
            if is_done(f, a.steps):
                done.add(f)
                bar.update(1)
            else:
                todo[f] = r
        bar.total = len(done) + len(running) + len(failed) + len(todo) + unknown
        bar.refresh()
        stop = (out_dir / "STOP").exists()
        for f, r in todo.items():
            if len(running) >= a.jobs or stop:
                break
            running[f] = (r, *start(r, a, out_dir))
            bar.set_postfix_str(f"started {r.key()} lr {r.lr:g} s{r.seed}")
        if not running:
            break
        time.sleep(3)
        for f, (r, p, t0) in list(running.items()):
            rc = reap(p, t0, r, out_dir)
            if rc is None:
                continue
            del running[f]
            if rc != 0 or not is_done(f, a.steps):
                failed.add(f)
                tqdm.write(f"FAILED (exit {rc}): {f}\n" + (f / "log.txt").read_text()[-2000:])
        _, chosen = sweep_scores(a, out_dir)
    bar.close()
    if stop:
        print(f"stopped: {out_dir / 'STOP'} exists (the running runs were finished; remove it and rerun to go on)")
        (out_dir / "STOP").unlink()
    return sorted(failed), unknown if not stop else 0


# ----------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------

def collect(a, out_dir):
    """{group: {method key: {"lr", "seeds": {seed: figures}}}} of the finished runs of the plan."""
    _, chosen = sweep_scores(a, out_dir)
    res = {}
    for group, r in plan(a, chosen):
        if r.lr is None or not is_done(r.folder(out_dir), a.steps):
            continue
        key = r.key() if group != "sweep" else f"{r.key()} lr {r.lr:g}"
        entry = res.setdefault(group, {}).setdefault(key, {"lr": r.lr, "seeds": {}})
        entry["seeds"][r.seed] = read_run(r.folder(out_dir))
    return res


def values(entry, fig):
    """{seed: figure} of one method's runs."""
    return {s: v.get(fig) for s, v in entry["seeds"].items()}


def method_table(group, title):
    """Markdown: one row per method, mean [95% t-interval] of every figure, then the paired differences
    against GRPO (same seeds) of the table's figures and, with more than two methods, LAD-JS's against each."""
    figs = [f for f in FIGURES if any(f[0] in v for e in group.values() for v in e["seeds"].values())]
    lines = [f"### {title}", "", "| method | lr | seeds | " + " | ".join(lab for _, lab, _ in figs) + " |",
             "|---" * (len(figs) + 3) + "|"]
    first = next(iter(group.values()))
    warm = {s: v["eval0"] for s, v in first["seeds"].items() if v["eval0"]}
    if warm:
        lines.append("| warm start (step 0) | - | " + str(len(warm)) + " | " + " | ".join(
            fmt_ci(*mean_ci([w.get(k) for w in warm.values()]), d) if k != "final_entropy" else "-"
            for k, _, d in figs) + " |")
    for m, e in group.items():
        lines.append(f"| {m} | {e['lr']:g} | {len(e['seeds'])} | " + " | ".join(
            fmt_ci(*mean_ci(values(e, k).values()), d) for k, _, d in figs) + " |")
    sub = [f for f in figs if f[0] in TABLE_FIGS]
    if "grpo" in group:
        lines += ["", "Paired differences against GRPO (method − grpo, same seeds; mean [95% t-interval]):", ""]
        lines += diff_rows({m: (e, group["grpo"]) for m, e in group.items() if m != "grpo"}, sub)
    if "lad-js" in group and len(group) > 2:   # the paper's Table 1 reads LAD against every baseline
        lines += ["", "LAD-JS against each method (lad-js − method, same seeds; mean [95% t-interval]):", ""]
        lines += diff_rows({m: (group["lad-js"], e) for m, e in group.items() if m != "lad-js"}, sub)
    return "\n".join(lines) + "\n"


def diff_rows(pairs, figs):
    """Markdown rows: per label, the paired differences a − b (same seeds) of figs, {label: (a, b)}."""
    lines = ["| method | seeds | " + " | ".join(f"Δ {lab}" for _, lab, _ in figs) + " |", "|---" * (len(figs) + 2) + "|"]
    for m, (a, b) in pairs.items():
        n = len(paired(values(a, "eval/avg@n"), values(b, "eval/avg@n")))
        lines.append(f"| {m} | {n} | " + " | ".join(
            fmt_diff(*mean_ci(paired(values(a, k), values(b, k))), d) for k, _, d in figs) + " |")
    return lines


def claims(res):
    """The four claims: [(claim, rows [(what, (mean, lo, hi, n))], verdict)]."""
    main, div, eta = res.get("main", {}), res.get("divergence", {}), res.get("eta", {})
    grpo = main.get("grpo") or div.get("grpo")
    out = []

    def diff(e, fig, base=None):
        return mean_ci(paired(values(e, fig), values(base or grpo, fig)))

    if grpo and "lad-js" in main:
        acc = [("lad-js − grpo, Avg@16", diff(main["lad-js"], "eval/avg@n")),
               ("lad-js − grpo, Pass@16", diff(main["lad-js"], "eval/pass@16"))]
        out.append(("LAD improves accuracy over GRPO (Avg@16; Pass@16 second)", acc, verdict(*acc[0][1][1:3])))
        dv = [("lad-js − grpo, distinct correct answers / prompt", diff(main["lad-js"], "eval/distinct_answers")),
              ("lad-js − grpo, distinct-4", diff(main["lad-js"], "eval/distinct-4"))]
        out.append(("LAD improves diversity over GRPO (distinct correct answers; distinct-4 second)", dv,
                    verdict(*dv[0][1][1:3])))
    else:
        out += [("LAD improves accuracy over GRPO", [], "not run"), ("LAD improves diversity over GRPO", [], "not run")]
    if all(f"lad-{d}" in div for d in STRICT + NON_STRICT):
        per = {d: values(div[f"lad-{d}"], "eval/avg@n") for d in STRICT + NON_STRICT}
        seeds = sorted(set.intersection(*(set(k for k, v in p.items() if v is not None) for p in per.values())))
        xs = [sum(per[d][s] for d in STRICT) / 3 - sum(per[d][s] for d in NON_STRICT) / 3 for s in seeds]
        ci = mean_ci(xs)
        out.append(("strict divergences (tv, hd, js) beat non-strict ones (kl, rkl, jf) on Avg@16",
                    [("mean of strict − mean of non-strict, Avg@16", ci)], verdict(*ci[1:3])))
    else:
        out.append(("strict divergences beat non-strict ones", [], "not run"))
    if grpo and eta:
        rows = [(f"{k} − grpo, Avg@16", diff(e, "eval/avg@n")) for k, e in sorted(
            eta.items(), key=lambda kv: float(kv[0].split("=")[1]) if "=" in kv[0] else 4.0)]
        out.append(("LAD beats GRPO at every 1/eta in the grid (robust to eta)", rows,
                    verdict_all([c[1:3] for _, c in rows])))
    else:
        out.append(("LAD is robust to eta", [], "not run"))
    return out


def verdicts_md(cl):
    lines = ["| claim | difference | mean [95% t-interval] | seeds | verdict |", "|---|---|---|---|---|"]
    for claim, rows, v in cl:
        if not rows:
            lines.append(f"| {claim} | - | - | - | {v} |")
        for i, (what, ci) in enumerate(rows):
            lines.append(f"| {claim if i == 0 else ''} | {what} | {fmt_diff(*ci)} | {ci[3]} | "
                         f"{('**' + v + '**') if i == 0 else ''} |")
    return "\n".join(lines) + "\n"


def sweep_md(a, out_dir):
    scores, chosen = sweep_scores(a, out_dir)
    lrs = [float(x) for x in a.lrs]
    lines = ["| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | chosen lr |", "|---" * (len(lrs) + 2) + "|"]
    for m, by in scores.items():
        cells = []
        for lr in lrs:
            v = by.get(lr, [])
            txt = "-" if not v else f"{sum(v) / len(v):.3f} (" + ", ".join(f"{x:.3f}" for x in v) + ")"
            cells.append(f"**{txt}**" if chosen.get(m) == lr else txt)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {chosen[m]:g} |" if m in chosen else
                     f"| {m} | " + " | ".join(cells) + " | (sweep unfinished) |")
    return "\n".join(lines) + "\n", chosen


README_FIGS = ["eval/avg@n", "eval/pass@16", "eval/distinct_answers", "final_entropy"]
README_DIFFS = ["eval/avg@n", "eval/pass@16", "eval/distinct_answers"]


def readme_md(res, cl, common_lr, swept):
    """The README's one table and the verdicts: per method, at the lr its sweep chose and at the common lr, the
    mean [95% t-interval] of Avg@16, Pass@16, distinct correct answers per prompt and final entropy, each of
    the first three beside its paired difference against GRPO (bold where the interval excludes 0); the warm
    start as the first row."""
    main = res.get("main", {})
    if not main:
        return ""
    lab = {k: (l, d) for k, l, d in FIGURES}
    figs = [k for k in README_FIGS if any(k in v for e in main.values() for v in e["seeds"].values())]
    head = []
    for k in figs:
        head += [lab[k][0]] + (["− GRPO"] if k in README_DIFFS else [])
    lines = ["| method (lr) | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    warm = [v["eval0"] for v in next(iter(main.values()))["seeds"].values() if v["eval0"]]
    if warm:
        cells = []
        for k in figs:
            cells += ["-" if k == "final_entropy" else fmt_ci(*mean_ci([w.get(k) for w in warm]), lab[k][1])]
            cells += [""] if k in README_DIFFS else []
        lines.append("| warm start (step 0) | " + " | ".join(cells) + " |")
    sections = [("main", "at the lr its sweep chose" if swept else f"at the common lr {common_lr:g}"),
                ("common", f"at the common lr {common_lr:g}")]
    for g, title in [(g, t) for g, t in sections if res.get(g)]:
        grp = res[g]
        lines.append(f"| *{title}* |" + " |" * len(head))
        for m, e in grp.items():
            cells = []
            for k in figs:
                cells.append(fmt_ci(*mean_ci(values(e, k).values()), lab[k][1]))
                if k not in README_DIFFS:
                    continue
                if m == "grpo" or "grpo" not in grp:
                    cells.append("")
                    continue
                ci = mean_ci(paired(values(e, k), values(grp["grpo"], k)))
                txt = fmt_diff(*ci, lab[k][1])
                cells.append(f"**{txt}**" if verdict(*ci[1:3]) != "not resolved" else txt)
            lines.append(f"| {m} ({e['lr']:g}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + verdicts_md(cl)


def per_seed_md(res):
    """Markdown: per group and method, each seed's Avg@16 / Pass@16 / distinct correct answers / final entropy."""
    lines = []
    for g, grp in res.items():
        lines += [f"**{g}** (seed: Avg@16 / Pass@16 / distinct correct per prompt / final entropy)", ""]
        for m, e in grp.items():
            cells = [f"s{s} {v.get('eval/avg@n', math.nan):.3f}/{v.get('eval/pass@16', math.nan):.3f}/"
                     f"{v.get('eval/distinct_answers', math.nan):.2f}/{v['final_entropy'] if v['final_entropy'] is not None else math.nan:.3f}"
                     for s, v in sorted(e["seeds"].items())]
            lines.append(f"- {m} (lr {e['lr']:g}): " + "; ".join(cells))
        lines.append("")
    return "\n".join(lines)


def plot(main, path):
    """Held-out Pass@k against k per method (mean and 95% t-band over seeds; the warm start dashed) and the
    training entropy over steps (mean and band)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    any_run = next(iter(next(iter(main.values()))["seeds"].values()))
    ks = sorted(int(k.split("@")[1]) for k in any_run if k.startswith("eval/pass@"))
    warm = [v["eval0"] for v in next(iter(main.values()))["seeds"].values() if v["eval0"]]
    if warm:
        ax1.plot(ks, [mean_ci([w.get(f"eval/pass@{k}") for w in warm])[0] for k in ks], "k--", label="warm start")
    for m, e in main.items():
        cis = [mean_ci(values(e, f"eval/pass@{k}").values()) for k in ks]
        line, = ax1.plot(ks, [c[0] for c in cis], "o-", ms=3, label=f"{m} (lr {e['lr']:g})")
        if all(not math.isnan(c[1]) for c in cis):
            ax1.fill_between(ks, [c[1] for c in cis], [c[2] for c in cis], color=line.get_color(), alpha=0.15)
        by_step = {}
        for v in e["seeds"].values():
            for step, h in v["entropy_steps"]:
                by_step.setdefault(step, []).append(h)
        steps = sorted(by_step)
        cis = [mean_ci(by_step[t]) for t in steps]
        ax2.plot(steps, [c[0] for c in cis], color=line.get_color(), lw=1, label=m)
        ax2.fill_between(steps, [c[1] if not math.isnan(c[1]) else c[0] for c in cis],
                         [c[2] if not math.isnan(c[2]) else c[0] for c in cis], color=line.get_color(), alpha=0.12)
    ax1.set(xscale="log", xlabel="k", ylabel="held-out Pass@k", title="Pass@k after RL (mean, 95% t-band over seeds)")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(ks, [str(k) for k in ks])
    ax2.set(xlabel="step", ylabel="train/entropy (nats / token)", title="policy entropy during RL (mean, 95% band)")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_summary(res, out_dir, a):
    """(CPU seconds, wall seconds summed, runs) over every finished run of the study that has a run.json."""
    folders = set()
    _, chosen = sweep_scores(a, out_dir)
    for _, r in plan(a, chosen):
        if r.lr is not None and (r.folder(out_dir) / "run.json").is_file() and is_done(r.folder(out_dir), a.steps):
            folders.add(r.folder(out_dir))
    infos = [json.loads((f / "run.json").read_text()) for f in folders]
    return sum(i["cpu_s"] for i in infos), sum(i["wall_s"] for i in infos), len(infos)


def report(a, out_dir, wall_this):
    """Write sweep.md, table.md, verdicts.md, results.json, compare.png; print them."""
    text_sweep, chosen = sweep_md(a, out_dir)
    res = collect(a, out_dir)
    at, js_at = ("its chosen lr", "lad-js's chosen lr") if a.sweep else ("the common lr {lr:g}",) * 2
    titles = {"main": f"Each method at {at} (held-out, step {{s}})",
              "common": "Every method at the common lr {lr:g} (held-out, step {s})",
              "divergence": f"LAD's divergences, each at {at} (held-out, step {{s}})",
              "eta": f"LAD-js at each 1/eta, at {js_at} (held-out, step {{s}})"}
    tables = []
    for g in ("main", "common", "divergence", "eta"):
        if g in res:
            group = dict(res[g])
            if g in ("divergence", "eta") and "grpo" in res.get("main", {}):
                group = {"grpo": res["main"]["grpo"], **group}
            tables.append(method_table(group, titles[g].format(s=a.steps, lr=a.common_lr)))
    cl = claims(res)
    cpu, wall_sum, n = cpu_summary(res, out_dir, a)
    footer = (f"\nCPU time of the {n} runs: {cpu / 3600:.2f} h (their wall times summed: {wall_sum / 3600:.2f} h); "
              f"wall time of this invocation: {wall_this / 3600:.2f} h\n")
    if a.sweep:
        (out_dir / "sweep.md").write_text("Validation Avg@16 (17 training prompts held out), mean over seeds "
                                          "(per seed); bold: the chosen lr\n\n" + text_sweep)
    (out_dir / "table.md").write_text("\n".join(tables) + footer)
    (out_dir / "verdicts.md").write_text(verdicts_md(cl))
    (out_dir / "per_seed.md").write_text(per_seed_md(res))
    (out_dir / "readme.md").write_text(readme_md(res, cl, a.common_lr, a.sweep))
    slim = {g: {m: {"lr": e["lr"], "seeds": {s: {k: v for k, v in x.items() if k != "entropy_steps"}
                                             for s, x in sorted(e["seeds"].items())}} for m, e in grp.items()}
            for g, grp in res.items()}
    (out_dir / "results.json").write_text(json.dumps(
        {"chosen_lr": chosen, "sweep": {m: {f"{lr:g}": v for lr, v in by.items()} for m, by in sweep_scores(a, out_dir)[0].items()},
         "claims": [{"claim": c, "rows": [{"what": w, "mean": ci[0], "low": ci[1], "high": ci[2], "n": ci[3]}
                                          for w, ci in rows], "verdict": v} for c, rows, v in cl],
         "cpu_s": cpu, "runs_wall_s": wall_sum, "runs": n, "results": slim}, indent=1, default=str) + "\n")
    if "main" in res:
        plot(res["main"], out_dir / "compare.png")
    if a.sweep:
        print("\n" + text_sweep)
    print("\n".join(tables) + "\n" + verdicts_md(cl) + footer)
    print(f"wrote {out_dir}/: sweep.md table.md verdicts.md per_seed.md readme.md results.json compare.png")
    return res, cl


def main():
    a = parse_args(Args)
    a.extra = [w for x in a.extra for w in x.split()]
    os.chdir(ROOT)
    out_dir = Path(a.out_dir) if Path(a.out_dir).is_absolute() else ROOT / a.out_dir
    t0 = time.time()
    if a.sweep:
        write_sweep_data(out_dir, a.val_prompts)
    if a.dry_run:
        _, chosen = sweep_scores(a, out_dir)
        listed = set()
        for group, r in plan(a, chosen):
            f = r.folder(out_dir) if r.lr is not None else None
            mark = "chosen lr after the sweep" if f is None else "shared" if f in listed else \
                "done" if is_done(f, a.steps) else "to run"
            listed.add(f)
            print(f"{group:10s} {r.key():22s} seed {r.seed}  lr {'?' if r.lr is None else f'{r.lr:g}':7s} {mark}")
        return
    failed, unknown = ([], 0) if a.report_only else execute(a, out_dir)
    report(a, out_dir, time.time() - t0)
    if failed or unknown:
        sys.exit(f"train_compare.py: {len(failed)} run(s) failed, {unknown} not started (their chosen lr needs the "
                 f"failed sweep runs); rerun the command to retry: " + ", ".join(str(f) for f in failed))


if __name__ == "__main__":
    main()
