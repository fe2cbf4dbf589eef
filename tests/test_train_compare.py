"""bench/train_compare.py: its statistics on hand-made numbers, and the whole command on a tiny budget (a sweep
of 2 lrs x 1 seed, then 2 methods x 2 seeds at their chosen lr, 2 steps each; resumed, then re-read)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import train_compare as tc  # noqa: E402


def test_t_quantiles_are_students():
    # t_{0.975} for df 1, 7, 30 (tables: 12.706, 2.365, 2.042); the lower tail is the mirror image
    assert tc.t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-3)
    assert tc.t_quantile(0.975, 7) == pytest.approx(2.3646, abs=1e-4)
    assert tc.t_quantile(0.975, 30) == pytest.approx(2.0423, abs=1e-4)
    assert tc.t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)
    assert tc.t_cdf(0.0, 5) == pytest.approx(0.5)


def test_mean_ci_on_known_numbers():
    # 1..5: mean 3, sd sqrt(2.5), half-width t_{0.975,4} * sd / sqrt(5) = 2.7764 * 0.7071 = 1.9632
    m, lo, hi, n = tc.mean_ci([1, 2, 3, 4, 5])
    assert (m, n) == (3.0, 5)
    assert (lo, hi) == pytest.approx((3 - 1.96324, 3 + 1.96324), abs=1e-4)
    m, lo, hi, n = tc.mean_ci([0.4, None, float("nan")])           # missing values are left out
    assert (m, n) == (0.4, 1) and math.isnan(lo) and math.isnan(hi)
    assert tc.mean_ci([])[3] == 0


def test_paired_differences_use_common_seeds():
    a, b = {0: 0.5, 1: 0.7, 2: 0.9, 3: None}, {0: 0.4, 1: 0.4, 3: 0.1}
    assert tc.paired(a, b) == pytest.approx([0.1, 0.3])


def test_verdicts_in_each_direction():
    up = tc.mean_ci([0.10, 0.12, 0.11, 0.13])
    down = tc.mean_ci([-0.10, -0.12, -0.11, -0.13])
    mixed = tc.mean_ci([-0.2, 0.3, 0.1, -0.1])
    assert tc.verdict(*up[1:3]) == "holds"
    assert tc.verdict(*down[1:3]) == "does not hold"
    assert tc.verdict(*mixed[1:3]) == "not resolved"
    assert tc.verdict(math.nan, math.nan) == "not resolved"
    assert tc.verdict_all([up[1:3], up[1:3]]) == "holds"
    assert tc.verdict_all([up[1:3], mixed[1:3]]) == "not resolved"
    assert tc.verdict_all([up[1:3], down[1:3]]) == "does not hold"


def test_choose_lr_takes_the_best_mean_and_the_smaller_on_ties():
    assert tc.choose_lr({1e-4: [0.2, 0.4], 3e-4: [0.5, 0.5], 1e-3: [0.9, 0.0]}) == 3e-4
    assert tc.choose_lr({1e-4: [0.5, 0.5], 3e-4: [0.6, 0.4]}) == 1e-4


def test_sweep_split_is_fixed_and_disjoint(tmp_path):
    tc.write_sweep_data(tmp_path, 17)
    rows = {n: [json.loads(x) for x in (tmp_path / n).read_text().splitlines()]
            for n in ("sweep_train.jsonl", "sweep_val.jsonl")}
    assert [len(rows["sweep_train.jsonl"]), len(rows["sweep_val.jsonl"])] == [68, 17]
    assert not {r["id"] for r in rows["sweep_train.jsonl"]} & {r["id"] for r in rows["sweep_val.jsonl"]}
    assert all(r["kind"] == "sum" and r["problem"].endswith(":") for r in rows["sweep_val.jsonl"])


def test_the_command_on_a_tiny_budget(tmp_path):
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(ROOT / "bench/train_compare.py"), "--methods", "grpo", "lad-js", "--lrs", "3e-4",
           "1e-3", "--sweep-seeds", "1", "--seeds", "2", "--claims", "false", "--common", "false", "--steps", "2",
           "--extra", "--eval-k 4 --eval-prompts 4", "--out-dir", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("sweep.md", "table.md", "verdicts.md", "results.json", "compare.png"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    assert set(res["chosen_lr"]) == {"grpo", "lad-js"}
    main = res["results"]["main"]
    assert set(main) == {"grpo", "lad-js"} and all(len(e["seeds"]) == 2 for e in main.values())
    assert len(list((out / "sweep").iterdir())) == 4
    assert "LAD improves accuracy" in (out / "verdicts.md").read_text()
    assert "Paired differences against GRPO" in (out / "table.md").read_text()
    assert res["cpu_s"] > 0 and res["runs"] == 8
    # resumed: every run is found done and nothing is started; --dry-run marks them so
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "started" not in r.stderr, r.stderr[-2000:]
    r = subprocess.run(cmd + ["--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "to run" not in r.stdout and "done" in r.stdout


def test_readme_table_has_both_lrs_and_marks_resolved_differences():
    def entry(lr, avg):
        return {"lr": lr, "seeds": {s: {"eval/avg@n": a, "eval/pass@16": 0.8, "eval/distinct_answers": 1.0,
                                        "final_entropy": 0.2, "eval0": {"eval/avg@n": 0.3}}
                                    for s, a in enumerate(avg)}}
    res = {"main": {"grpo": entry(1e-4, [0.50, 0.52, 0.51]), "lad-js": entry(1e-4, [0.60, 0.63, 0.61])},
           "common": {"grpo": entry(3e-4, [0.5, 0.7, 0.6]), "lad-js": entry(3e-4, [0.7, 0.6, 0.8])}}
    text = tc.readme_md(res, tc.claims(res), 3e-4, True)
    rows = [r for r in text.splitlines() if r.startswith("| ")]
    assert rows[0].split(" | ")[1:3] == ["Avg@16", "− GRPO"]
    assert "| *at the lr its sweep chose* |" in text and "| *at the common lr 0.0003* |" in text
    chosen = next(r for r in rows if r.startswith("| lad-js (0.0001)"))
    common = next(r for r in rows if r.startswith("| lad-js (0.0003)"))
    assert "**+0.103 [" in chosen                      # +0.10 on every seed: resolved, bold
    assert "+0.100 [" in common and "**+0.100" not in common   # +0.2, -0.1, +0.2: contains 0, plain
    assert "warm start (step 0) | 0.300" in text
    assert "at the common lr" in tc.readme_md(res, tc.claims(res), 3e-4, False).splitlines()[3]


def test_method_table_reads_lad_against_every_method():
    def entry(lr, avg):
        return {"lr": lr, "seeds": {s: {"eval/avg@n": a, "final_entropy": 0.2, "eval0": {}} for s, a in enumerate(avg)}}
    group = {"grpo": entry(3e-4, [0.5, 0.6, 0.7]), "clip-cov": entry(3e-4, [0.6, 0.6, 0.6]),
             "lad-js": entry(3e-4, [0.8, 0.8, 0.8])}
    text = tc.method_table(group, "t")
    against_grpo, against_lad = text.split("LAD-JS against each method")
    assert "| clip-cov | 3 | +0.000 [" in against_grpo and "| lad-js | 3 | +0.200 [" in against_grpo
    assert "| grpo | 3 | +0.200 [" in against_lad and "| clip-cov | 3 | +0.200 [+0.200, +0.200] |" in against_lad
    assert "LAD-JS against" not in tc.method_table({"grpo": group["grpo"], "lad-js": group["lad-js"]}, "t")
