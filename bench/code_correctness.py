"""bench/code_correctness.py -- every reference solution of the shared code files, through eval.py.

For each problem two generations go through eval.py's --generations path (so through the training
reward, sandbox.py, in its bubblewrap sandbox): the reference solution as the response, and a broken
variant of it. Expected: the reference passes (HumanEval+: base and base + plus tests), the broken one
fails. Every exception is listed with its sandbox reason.
    HumanEval+ (../shared/data/bench/humanevalplus.jsonl): response = prompt + canonical_solution;
        broken = prompt + "    return None".
    DeepCoder LeetCode (../shared/data/train/deepcoder_leetcode.jsonl): response = the row's solutions;
        broken = the same with every public method of Solution replaced by one returning None.
    LiveCodeBench (../shared/data/bench/livecodebench_v5_test.jsonl, ../shared/data/train/
        deepcoder_livecodebench.jsonl): the files hold no reference solutions, so the reference is a
        lookup table of the row's own tests (stdin: print the expected output of the input read;
        functional: return the expected value of the arguments), which checks the judging of every
        test (line splitting, Decimal fallback, JSON values, tuples); broken = the same table with every
        expected output's last non-blank character dropped (stdin) or None returned (functional).
Problems whose reference solution fails in the sandbox itself (reason bad_problem) are counted apart.

Commands
    python bench/code_correctness.py                         # all four files (~10 min on 2 loaded cores)
    python bench/code_correctness.py --which humanevalplus --limit 20

Deliberately left out: LiveCodeBench's private tests (not in the shared files).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eval as ev  # noqa: E402
from common import parse_args  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
BREAK_METHODS = ("\nfor _m in [m for m in dir(Solution) if not m.startswith('_')]:\n"
                 "    setattr(Solution, _m, lambda self, *a, **k: None)\n")


@dataclass
class Args:
    """Reference solutions pass, broken ones fail, through eval.py (see the module docstring)."""

    CHOICES = {"which": ["all", "humanevalplus", "leetcode", "livecodebench", "deepcoder_livecodebench"]}
    which: str = "all"
    """which file(s): all, humanevalplus, leetcode, livecodebench or deepcoder_livecodebench"""
    limit: int = 0
    """only the first LIMIT problems of each file (0: all)"""
    out_dir: str = "runs/bench/code_correctness"
    """eval.py's output folders go under here, and result.json"""


def block(src: str) -> str:
    return f"```python\n{src}\n```"


def humanevalplus_gens(path: Path, limit: int) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()][:limit or None]
    return [{"id": r["task_id"], "responses": [block(r["prompt"] + r["canonical_solution"]),
                                               block(r["prompt"] + "    return None\n")]} for r in rows]


def leetcode_gens(path: Path, limit: int) -> list[dict]:
    lines = [x for x in path.read_text().splitlines() if x.strip()][:limit or None]
    out = []
    for i, ln in enumerate(lines):   # the rows have no id field: data.py's default id is the line number
        sol = json.loads(ln)["solutions"]
        out.append({"id": str(i + 1), "responses": [block(sol), block(sol + BREAK_METHODS)]})
    return out


def lookup_table(row: dict, broken: bool) -> str:
    """A program that answers exactly the row's own LiveCodeBench tests (see the module docstring)."""
    tests = row["tests"]
    if tests[0]["testtype"] == "stdin":
        table = {t["input"]: (t["output"].rstrip()[:-1] if broken else t["output"]) for t in tests}
        return f"import sys\nT = {table!r}\nprint(T.get(sys.stdin.read(), ''), end='')\n"
    import sandbox

    _, fn = sandbox._starter_names(row["starter_code"])
    table = {json.dumps([json.loads(ln) for ln in t["input"].split("\n") if ln.strip()]): t["output"] for t in tests}
    body = "return None" if broken else "return json.loads(T[json.dumps(list(args))])"
    return f"import json\nT = {table!r}\nclass Solution:\n    def {fn}(self, *args):\n        {body}\n"


