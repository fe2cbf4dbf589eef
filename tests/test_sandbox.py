"""Tests of sandbox.py: formats from fixtures of ../shared/data, row errors, the sandbox against hostile
programs (each gets 0 and leaves no trace), the first layer without the audit hook, the parent's bounds,
each format's comparison. CPU only, ~60 s."""

import json
import os
import sys
import time
import warnings

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import sandbox  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data")
LIM = dict(per_test=2.0, total=6.0)


def rows(rel, n, start=0):
    """The first n rows (after `start`) of a shared file, with their 1-based line numbers."""
    out = []
    with open(os.path.join(DATA, rel)) as f:
        for i, line in enumerate(f, 1):
            if i > start:
                out.append((i, json.loads(line)))
            if len(out) == n:
                break
    return out


def block(src):
    return "Here is my code.\n```python\n" + src + "\n```\n"


ADD = sandbox.parse_code_row({"problem": "add two ints", "inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]},
                             "fixture:add")
CALL = sandbox.parse_code_row({"problem": "f", "inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]], "fn_name": "f"},
                              "fixture:call")
HONEST_ADD = "a, b = map(int, input().split())\nprint(a + b)"


def test_sandbox_available():
    sandbox.check_sandbox()  # CI installs bubblewrap (.ci/run)


def test_honest_programs_pass():
    assert sandbox.run_problem(block(HONEST_ADD), ADD, **LIM).reward == 1.0
    assert sandbox.run_problem(block("def f(a, b):\n    return a + b"), CALL, **LIM).reward == 1.0
    assert sandbox.run_problem("no code here", ADD, **LIM).reason == "no_code_block"
    # the LAST block is the program
    assert sandbox.run_problem(block("print(0)") + block(HONEST_ADD), ADD, **LIM).reward == 1.0


def test_livecodebench_rows():
    (ln, r), = rows("train/deepcoder_livecodebench.jsonl", 1, start=181)
    p = sandbox.parse_code_row(r, f"lcb:{ln}")
    assert p["mode"] == "stdin" and all("stdin" in t for t in p["tests"])
    sol = ("n = int(input()); s = input().strip(); t = s.count('T'); a = s.count('A')\n"
           "print(('T' if t > a else 'A') if t != a else ('A' if s[-1] == 'T' else 'T'))")
    assert sandbox.run_problem(block(sol), p, **LIM).reward == 1.0
    fn_rows = rows("bench/livecodebench_v5_test.jsonl", 30)
    fn = [(ln, r) for ln, r in fn_rows if r["tests"][0]["testtype"] == "functional"][0]
    p = sandbox.parse_code_row(fn[1], f"lcbv5:{fn[0]}")
    assert p["mode"] == "call" and p["class_name"] == "Solution" and p["fn_name"]
    assert sandbox.run_problem(block("class Solution:\n    pass"), p, **LIM).reason == "runtime_error"


BREAK = ("\nfor _m in [m for m in dir(Solution) if not m.startswith('_')]:\n"
         "    setattr(Solution, _m, lambda self, *a, **k: None)\n")


def test_leetcode_rows_reference_solutions():
    rs = rows("train/deepcoder_leetcode.jsonl", 6)
    ps = [sandbox.parse_code_row(r, f"lc:{ln}") for ln, r in rs]
    assert any(t.get("expect", "")[:1] == ("__ln",) or isinstance(t.get("expect"), tuple) for t in ps[1]["tests"])
    good = sandbox.score_code_batch([block(r["solutions"]) for _, r in rs], ps, **LIM)
    assert good == [(1.0, "ok")] * len(rs)
    broken = sandbox.score_code_batch([block(r["solutions"] + BREAK)
                                       for _, r in rs], ps, **LIM)
    assert all(v == 0.0 for v, _ in broken)


def test_taco_and_verl_rows():
    assert ADD["format"] == "taco" and CALL["mode"] == "call"
    (ln, r), = rows("train/deepcoder_livecodebench.jsonl", 1, start=181)
    verl = {"data_source": "lcb", "prompt": [{"role": "user", "content": r["problem"]}], "ability": "code",
            "reward_model": {"style": "rule", "ground_truth": json.dumps(r["tests"])}}
    p = sandbox.parse_code_row(verl, "verl:1")
    assert p["prompt"] == r["problem"] and p["mode"] == "stdin" and len(p["tests"]) == len(r["tests"])
    taco_str = {"question": "q", "input_output": json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]})}
    assert sandbox.parse_code_row(taco_str, "t:1")["tests"][0] == {"stdin": "1 2\n", "expect": "3\n"}


