"""The task contract (tasks.py): the built-in tasks, the sum reward, judge/answer_key for every kind."""

import itertools
import random

import pytest

import tasks


def test_sum_split_contract():
    train, held = tasks.sum_split("train"), tasks.sum_split("heldout")
    assert train and held and not {r["id"] for r in train} & {r["id"] for r in held}
    assert tasks.sum_split("train") == train                                  # deterministic
    for r in train + held:
        assert set(r) == {"id", "prompt", "gold"}
        t, d, k = (int(x.split("=")[1]) for x in r["gold"].split(","))
        assert tasks.count_answers(t, d, k) >= tasks.MIN_ANSWERS              # several correct answers
        ans = tasks.random_answer(t, d, k, random.Random(0))
        assert tasks.sum_reward(ans, r["gold"]) == 1.0
    with pytest.raises(ValueError):
        tasks.builtin_rows(tasks.SUM, "test")


def test_warm_start_examples_come_from_the_train_split_only():
    draw, rng = tasks.SUM.draw(), random.Random(0)
    train_prompts = {r["prompt"] for r in tasks.sum_split("train")}
    held = {r["prompt"]: r["gold"] for r in tasks.sum_split("heldout")}
    golds = {r["prompt"]: r["gold"] for r in tasks.sum_split("train")}
    for _ in range(200):
        prompt, answer = draw(rng)
        assert prompt in train_prompts and prompt not in held
        assert tasks.sum_reward(answer, golds[prompt]) == 1.0
    code_draw = tasks.CODE.draw()
    code_train = {r["prompt"] for r in tasks.code_split("train")}
    for _ in range(50):
        prompt, program = code_draw(rng)
        assert prompt in code_train and program.startswith("```python\nprint(")


def test_count_answers_brute_force():
    for t, d, k in [(5, 3, 2), (13, 4, 2), (0, 0, 2), (17, 9, 3)]:
        brute = sum(1 for ds in itertools.product(range(10), repeat=k) if d not in ds and sum(ds) == t)
        assert tasks.count_answers(t, d, k) == brute


def test_sum_reward():
    gold = "target=17,avoid=3,terms=3"
    assert tasks.sum_answer("  9+6+2  \nmore") == "9+6+2"
    assert tasks.sum_answer("\n") is None
    assert tasks.sum_reward("9+6+2", gold) == 1.0
    assert tasks.sum_reward("9+6+2\nignored second line", gold) == 1.0
    assert tasks.sum_reward("9+5+3", gold) == 0.0       # forbidden digit
    assert tasks.sum_reward("9+6+1", gold) == 0.0       # wrong sum
    assert tasks.sum_reward("9+8", gold) == 0.0         # wrong number of terms
    assert tasks.sum_reward("9 + 6 + 2", gold) == 0.0   # format is exact
    assert tasks.sum_reward("15+2+0", gold) == 0.0      # single digits only
    assert tasks.sum_reward("", gold) == 0.0
    assert tasks.sum_reward("7", "target=7,avoid=0,terms=1") == 1.0
    for bad in ("target=7", "target=7,avoid=0,terms=0", ""):
        with pytest.raises(ValueError, match="malformed builtin-sum gold"):
            tasks.sum_reward("9+6+2", bad)


def test_judge_gives_a_verdict_per_sample_for_every_kind():
    gold = "target=17,avoid=3,terms=3"
    v = tasks.judge(["9+6+2", "8+8+1", "x"], [gold] * 3, "sum")
    assert [(x.reward, x.reason) for x in v] == [(1.0, "ok"), (1.0, "ok"), (0.0, "wrong_answer")]
    v = tasks.judge(["so \\boxed{0.5}", "\\boxed{2}"], ["\\frac{1}{2}", "3"], "math")
    assert [(x.reward, x.reason) for x in v] == [(1.0, "ok"), (0.0, "wrong_answer")]
    v = tasks.judge(["no program here"], [tasks.code_split("heldout")[0]["gold"]], "code", weak_sandbox=True)
    assert (v[0].reward, v[0].reason) == (0.0, "no_code_block")
    with pytest.raises(ValueError, match="unknown task kind"):
        tasks.judge(["a"], ["b"], "poetry")


def test_answer_keys():
    assert tasks.answer_key("8+5\n", "sum") == "8+5"
    assert tasks.answer_key("so \\boxed{42}", "math") == "42"
    assert tasks.answer_key("```python\nprint(1)   \n```", "code") == "print(1)"
    assert tasks.answer_key("no block", "code") is None


def test_builtin_names_and_their_older_aliases(capsys):
    assert tasks.builtin("builtin-sum") is tasks.SUM and tasks.builtin("builtin-code") is tasks.CODE
    assert tasks.builtin("data.jsonl") is None
    assert capsys.readouterr().err == ""
    for old, new in tasks.DEPRECATED.items():
        assert tasks.builtin(old, "x.py") is tasks.BUILTIN[new]
        assert f"x.py: {old!r} is deprecated; use {new!r}" in capsys.readouterr().err
    # one response limit per task, the one lad.py and eval.py both use
    assert (tasks.SUM.new_tokens, tasks.CODE.new_tokens) == (12, 32)
    rows = tasks.builtin_rows(tasks.CODE, "heldout")
    assert rows and all(r["kind"] == "code" and r["gold"]["mode"] == "stdin" for r in rows)


def test_describe_names_every_kind():
    for k in tasks.KINDS:
        assert tasks.describe(k)["reward"].startswith("1 iff")
    assert tasks.describe("code")["limits"]["per_test_s"] > 0


def test_judge_passes_the_grader_to_the_math_verifier():
    # verl's math_dapo reads the last "Answer:" line and compares strings; ours reads \boxed{} and compares values
    texts, golds = ["Answer: 5", "so \\boxed{0.5}"], ["5", "\\frac{1}{2}"]
    assert [v.reward for v in tasks.judge(texts, golds, "math", grader="dapo")] == [1.0, 0.0]
    assert [v.reward for v in tasks.judge(texts, golds, "math")] == [1.0, 1.0]
    assert tasks.describe("math", "dapo")["grader"] == "dapo"


def test_builtin_sum_rows_written_to_a_file_load_as_their_kind(tmp_path):
    import json

    import data

    rows = tasks.sum_split("train")[:3]
    f = tmp_path / "val.jsonl"
    f.write_text("".join(json.dumps({"id": r["id"], "problem": r["prompt"], "answer": r["gold"], "kind": "sum"}) + "\n"
                         for r in rows) + json.dumps({"problem": "x", "answer": "1", "kind": "poetry"}) + "\n")
    problems, errors = data.load_file(f)
    assert [(p["id"], p["kind"], p["gold"]) for p in problems] == [(r["id"], "sum", r["gold"]) for r in rows]
    assert errors == [f"{f}:4: kind 'poetry'; a row with an answer is math or sum (code rows carry tests)"]
    f.write_text("".join(json.dumps({"id": r["id"], "problem": r["prompt"], "answer": r["gold"], "kind": "sum"}) + "\n"
                         for r in rows))
    loaded = data.load_rows(f, "raw")
    assert [r["prompt"] for r in loaded] == [r["prompt"] for r in rows] and {r["kind"] for r in loaded} == {"sum"}