def livecodebench_gens(path: Path, limit: int) -> list[dict]:
    lines = [x for x in path.read_text().splitlines() if x.strip()][:limit or None]
    return [{"id": str(i + 1), "responses": [block(lookup_table(json.loads(ln), False)),
                                             block(lookup_table(json.loads(ln), True))]} for i, ln in enumerate(lines)]


def run_one(name: str, bench: Path, gens: list[dict], out_dir: Path, limit: int) -> dict:
    """eval.py --generations on (reference, broken) pairs -> counts and every exception with its reason."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gfile = out_dir / "generations.jsonl"
    gfile.write_text("".join(json.dumps(g) + "\n" for g in gens))
    argv = ["--benchmark", str(bench), "--generations", str(gfile), "--out-dir", str(out_dir / "eval"),
            "--bootstrap", "0", "--k", "1"] + (["--limit", str(limit)] if limit else [])
    t = time.time()
    if ev.main(argv) != 0:
        raise SystemExit(f"eval.py failed: {' '.join(argv)}")
    seconds = time.time() - t
    samples = [json.loads(x) for x in (out_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    ref = [s for s in samples if s["sample"] == 0]
    broken = [s for s in samples if s["sample"] == 1]
    evalplus = any(s.get("base_reward") is not None for s in samples)
    bad = [{"id": s["id"], "detail": s["detail"]} for s in ref if s["reason"] == "bad_problem"]
    ref = [s for s in ref if s["reason"] != "bad_problem"]
    broken = [s for s in broken if s["reason"] != "bad_problem"]
    ref_fail = [{"id": s["id"], "reason": s["reason"], "detail": s["detail"], "reward": s["reward"],
                 "base_reward": s.get("base_reward")}
                for s in ref if s["reward"] != 1.0 or (evalplus and s["base_reward"] != 1.0)]
    broken_pass = [{"id": s["id"], "reward": s["reward"], "base_reward": s.get("base_reward")}
                   for s in broken if s["reward"] != 0.0 or (evalplus and s["base_reward"] != 0.0)]
    reasons = {}
    for s in broken:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    return {"benchmark": name, "file": str(bench), "problems": len(ref) + len(bad), "bad_problems": bad,
            "seconds": round(seconds, 1),
            "reference_pass": len(ref) - len(ref_fail), "reference_fail": ref_fail,
            "broken_fail": len(broken) - len(broken_pass), "broken_pass": broken_pass,
            "broken_reasons": dict(sorted(reasons.items()))}


def main(argv=None) -> int:
    a = parse_args(Args, argv)
    out = Path(a.out_dir)
    res = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load_average_start": os.getloadavg(),
           "results": []}
    if a.which in ("all", "humanevalplus"):
        p = SHARED / "bench" / "humanevalplus.jsonl"
        res["results"].append(run_one("humanevalplus", p, humanevalplus_gens(p, a.limit), out / "humanevalplus", a.limit))
    if a.which in ("all", "leetcode"):
        p = SHARED / "train" / "deepcoder_leetcode.jsonl"
        r = run_one("deepcoder_leetcode", p, leetcode_gens(p, a.limit), out / "leetcode", a.limit)
        import sandbox
        probs = sandbox.load_code_rows(str(p))[:a.limit or None]
        # asserts of another form than `candidate(...) == literal` / is_same_*: judged by the parent too
        r["asserts_judged_as_expressions"] = {"problems_with_any": sum(1 for q in probs if any("judge" in t for t in q["tests"])),
                                              "tests": sum(1 for q in probs for t in q["tests"] if "judge" in t),
                                              "of_tests": sum(len(q["tests"]) for q in probs)}
        res["results"].append(r)
    for which, rel in (("livecodebench", "bench/livecodebench_v5_test.jsonl"),
                       ("deepcoder_livecodebench", "train/deepcoder_livecodebench.jsonl")):
        if a.which in ("all", which):
            p = SHARED / rel
            res["results"].append(run_one(which, p, livecodebench_gens(p, a.limit), out / which, a.limit))
    res["load_average_end"] = os.getloadavg()
    text = json.dumps(res, indent=1)
    (out / "result.json").write_text(text + "\n")
    print(text)
    ok = all(not r["reference_fail"] and not r["broken_pass"] for r in res["results"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