def test_bad_rows_name_their_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    good = json.dumps({"problem": "p", "tests": [{"input": "1", "output": "1", "testtype": "stdin"}]})
    f.write_text(good + "\n" + json.dumps({"problem": "p", "tests": [{"input": "1"}]}) + "\n")
    with pytest.raises(sandbox.RowError, match=r"bad.jsonl:2: test 0"):
        sandbox.load_code_rows(str(f))
    f.write_text(good + "\n\n{not json\n")
    with pytest.raises(sandbox.RowError, match=r"bad.jsonl:3: not JSON"):
        sandbox.load_code_rows(str(f))
    with pytest.raises(sandbox.RowError, match=r"x.jsonl:7: tests.functional line"):
        sandbox.parse_code_row({"problem": "p", "tests": {"functional": "def check(:\n"}}, "x.jsonl:7")
    with pytest.raises(sandbox.RowError, match=r"x.jsonl:8: .*functional input/output is not JSON"):
        sandbox.parse_code_row({"problem": "p", "starter_code": "class Solution:\n    def f(self, a):",
                                "tests": [{"input": "[1", "output": "1", "testtype": "functional"}]}, "x.jsonl:8")


def test_evalplus_atol_comparison():
    def eq(out, exp, atol, inp=None, entry="f", dataset="humaneval"):
        return sandbox._evalplus_equal(out, exp, atol, atol, inp, entry, dataset)
    assert eq(1.0, 1.0, 0) and not eq(1.0, 1.0 + 1e-3, 1e-6)
    assert eq(1.0 + 1e-7, 1.0, 1e-6)                     # atol 0 on floats -> 1e-6, as EvalPlus
    assert eq([1.0, 2.0 + 1e-5], [1.0, 2.0], 1e-4) and not eq([1.0, 2.1], [1.0, 2.0], 1e-4)
    assert not eq((1.0,), [1.0 + 1e-9], 1e-4)            # type must match when not exact
    assert not eq(float("nan"), 0.0, 1e-4) and not eq(2, 3, 0)
    assert eq(1.0, 99.0, 1e-4, [[-1, 1]], "find_zero") and not eq(2.0, 1.0, 1e-4, [[-1, 1]], "find_zero")
    # MBPP+'s special oracles come from the evalplus package
    assert eq([3, 1], [1, 3], 0, None, "similar_elements", "mbpp") and not eq([3, 1], [1, 3], 0, None, "similar_elements")
    assert eq("x", True, 0, None, "check_str", "mbpp") and not eq(None, True, 0, None, "check_str", "mbpp")
    # never raises: big ints against floats, NaN, unhashable, nesting
    assert not eq(2 ** 1024, 1.5, 1e-6) and not eq([2 ** 1024], [1.5], 1e-6)
    assert eq([[1]], [1.0], 1e-6)                         # numpy broadcasts, as in EvalPlus itself
    assert not eq([[1]], [1], 0, None, "similar_elements", "mbpp")


def test_humanevalplus_canonical_pass_broken_fail():
    rs = rows("bench/humanevalplus.jsonl", 164)
    pick = [rs[i] for i in (0, 2, 32, 53)]  # includes HumanEval/2 (floats, atol) and /32 (find_zero)
    ps = [sandbox.parse_code_row(r, f"he:{ln}") for ln, r in pick]
    vs = sandbox.score_code_batch_verdicts([block(r["prompt"] + r["canonical_solution"]) for _, r in pick], ps)
    assert [(v.reward, v.base_reward) for v in vs] == [(1.0, 1.0)] * len(pick)
    assert all(v.total == len(r["base_input"]) + len(r["plus_input"]) for v, (_, r) in zip(vs, pick))
    broken = [block(f"def {r['entry_point']}(*args):\n    return None") for _, r in pick]
    assert all(v.reward == 0 and v.base_reward == 0 for v in sandbox.score_code_batch_verdicts(broken, ps))


def test_evalplus_base_and_plus_reported_separately():
    _, r = rows("bench/humanevalplus.jsonl", 1)[0]
    p = sandbox.parse_code_row(r, "he:1")
    base = [tuple(map(tuple, [a[0]])) + (a[1],) for a in r["base_input"]]
    # right on the base inputs only (a lookup table), wrong elsewhere
    table = {repr((tuple(a[0]), a[1])) for a in r["base_input"]}
    canon = r["prompt"] + r["canonical_solution"]
    prog = (canon + f"\n_T = {sorted(table)!r}\n_orig = has_close_elements\n"
            "def has_close_elements(n, t):\n    return _orig(n, t) if repr((tuple(n), t)) in _T else 'x'\n")
    v = sandbox.run_problem(block(prog), p)
    assert base and v.base_reward == 1.0 and v.reward == 0.0 and v.reason == "wrong_answer"


BIG = sandbox.parse_code_row({"problem": "f", "inputs": [[100000], [7]], "outputs": ["ab" * 100000, "ab" * 7],
                              "fn_name": "f"}, "fixture:big")


