"""bench/code_speed.py -- sandbox.py vs EvalPlus's own untrusted_check on all 164 HumanEval+ problems.

Both sides check the canonical solution of every problem on its base + plus inputs against the same
expected outputs (sandbox.py's cached canonical run), with the same number of worker threads.
Isolation: sandbox.py = bubblewrap namespaces (user/pid/net/ipc/mount, uid 65534, read-only root,
tmpfs /tmp), rlimits, audit hook, parent-side comparison; EvalPlus = a forked process with rlimits
and monkey-patched os/shutil functions ("reliability guard"), comparison inside the child.

    python bench/code_speed.py [--workers 2]
"""

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sandbox  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=sandbox._default_workers())
    ap.add_argument("--data", default="../shared/data/bench/humanevalplus.jsonl")
    a = ap.parse_args()
    rows = [json.loads(ln) for ln in open(a.data)]
    probs = [sandbox.parse_code_row(r, f"{a.data}:{i + 1}") for i, r in enumerate(rows)]
    resp = ["```python\n" + r["prompt"] + r["canonical_solution"] + "\n```" for r in rows]
    t = time.perf_counter()
    with ThreadPoolExecutor(a.workers) as ex:
        exps = list(ex.map(lambda p: sandbox._expected(p, 6.0, 60.0, 1024, False), probs))
    t_exp = time.perf_counter() - t

    def ours(i):
        t0 = time.perf_counter()
        v = sandbox.run_problem(resp[i], probs[i])
        return v.reward == 1.0 and v.base_reward == 1.0, time.perf_counter() - t0
    t = time.perf_counter()
    with ThreadPoolExecutor(a.workers) as ex:
        res_ours = list(ex.map(ours, range(len(rows))))
    t_ours = time.perf_counter() - t
    out = {"problems": len(rows), "workers": a.workers, "expected_outputs_s": round(t_exp, 2),
           "ours_s": round(t_ours, 2), "ours_pass": sum(ok for ok, _ in res_ours),
           "ours_worst_s": round(max(d for _, d in res_ours), 3)}
    try:
        from evalplus.eval import PASS, untrusted_check
    except ImportError:
        out["evalplus"] = "not installed (pip install evalplus)"
    else:
        def theirs(i):
            r, t0 = rows[i], time.perf_counter()
            inputs = r["base_input"] + (r["plus_input"] or [])
            stat, _ = untrusted_check("humaneval", r["prompt"] + r["canonical_solution"], inputs,
                                      r["entry_point"], exps[i], float(r["atol"] or 0), [1.0] * len(inputs))
            return stat == PASS, time.perf_counter() - t0
        t = time.perf_counter()
        with ThreadPoolExecutor(a.workers) as ex:
            res_theirs = list(ex.map(theirs, range(len(rows))))
        t_theirs = time.perf_counter() - t
        out.update(evalplus_s=round(t_theirs, 2), evalplus_pass=sum(ok for ok, _ in res_theirs),
                   evalplus_worst_s=round(max(d for _, d in res_theirs), 3),
                   ratio_speed_ours_over_evalplus=round(t_theirs / t_ours, 3))
    out["programs_per_s_ours"] = round(len(rows) / t_ours, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