def raw_records(problem, prog, weak=False):
    """{test index: (record, attachments)} of one program, straight from the report channel."""
    sandbox.check_sandbox()
    mode = "weak" if weak else sandbox.sandbox_mode()
    return sandbox._run_job(sandbox._job(problem, prog, 2.0, 6.0, 1024), mode, lambda k, rec, blobs: (rec, blobs),
                            len(problem["tests"])).done


def test_long_str_results_are_compared_by_digest_and_cannot_be_forged():
    rec = {k: r for k, (r, _) in raw_records(BIG, "def f(n): return 'ab' * n").items()}
    assert "__sh" in rec[0]["out"][0] and rec[1]["out"] == ["ab" * 7]      # only the long one goes as a digest
    assert sandbox.run_problem(block("def f(n): return 'ab' * n"), BIG, **LIM).reward == 1.0
    one_off = "def f(n):\n    s = 'ab' * n\n    return s[:-1] + ('c' if n > 1000 else s[-1])"
    assert sandbox.run_problem(block(one_off), BIG, **LIM).reason == "wrong_answer"
    assert sandbox.run_problem(block("def f(n): return ['ab' * n]"), BIG, **LIM).reward == 0.0
    # the digest is computed inside the sandbox, but a patched one cannot pass: the parent hashes the expected
    forge = ("import hashlib\nclass H:\n    def __init__(self, *a): pass\n    def hexdigest(self): return '0' * 64\n"
             "hashlib.sha256 = H\ndef f(n): return 'x' * (2 * n)")
    assert sandbox.run_problem(block(forge), BIG, **LIM).reward == 0.0
    # the expected value is hashed once for all the samples that compare with it
    sandbox._sha256_hex.cache_clear()
    assert all(sandbox.run_problem(block("def f(n): return 'ab' * n"), BIG, **LIM).reward == 1.0 for _ in range(3))
    assert sandbox._sha256_hex.cache_info().misses == 1 and sandbox._sha256_hex.cache_info().hits == 2


def test_long_number_lists_travel_as_raw_attachments_exactly():
    ints = list(range(-50, 150))
    p = sandbox.parse_code_row({"problem": "f", "inputs": [[0], [1], [2]], "fn_name": "f",
                                "outputs": [ints, [x / 3 for x in ints], ints[:-1] + [2 ** 70]]}, "fixture:nums")
    prog = "def f(k):\n    r = list(range(-50, 150))\n    return r if k == 0 else [x / 3 for x in r] if k == 1 else r[:-1] + [2 ** 70]"
    recs = raw_records(p, prog)
    outs = {k: (r["out"][0], blobs) for k, (r, blobs) in recs.items()}
    assert "__qb" in outs[0][0] and "__fb" in outs[1][0] and isinstance(outs[2][0], list)  # 2**70: text
    big = sandbox._dec(outs[2][0])[-1]
    assert big == 2 ** 70 and type(big) is int
    assert [sandbox._dec(*outs[k]) for k in (0, 1)] == [ints, [x / 3 for x in ints]]
    assert sandbox.run_problem(block(prog), p, **LIM).reward == 1.0
    wrong = prog.replace("range(-50, 150))\n", "range(-49, 151))\n")
    assert sandbox.run_problem(block(wrong), p, **LIM).reason == "wrong_answer"
    # a record whose attachment lengths lie is noise, never a value
    liar = ("import os\nfor fd in range(3, 20):\n    try: os.write(fd, b'{\"k\": 0, \"out\": {\"__qb\": 0}, \"__n\": [-8]}\\n')\n"
            "    except OSError: pass\n" + prog)
    assert sandbox.run_problem(block(liar), p, **LIM).reward == 1.0


def test_mixed_number_lists_of_a_program_compare_exactly():
    row = {"task_id": "fixture/mixed", "prompt": "def f(n):\n", "entry_point": "f", "atol": 0,
           "canonical_solution": "    return [1] + [0.5] * n + [2 ** 53]\n", "base_input": [[99]], "plus_input": []}
    p = sandbox.parse_code_row(row, "fixture:mixed")
    exp = sandbox._expected(p, 2.0, 6.0, 1024, False)[0][0]
    assert type(exp[0]) is int and type(exp[1]) is float                  # the canonical run keeps its types
    ok = sandbox.run_problem(block("def f(n): return [1.0] + [0.5] * n + [2.0 ** 53]"), p, **LIM)
    assert ok.reward == 1.0                                                # 1.0 == 1, as in EvalPlus
    # 2**53 + 1 is no double: sent exactly, it differs from 2**53 (as doubles they would be equal)
    off = sandbox.run_problem(block("def f(n): return [1] + [0.5] * n + [2 ** 53 + 1]"), p, **LIM)
    assert off.reason == "wrong_answer"


# ----------------------------------------------------------------------------------------------------
# Hostile programs: each gets 0 (where it would have "succeeded" the expected output is what it prints
# on success, so a 0 means the attack failed), the trainer survives, nothing is left behind.
# ----------------------------------------------------------------------------------------------------

HACKS_ADD = {
    "sys.exit(0) first": "import sys\nsys.exit(0)",
    "os._exit(0) first": "import os\nos._exit(0)",
    "print expected format": "print('{\"k\": 0, \"out\": \"3\\\\n\", \"pass\": true}')",
    "forge records on every fd": ("import os\nfor fd in range(3, 40):\n    for k in range(-1, 3):\n"
                                  "        try: os.write(fd, ('{\"k\": %d, \"out\": \"3\\\\n\", \"pass\": true}\\n' % k).encode())\n"
                                  "        except OSError: pass\nos._exit(0)"),
    "patch json and builtins": ("import json, builtins\njson.dumps = lambda *a, **k: '{\"k\": 0, \"pass\": true}'\n"
                                "json.loads = lambda *a, **k: {}\nbuiltins.type = lambda x: int\nprint(0)"),
    "kill the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "kill the trainer by pid": f"import posix\nposix.kill({os.getpid()}, 9)",
    "kill everything": "import os\nos.kill(-1, 9)",
}
CALL_HACKS = {
    "always-equal object": ("class E:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
                            "def f(a, b): return E()"),
    "list subclass": "class L(list):\n    def __eq__(self, o): return True\ndef f(a, b): return L([3])",
    "int subclass": "class I(int):\n    def __eq__(self, o): return True\ndef f(a, b): return I(0)",
}


@pytest.mark.parametrize("name", sorted(HACKS_ADD))
def test_reward_hacks_get_zero(name):
    v = sandbox.run_problem(block(HACKS_ADD[name]), ADD, **LIM)
    assert v.reward == 0.0, (name, v)


@pytest.mark.parametrize("name", sorted(CALL_HACKS))
def test_call_hacks_get_zero(name):
    v = sandbox.run_problem(block(CALL_HACKS[name]), CALL, **LIM)
    assert v.reward == 0.0 and v.reason == "wrong_answer", (name, v)


def leak_problem(expect):
    return sandbox.parse_code_row({"problem": "leak", "inputs": [""], "outputs": [expect]}, "fixture:leak")


MARK = os.path.join(ROOT, ".sandbox_escape_marker")


@pytest.mark.parametrize("name,prog", [
    ("fork", "import os\npid = os.fork()\nprint('escaped')"),
    ("posix.fork", "import posix\nposix.fork()\nprint('escaped')"),
    ("system", "import os\nos.system('echo escaped')\nprint('escaped')"),
    ("posix_spawn", "import os\nos.posix_spawn('/bin/sh', ['sh'], {})\nprint('escaped')"),
    ("subprocess", "import subprocess\nsubprocess.run(['true'])\nprint('escaped')"),
    ("_posixsubprocess", "import _posixsubprocess\nprint('escaped')"),
    ("multiprocessing", "import multiprocessing as m\nm.Process(target=print).start()\nprint('escaped')"),
    ("ctypes", "import ctypes\nctypes.CDLL(None).fork()\nprint('escaped')"),
    ("socket", "import socket\ns = socket.create_connection(('127.0.0.1', 22), 1)\nprint('escaped')"),
    ("write outside", f"open({MARK!r}, 'w').write('x')\nprint('escaped')"),
    ("os.open outside", f"import os\nos.open({MARK!r}, os.O_WRONLY | os.O_CREAT)\nprint('escaped')"),
])
def test_escapes_get_zero_and_leave_no_trace(name, prog):
    v = sandbox.run_problem(block(prog), leak_problem("escaped\n"), **LIM)
    assert v.reward == 0.0, (name, v)
    assert not os.path.exists(MARK)


def test_imp_bypass_of_audit_hook_stays_inside():
    """Even past the audit hook (a builtin module created by hand), the namespaces hold: no shell,
    read-only files, and the program's view of the world is its sandbox."""
    prog = ("import _imp, importlib.machinery as m, os\n"
            "try:\n    ps = _imp.create_builtin(m.ModuleSpec('_posixsubprocess', None, origin='built-in'))\n"
            "except Exception: ps = None\n"
            f"ok = os.path.exists('/bin/sh') or os.path.exists({ROOT!r}) or os.access('/usr', os.W_OK)\n"
            "print('escaped' if ok else 'contained')")
    assert sandbox.run_problem(block(prog), leak_problem("escaped\n"), **LIM).reward == 0.0
    assert sandbox.run_problem(block(prog), leak_problem("contained\n"), **LIM).reward == 1.0


def test_trainer_files_and_environment_invisible(monkeypatch):
    monkeypatch.setenv("LAD_SECRET_TOKEN", "s3cr3t")
    for prog in ["import os\nprint(os.environ.get('LAD_SECRET_TOKEN'))",
                 f"print(open({os.path.join(ROOT, 'sandbox.py')!r}).read(6))",
                 f"print(open({os.path.join(DATA, 'SOURCES.md')!r}).read(6))",
                 "print(open('/proc/%d/environ' % int(open('/proc/self/stat').read().split()[3])).read())"]:
        secret = {0: "s3cr3t", 1: '"""san', 2: "# Data"}.get(
            ["LAD_SECRET" in prog, "sandbox.py" in prog, "SOURCES" in prog].index(True) if "proc" not in prog else 0)
        v = sandbox.run_problem(block(prog), leak_problem(secret + "\n"), **LIM)
        assert v.reward == 0.0, (prog, v)


def test_limits_and_reasons():
    assert sandbox.run_problem(block("while True: pass"), ADD, per_test=1, total=3).reason == "timeout"
    assert sandbox.run_problem(block("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                     "while True: pass"), ADD, per_test=1, total=3).reason == "timeout"
    assert sandbox.run_problem(block("x = bytearray(4 << 30)"), ADD, **LIM).reason == "memory"
    assert sandbox.run_problem(block("raise ValueError('no')"), ADD, **LIM).reason == "runtime_error"
    assert sandbox.run_problem(block("import socket"), ADD, **LIM).reason == "blocked"
    v = sandbox.run_problem(block("import sys\nwhile True: sys.stdout.write('x' * 65536)"), ADD, **LIM)
    assert v.reward == 0.0


def test_batch_parallel_and_no_process_left():
    """No sandbox outlives the call: none of its processes, whatever uid they show on the host."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import code_hostile

    before = code_hostile.process_table()
    progs = [HONEST_ADD, "while True: pass", "import os\nos.fork()", HONEST_ADD, "print(3)", "import time\ntime.sleep(60)"]
    out = sandbox.score_code_batch([block(p) for p in progs], [ADD] * len(progs), workers=2, per_test=1, total=2)
    assert [r for r, _ in out] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert [why for _, why in out] == ["ok", "timeout", "blocked", "ok", "wrong_answer", "timeout"]
    after = code_hostile.process_table()
    assert code_hostile.leftover_sandboxes(after) == []
    # the same check finds a running sandbox's processes, the program's own uid among them
    import threading
    th = threading.Thread(target=sandbox.run_problem, args=(block("import time\ntime.sleep(30)"), ADD),
                          kwargs=dict(per_test=3.0, total=3.0))
    th.start()
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        running = code_hostile.process_table()
        found = code_hostile.leftover_sandboxes(running)
        if any(running[p][2].startswith("python") for p in found):
            break
        time.sleep(0.05)
    th.join()
    assert any(running[p][2].startswith("python") for p in found), [running[p] for p in found]
    if sandbox.sandbox_mode() == "root":
        assert any(running[p][1] >= sandbox.UID_BASE for p in found)
    assert code_hostile.leftover_sandboxes(code_hostile.process_table()) == []
    assert set(code_hostile.descendants(os.getpid(), after)) <= set(code_hostile.descendants(os.getpid(), before))


def test_weak_sandbox_warns_every_run():
    for _ in range(2):
        with pytest.warns(RuntimeWarning, match="weak_sandbox"):
            assert sandbox.run_problem(block(HONEST_ADD), ADD, weak_sandbox=True, **LIM).reward == 1.0


def test_missing_bwrap_refuses_with_the_fix(monkeypatch):
    monkeypatch.setattr(sandbox, "_MODE", None)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install -y bubblewrap"):
        sandbox.score_code_batch([block(HONEST_ADD)], [ADD])


def test_hostile_programs_mixed_into_a_batch():
    """bench/code_hostile.py's checks on one of each hostile kind among 14 ordinary programs: every hostile
    one 0 with an expected reason, every ordinary one its verdict, within the bound, nothing left, the
    calling process unchanged (the bench runs 64 + 128: bench/RESULTS.md)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import code_hostile

    n = len(code_hostile.hostile_catalogue(os.getpid()))
    res = code_hostile.run(n, 14, workers=2, per_test=1.0, total=3.0, seed=1)
    assert res["failures"] == [] and res["processes_left"] == 0, res["failures"]
    assert len(res["reasons_by_program"]) == n + len(code_hostile.ordinary_catalogue())


# ----------------------------------------------------------------------------------------------------
# Issue #23: a sample's failure is that sample's reward; the parent's cost bounded; limits that hold as
# root; the first layer holds past the audit hook; exact per-format judging; no forgeable pass.
# ----------------------------------------------------------------------------------------------------

def forge(records):
    """A program that writes the given raw report lines on every fd (the channel among them) and exits."""
    return ("import os\nfor fd in range(3, 40):\n    try: os.write(fd, " + repr(records) + ")\n"
            "    except OSError: pass\nos._exit(0)")


FLOAT_CALL = sandbox.parse_code_row({"problem": "f", "starter_code": "class Solution:\n    def f(self, n):",
                                     "tests": [{"input": "3", "output": "1.5", "testtype": "functional"}]},
                                    "fixture:float-call")
FLOAT_EVALPLUS = sandbox.parse_code_row({"task_id": "fixture/half", "prompt": "def f(n):\n", "entry_point": "f",
                                         "canonical_solution": "    return [n / 2]\n", "base_input": [[3]],
                                         "plus_input": [[5]], "atol": 0}, "fixture:half")


@pytest.mark.parametrize("name,prog,problem", [
    ("2 ** 1024 against a float (call)", "class Solution:\n    def f(self, n): return 2 ** 1024", FLOAT_CALL),
    ("2 ** 1024 against a float (TACO)", "def f(a, b): return 2 ** 1024", CALL),
    ("2 ** 1024 against a float (EvalPlus)", "def f(n): return [2 ** 1024]", FLOAT_EVALPLUS),
    ("NaN and a deep list", "def f(a, b):\n    x = []\n    for _ in range(5000): x = [x]\n    return [float('nan'), x]", CALL),
    ("deeply nested record", forge(b'{"k": 0, "out": [' + b"[" * 100000 + b"]" * 100000 + b"]}\n"), CALL),
    ("record without out", forge(b'{"k": 0}\n{"k": 1}\n'), CALL),
    ("record with a wrong type", forge(b'{"k": 0, "out": 5}\n{"k": 1, "out": {"__d": 7}}\n{"k": -1, "err": 3}\n'), CALL),
    ("unknown tags", forge(b'{"k": 0, "out": [{"__zz": 1}]}\n{"k": 1, "out": [{"__fb": 99}]}\n'), CALL),
    ("stdin record without output", forge(b'{"k": 0, "pass": true}\n'), ADD),
    ("stdin record with a wrong type", forge(b'{"k": 0, "out": 5}\n{"k": 1, "__n": [3]}\n12\n'), ADD),
])
def test_a_samples_failure_is_its_own_reward(name, prog, problem):
    progs = [block(prog), block(HONEST_ADD)]
    out = sandbox.score_code_batch(progs, [problem, ADD], workers=2, **LIM)
    assert out[0][0] == 0.0 and out[0][1] in sandbox.REASONS and out[1] == (1.0, "ok"), (name, out)


def test_parent_memory_and_time_are_bounded_by_the_limits():
    """Hostile report channels (bench/code_hostile.py's parent_memory_catalogue: a 16 MB line of small
    objects, records of tests that do not exist, millions of declared attachments, ...) cost the parent
    at most the documented bound (docs/sandbox.md) and finish within the program's time limit."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import code_hostile

    got = code_hostile.parent_memory(per_test=2.0, total=4.0)
    assert all(m["reward"] == 0.0 and m["seconds"] < 4.0 + 2.0 for m in got.values()), got
    assert max(m["peak_mib"] for m in got.values()) <= code_hostile.PARENT_MB_PER_SANDBOX, got


def test_lcb_stdin_is_judged_line_by_line_exactly():
    p = sandbox.parse_code_row({"problem": "p", "tests": [{"input": "", "output": "999999937\n1.0 2\n",
                                                          "testtype": "stdin"}]}, "fixture:exact")
    judge = {"print(999999937); print('1.0 2')": 1.0, "print(999999000); print('1.0 2')": 0.0,
             "print(999999937); print('1 2.00')": 1.0, "print(' 999999937 '); print('1.0  2  ')": 1.0,
             "print(999999937); print('1.0000001 2')": 0.0, "print(999999937, '1.0 2')": 0.0,
             "print(999999937); print('1.0 2'); print()": 1.0, "print(999999937); print('1.0 2 3')": 0.0,
             "print('999999937\\n\\n1.0 2')": 0.0, "print(999999937); print('1e0 2')": 1.0}
    for prog, reward in judge.items():
        assert sandbox.run_problem(block(prog), p, **LIM).reward == reward, prog


def test_call_results_are_compared_exactly():
    big = sandbox.parse_code_row({"problem": "f", "starter_code": "class Solution:\n    def f(self, n):",
                                  "tests": [{"input": "1", "output": "1000000000000", "testtype": "functional"},
                                            {"input": "2", "output": "[1, 2]", "testtype": "functional"}]},
                                 "fixture:exact-call")
    judge = {"return 10 ** 12 if n == 1 else (1, 2)": 1.0,            # LiveCodeBench: a tuple as a list
             "return 10 ** 12 + 1 if n == 1 else [1, 2]": 0.0,
             "return 1e12 if n == 1 else [1.0, 2.0]": 1.0,            # Python ==, as the grader
             "return 999999999999.9999 if n == 1 else [1, 2]": 0.0}
    for body, reward in judge.items():
        prog = f"class Solution:\n    def f(self, n):\n        {body}"
        assert sandbox.run_problem(block(prog), big, **LIM).reward == reward, body


LC_ASSERTS = sandbox.parse_code_row({
    "problem": "sort", "starter_code": "class Solution:\n    def s(self, nums):",
    "tests": {"functional": "def check(candidate):\n"
                            "    assert sorted(candidate(nums=[3, 1, 2])) == [1, 2, 3]\n"
                            "    assert len(candidate(nums=[5, 4])) == 2 and candidate(nums=[]) == []\n"
                            "    assert candidate(nums=[2, 1])[0] == 1 or candidate(nums=[9]) is None\n"
                            "check(Solution().s)\n"}}, "fixture:asserts")


def test_leetcode_asserts_of_any_form_are_judged_outside():
    assert all("judge" in t for t in LC_ASSERTS["tests"]) and not any(t.get("inside") for t in LC_ASSERTS["tests"])
    honest = "class Solution:\n    def s(self, nums): return sorted(nums)"
    assert sandbox.run_problem(block(honest), LC_ASSERTS, **LIM).reward == 1.0
    assert sandbox.run_problem(block("class Solution:\n    def s(self, nums): return nums"), LC_ASSERTS,
                               **LIM).reason == "wrong_answer"
    forged = b"".join(b'{"k": %d, "pass": true, "out": [[1, 2, 3]]}\n' % k for k in range(-1, 3))
    assert sandbox.run_problem(block(forge(forged)), LC_ASSERTS, **LIM).reward == 0.0
    with pytest.raises(sandbox.RowError, match="does not evaluate"):
        sandbox.parse_code_row({"problem": "p", "starter_code": "class Solution:\n    def s(self, n):",
                                "tests": {"functional": "def check(candidate):\n    assert __import__('os') or candidate(1)\n"
                                                        "check(Solution().s)\n"}}, "fixture:bad-assert")


MBPP_ROW = {"task_id": "Mbpp/2", "entry_point": "similar_elements", "atol": 0,
            "prompt": '"""\nWrite a function to find the shared elements from the given two lists.\n"""\n',
            "canonical_solution": "def similar_elements(test_tup1, test_tup2):\n"
                                  "  return tuple(set(test_tup1) & set(test_tup2)) + test_tup1[:0]\n",
            "base_input": [[[3, 4, 5, 6], [5, 7, 4, 10]]], "plus_input": [[[1, 2, 3, 4], [5, 4, 3, 7]]]}


def test_mbpp_plus_inputs_as_evalplus_reads_them_and_bad_problems_reported():
    p = sandbox.parse_code_row(MBPP_ROW, "fixture:mbpp")
    assert isinstance(p["tests"][0]["args"][0], tuple)          # evalplus's own deserialisation
    bad = sandbox.parse_code_row(dict(MBPP_ROW, task_id="fixture/broken", canonical_solution="    return 1 / 0\n"),
                                 "fixture/broken.jsonl:7")
    good = block(MBPP_ROW["canonical_solution"])
    vs = sandbox.score_code_batch_verdicts([good, block("def similar_elements(a, b): return (4,)"), good],
                                           [p, p, bad], workers=2, **LIM)
    assert [(v.reward, v.reason) for v in vs] == [(1.0, "ok"), (0.0, "wrong_answer"), (0.0, "bad_problem")]
    assert vs[2].detail.startswith("fixture/broken.jsonl:7: canonical solution failed on input 0")


NO_HOOK_PROG = r'''
import ctypes, errno, json, os, threading, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *a):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
    if r == 0 and nr in (56, 57): os._exit(0)          # a child, if fork went through
    return "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
res = {"fork": sc(57), "clone": sc(56, 17, 0, 0, 0, 0), "clone3": sc(435, 0, 0), "execveat": sc(322, -100, 0, 0, 0, 0),
       "unshare": sc(272, 0x10000000), "setns": sc(308, 0, 0), "mount": sc(165, 0, 0, 0, 0, 0),
       "keyctl": sc(250, 0, -3, 0), "add_key": sc(248, 0, 0, 0, 0, -3), "request_key": sc(249, 0, 0, 0, 0),
       "ptrace": sc(101, 0, 0, 0, 0), "memfd_create": sc(319, 0, 0), "shmget": sc(29, 0, 1 << 20, 0o1600),
       "msgget": sc(68, 0, 0o1600), "socket_inet": sc(41, 2, 1, 0), "bpf": sc(321, 0, 0, 0),
       "perf_event_open": sc(298, 0, 0, -1, -1, 0), "userfaultfd": sc(323, 0), "io_uring_setup": sc(425, 1, 0)}
started = []
for _ in range(64):
    t = threading.Thread(target=time.sleep, args=(0.5,))
    try:
        t.start(); started.append(t)
    except RuntimeError:
        break
res["threads"] = len(started)
res["writable"] = sorted(d for d in ("/", "/dev", "/usr", "/usr/lib", os.path.dirname(os.__file__), "/tmp")
                         if os.access(d, os.W_OK))
res["dev"] = sorted(os.listdir("/dev"))
st = os.statvfs("/tmp")
res["tmp_bytes"] = st.f_blocks * st.f_frsize
res["uid"], res["groups"] = os.getuid(), os.getgroups()
print(json.dumps(res))
'''


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers of x86_64")
def test_first_layer_holds_without_the_audit_hook(monkeypatch):
    """The harness without its audit hook (as a program that bypassed it): seccomp still refuses process
    creation, namespaces, keyrings, uncounted memory, sockets and tracing; threads are capped; the only
    writable place is the capped /tmp; the program's host identity is unprivileged."""
    src = sandbox._HARNESS.replace("sys.addaudithook(_make_hook(", "(_make_hook(")
    assert src != sandbox._HARNESS
    monkeypatch.setattr(sandbox, "_HARNESS", src)
    monkeypatch.setattr(sandbox, "_HARNESS_CODE", None)
    (rec, blobs), = raw_records(leak_problem("x"), NO_HOOK_PROG).values()
    assert "err" not in rec, rec
    res = json.loads(blobs[0])
    calls = {k: v for k, v in res.items() if k not in ("threads", "writable", "dev", "tmp_bytes", "uid", "groups")}
    assert calls == {**{k: "EPERM" for k in calls}, "clone3": "ENOSYS"}, calls
    assert 1 <= res["threads"] < sandbox.THREADS, res
    assert res["writable"] == ["/tmp"] and res["tmp_bytes"] <= sandbox.TMPFS_BYTES, res
    assert "shm" not in res["dev"] and "pts" not in res["dev"], res
    if sandbox.sandbox_mode() == "root":
        assert res["uid"] >= sandbox.UID_BASE and res["groups"] == [], res


def test_userns_mode_works_for_non_root_trainers(monkeypatch):
    """The mode a non-root trainer gets (bwrap's user namespace), run here too."""
    sandbox.check_sandbox()
    monkeypatch.setattr(sandbox, "_MODE", "userns")
    assert sandbox.run_problem(block(HONEST_ADD), ADD, **LIM).reward == 1.0
    assert sandbox.run_problem(block("import posix\nposix.fork()\nprint(3)"), ADD, **LIM).reward == 0.0


@pytest.mark.parametrize("name,prog", [
    ("harness globals from __main__", "import __main__, os\n__main__._BLOCK, __main__._MODS = (), set()\n"
     "if os.fork() == 0:\n    os._exit(0)\nprint('escaped')"),
    ("hook state through gc", "import gc\nfor o in gc.get_objects(): pass\nprint('escaped')"),
    ("module under another name", "import importlib.util, glob, sys\n"
     "p = glob.glob(sys.prefix + '/lib/python3*/lib-dynload/_posixsubprocess*')[0]\n"
     "m = importlib.util.module_from_spec(importlib.util.spec_from_file_location('zz._posixsubprocess', p))\n"
     "try:\n    m.fork_exec([sys.executable.encode(), b'-c', b'0'], [sys.executable.encode()], True, (), None, None,"
     " -1, -1, -1, -1, -1, -1, *__import__('os').pipe(), False, False, -1, None, None, None, -1, None, False)\n"
     "    print('escaped')\nexcept OSError:\n    print('contained')"),
])
def test_hook_bypasses_stay_contained(name, prog):
    for weak in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = sandbox.run_problem(block(prog), leak_problem("escaped\n"), weak_sandbox=weak, **LIM)
        assert v.reward == 0.0, (name, weak, v)


@pytest.mark.parametrize("name,prog", [
    ("bytes path", f"open({MARK.encode()!r}, 'w').write('x')"),
    ("dir_fd", f"import os\nfd = os.open({ROOT!r}, os.O_RDONLY)\nos.close(os.open('.sandbox_escape_marker', os.O_WRONLY | os.O_CREAT, dir_fd=fd))"),
    ("patched os.path and builtins", f"import os.path, builtins, posixpath\nos.path.realpath = posixpath.realpath = lambda p, **k: '/tmp/x'\n"
     f"posixpath.islink = lambda p: False\nbuiltins.any = lambda *a: False\nopen({MARK!r}, 'w').write('x')"),
    ("rename into place", f"import os\nopen('m', 'w').write('x')\nos.rename('m', {MARK!r})"),
])
def test_weak_sandbox_hook_resists_path_tricks(name, prog):
    with pytest.warns(RuntimeWarning):
        v = sandbox.run_problem(block(prog + "\nprint('escaped')"), leak_problem("escaped\n"), weak_sandbox=True, **LIM)
    assert v.reward == 0.0 and v.reason == "blocked" and not os.path.exists(MARK), (name, v)
