"""bench/code_hostile.py -- hostile programs mixed into a batch of ordinary ones, under load.

One call of sandbox.score_code_batch_verdicts on a shuffled batch of --hostile hostile programs (fork
bombs, memory hogs, infinite loops, sleeps, huge outputs, file writes, sockets, signals to the parent
and to this process, the reward hacks: exiting before the tests, forged report records, patched json /
builtins, always-equal objects; report channels that crash or swell a parser: deep nesting, records
without fields or with wrong types, huge lines, records of tests that do not exist, millions of
declared attachments; numbers a float comparison cannot take; the limits a root trainer used to lose:
thread bombs, memfd, /dev/shm, the keyring; audit-hook bypasses: the harness's globals, a module under
another name, gc) and --ordinary ordinary ones (correct, wrong and crashing programs whose verdicts are
known). Checked, and the script exits 1 when any check fails:
    - every hostile program gets reward 0 with a reason from its kind's expected set;
    - every ordinary program gets exactly its expected (reward, reason);
    - the batch finishes within its bound: sum over programs of their limit (hostile: total + 1.5 s,
      ordinary: 1 s) / workers, plus one program's limit;
    - no process is left: no descendant of this process, and none of its sandboxes' processes, found by
      the SANDBOX_PARENT=<pid> mark in bwrap's environment and the pid namespace of those, whatever uid
      they show on the host (a root trainer's sandboxes run as uids of their own);
    - this process is unaffected: same pid, open fds, threads, environment, signal handlers, a sentinel
      file next to it unchanged, nothing written outside the sandboxes, no key added to its keyring;
    - the parent's memory: each hostile report channel of parent_memory_catalogue() run alone under
      tracemalloc; the peak must stay within sandbox.py's documented bound (PARENT_MB_PER_SANDBOX), and
      each must end within its program's time limit.

Commands
    python bench/code_hostile.py                          # 64 hostile + 128 ordinary
    python bench/code_hostile.py --hostile 8 --ordinary 8 --per-test 1 --total 3 --memory false

Deliberately left out: GPU, several ranks at once (each rank runs its own pool the same way).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sandbox  # noqa: E402
from common import parse_args  # noqa: E402


@dataclass
class Args:
    """Hostile programs under load (see the module docstring)."""

    hostile: int = 64
    """hostile programs in the batch (cycled through the catalogue)"""
    ordinary: int = 128
    """ordinary programs in the batch (correct, wrong, crashing)"""
    workers: int = 0
    """parallel sandboxes (0: sandbox.py's default, usable cores per rank)"""
    per_test: float = 2.0
    """per-test time limit, seconds"""
    total: float = 6.0
    """per-program time limit, seconds"""
    seed: int = 0
    """shuffle seed"""
    memory: bool = True
    """also measure the parent's peak memory per sandbox on the hostile report channels"""
    out: str = ""
    """write the JSON result here too"""


ADD = sandbox.parse_code_row({"problem": "add two ints", "inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]},
                             "code_hostile:add")
CALL = sandbox.parse_code_row({"problem": "f(a, b) = a + b", "inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]],
                               "fn_name": "f"}, "code_hostile:call")
FLOAT_CALL = sandbox.parse_code_row({"problem": "f(n) = n / 2", "starter_code": "class Solution:\n    def f(self, n):",
                                     "tests": [{"input": "3", "output": "1.5", "testtype": "functional"}]},
                                    "code_hostile:float")
MARK = ROOT / ".code_hostile_marker"
PARENT_MB_PER_SANDBOX = 96
"""The documented bound (docs/sandbox.md) on the parent's memory growth while it reads one sandbox."""


def on_every_fd(expr: str) -> str:
    """A program that builds bytes at run time (expr) and writes them on every fd (the report channel
    among them), then exits without running the tests."""
    return (f"import os\ndata = {expr}\nfor fd in range(3, 40):\n    try: os.write(fd, data)\n"
            "    except OSError: pass\nos._exit(0)")


def hostile_catalogue(trainer_pid: int) -> list[tuple[str, str, dict, set]]:
    """(name, program, problem, allowed reasons) of every hostile kind; each must get reward 0."""
    T = {"timeout"}
    return [
        ("fork bomb (os.fork)", "import os\nwhile True:\n    os.fork()", ADD, {"blocked"}),
        ("fork bomb (posix)", "import posix\nwhile True:\n    posix.fork()", ADD, {"blocked"}),
        ("spawn a shell", "import os\nos.system('sh -c \"yes > /dev/null\"')", ADD, {"blocked"}),
        ("subprocess", "import subprocess\nsubprocess.Popen(['sleep', '100'])", ADD, {"blocked"}),
        ("multiprocessing", "import multiprocessing as m\nm.Process(target=print).start()", ADD, {"blocked"}),
        ("memory hog (one block)", "x = bytearray(8 << 30)", ADD, {"memory"}),
        ("memory hog (growing)", "l = []\nwhile True:\n    l.append(' ' * 10**7)", ADD, {"memory", "timeout"}),
        ("infinite loop", "while True:\n    pass", ADD, T),
        ("infinite loop ignoring SIGALRM", "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                           "while True:\n    pass", ADD, T),
        ("sleep", "import time\ntime.sleep(3600)", ADD, T),
        ("huge output", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", ADD, {"runtime_error", "timeout"}),
        ("huge output (call)", "def f(a, b):\n    return 'x' * (900 << 20)", CALL, {"memory", "runtime_error", "timeout"}),
        # under /tmp (a checkout there) the audit hook lets the path through and the sandbox's own /tmp
        # has no such folder: runtime_error; elsewhere the hook blocks it. The MARK check proves no write.
        ("write outside the folder", f"open({str(MARK)!r}, 'w').write('x')\nprint(3)", ADD,
         {"blocked"} if not str(MARK).startswith("/tmp/") else {"blocked", "runtime_error"}),
        ("fill the tmpfs", "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * (1 << 20))", ADD,
         {"runtime_error", "timeout"}),
        ("socket", "import socket\nsocket.create_connection(('127.0.0.1', 22), 1)\nprint(3)", ADD, {"blocked"}),
        ("kill the parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", ADD, {"blocked"}),
        ("kill the trainer by pid", f"import posix\nposix.kill({trainer_pid}, 9)", ADD, {"blocked"}),
        ("kill every process", "import os\nos.kill(-1, 9)", ADD, {"blocked"}),
        ("sys.exit(0) before the tests", "import sys\nsys.exit(0)", ADD, {"wrong_answer"}),
        ("os._exit(0) before the tests", "import os\nos._exit(0)", ADD, {"runtime_error"}),
        ("print the report format", "print('{\"k\": 0, \"out\": \"3\\\\n\", \"pass\": true}')", ADD, {"wrong_answer"}),
        ("forge records on every fd", "import os\nfor fd in range(3, 40):\n    for k in range(-1, 3):\n"
                                      "        try: os.write(fd, ('{\"k\": %d, \"out\": \"3\\\\n\", \"pass\": true}\\n' % k).encode())\n"
                                      "        except OSError: pass\nos._exit(0)", ADD,
         {"wrong_answer", "runtime_error"}),
        ("patch json and builtins", "import json, builtins\njson.dumps = lambda *a, **k: '{\"k\": 0, \"pass\": true}'\n"
                                    "builtins.type = lambda x: int\nprint(0)", ADD, {"wrong_answer"}),
        ("always-equal object", "class E:\n    def __eq__(self, o): return True\ndef f(a, b): return E()", CALL,
         {"wrong_answer"}),
        ("int subclass equal to all", "class I(int):\n    def __eq__(self, o): return True\ndef f(a, b): return I(0)",
         CALL, {"wrong_answer"}),
        ("read the trainer's files", f"print(open({str(ROOT / 'sandbox.py')!r}).read(3))", ADD, {"runtime_error"}),
        ("2 ** 1024 against a float", "class Solution:\n    def f(self, n): return 2 ** 1024", FLOAT_CALL,
         {"wrong_answer"}),
        ("deeply nested record", on_every_fd("b'{\"k\": 0, \"out\": [' + b'[' * 100000 + b']' * 100000 + b']}\\n'"),
         CALL, {"runtime_error"}),
        ("records without fields, wrong types", on_every_fd("b'{\"k\": 0, \"pass\": true}\\n{\"k\": 1, \"out\": 5}\\n'"),
         ADD, {"wrong_answer", "runtime_error"}),
        ("16 MB report line", on_every_fd("b'{\"k\": 0, \"out\": [' + b'{},' * (16 << 18) + b'{}]}\\n'"), CALL,
         {"runtime_error"}),
        ("records of tests that do not exist", "import os\nfor k in range(2, 5000):\n"
         "    os.write(3, b'{\"k\": %d, \"out\": [\"' % k + b'x' * 60000 + b'\"]}\\n')\nos._exit(0)", CALL,
         {"runtime_error", "timeout"}),
        ("millions of attachments declared", on_every_fd("b'{\"k\": 0, \"__n\": [' + b'1,' * 3000000 + b'1]}\\n'"), CALL,
         {"runtime_error"}),
        ("thread bomb", "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()",
         ADD, {"runtime_error", "memory"}),
        ("memfd", "import os\nfd = os.memfd_create('x')\nos.write(fd, b'x' * (600 << 20))\nprint(3)", ADD,
         {"blocked", "runtime_error"}),
        ("fill /dev/shm", "open('/dev/shm/x', 'wb').write(b'x' * (700 << 20))\nprint(3)", ADD, {"blocked"}),
        ("read the keyring", "import ctypes\nprint(ctypes.CDLL(None).syscall(250, 0, -3, 0))", ADD, {"blocked"}),
        ("harness globals, then fork", "import __main__, os\n__main__._BLOCK, __main__._MODS = (), set()\n"
         "if os.fork() == 0:\n    os._exit(0)\nprint(3)", ADD, {"blocked"}),
        ("module under another name", "import importlib.util, glob, sys\n"
         "p = glob.glob(sys.prefix + '/lib/python3*/lib-dynload/_posixsubprocess*')[0]\n"
         "m = importlib.util.module_from_spec(importlib.util.spec_from_file_location('zz._posixsubprocess', p))\n"
         "print(3)", ADD, {"blocked"}),
        ("the hook through gc", "import gc\nfor o in gc.get_objects(): pass\nprint(3)", ADD, {"blocked"}),
    ]


def parent_memory_catalogue() -> list[tuple[str, str, dict]]:
    """(name, program, problem) of report channels that make the parent read or decode the most."""
    cap = sandbox.DECODE_CAP
    return [
        ("16 MB line of small objects", on_every_fd("b'{\"k\": 0, \"out\": [' + b'{},' * (16 << 18) + b'{}]}\\n'"), CALL),
        ("objects up to the decode cap", on_every_fd(f"b'{{\"k\": 0, \"out\": [[' + b'{{}},' * ({cap} // 190) + b'{{}}]]}}\\n'"), CALL),
        ("floats up to the decode cap", on_every_fd(f"b'{{\"k\": 0, \"out\": [[' + b'1e5,' * ({cap} // 120) + b'1]]}}\\n'"), CALL),
        ("one str up to the decode cap", on_every_fd(f"b'{{\"k\": 0, \"out\": [\"' + b'a' * ({cap} // 9) + b'\\\\ud83d\\\\ude00\"]}}\\n'"), CALL),
        ("8 MiB of packed ints", "def f(a, b):\n    return list(range(1 << 20))", CALL),
        ("records of tests that do not exist", "import os\nfor k in range(2, 5000):\n"
         "    os.write(3, b'{\"k\": %d, \"out\": [\"' % k + b'x' * 60000 + b'\"]}\\n')\nos._exit(0)", CALL),
        ("millions of attachments declared", on_every_fd("b'{\"k\": 0, \"__n\": [' + b'1,' * 3000000 + b'1]}\\n'"), CALL),
        ("8 MiB stdout, one line", "import sys\nsys.stdout.write('7 ' * (4 << 20))", ADD),
        ("8 MiB stdout, astral characters", "import sys\nsys.stdout.write('\\U0001F600' * (2 << 20))", ADD),
        ("deep nesting", on_every_fd("b'{\"k\": 0, \"out\": [' + b'[' * 100000 + b']' * 100000 + b']}\\n'"), CALL),
    ]


def parent_memory(per_test: float, total: float) -> dict:
    """Each parent_memory_catalogue() program alone: the parent's peak traced memory (MiB) in one run,
    its wall time in another (tracemalloc slows every allocation several times)."""
    import tracemalloc

    out = {}
    for name, prog, problem in parent_memory_catalogue():
        t = time.perf_counter()
        v = sandbox.run_problem(block(prog), problem, per_test=per_test, total=total)
        seconds = time.perf_counter() - t
        tracemalloc.start()
        sandbox.run_problem(block(prog), problem, per_test=per_test, total=total)
        out[name] = {"peak_mib": round(tracemalloc.get_traced_memory()[1] / 2 ** 20, 1), "reward": v.reward,
                     "reason": v.reason, "seconds": round(seconds, 2)}
        tracemalloc.stop()
    return out


def ordinary_catalogue() -> list[tuple[str, str, dict, tuple]]:
    """(name, program, problem, expected (reward, reason))."""
    return [
        ("correct (stdin)", "a, b = map(int, input().split())\nprint(a + b)", ADD, (1.0, "ok")),
        ("correct (call)", "def f(a, b):\n    return a + b", CALL, (1.0, "ok")),
        ("correct, slower", "import math\na, b = map(int, input().split())\nprint(sum([1] * a) + b)", ADD, (1.0, "ok")),
        ("wrong (stdin)", "a, b = map(int, input().split())\nprint(a - b)", ADD, (0.0, "wrong_answer")),
        ("wrong (call)", "def f(a, b):\n    return a * b", CALL, (0.0, "wrong_answer")),
        ("crash", "raise ValueError('no')", ADD, (0.0, "runtime_error")),
        ("no code block", None, ADD, (0.0, "no_code_block")),
    ]


def block(src):
    return "no code here" if src is None else f"```python\n{src}\n```"


def process_table() -> dict:
    """pid -> (ppid, uid, name, pid namespace) of every live (not zombie) process visible here."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as f:
                st = dict(ln.split(":", 1) for ln in f.read().splitlines() if ":" in ln)
            if st["State"].split()[0] != "Z":    # zombies hold no resources (init reaps them)
                out[int(d)] = (int(st["PPid"]), int(st["Uid"].split()[0]), st["Name"].strip(),
                               os.readlink(f"/proc/{d}/ns/pid"))
        except (OSError, KeyError, ValueError):
            pass
    return out


def leftover_sandboxes(table: dict) -> list[int]:
    """This process's sandbox processes still alive, whatever uid they show on the host: bwrap's processes
    carry SANDBOX_PARENT=<this pid> in their environment (sandbox.py), and every process in the pid
    namespace of one of them is that sandbox's (table: process_table())."""
    mark = f"SANDBOX_PARENT={os.getpid()}".encode()
    ours, spaces = set(), set()
    for pid, (_, _, _, ns) in table.items():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    ours.add(pid)
                    spaces.add(ns)
        except OSError:
            pass
    spaces.discard(os.readlink("/proc/self/ns/pid"))
    return sorted(ours | {pid for pid, (*_, ns) in table.items() if ns in spaces})


def descendants(pid: int, table: dict) -> list[int]:
    kids, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        for c, (pp, *_) in table.items():
            if pp == p:
                kids.append(c)
                frontier.append(c)
    return kids


def trainer_state() -> dict:
    """What a hostile program must not change in the calling process."""
    return {"pid": os.getpid(), "fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count(),
            "env": dict(os.environ), "handlers": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
            "cwd": os.getcwd(), "keys": Path("/proc/keys").read_text() if Path("/proc/keys").exists() else ""}


def build_batch(n_hostile: int, n_ordinary: int, seed: int):
    """Shuffled [(kind, name, response, problem, expected)] cycling through both catalogues."""
    hc, oc = hostile_catalogue(os.getpid()), ordinary_catalogue()
    batch = [("hostile", *hc[i % len(hc)]) for i in range(n_hostile)]
    batch += [("ordinary", *oc[i % len(oc)]) for i in range(n_ordinary)]
    random.Random(seed).shuffle(batch)
    return [(kind, name, block(prog), prob, exp) for kind, name, prog, prob, exp in batch]


def run(n_hostile, n_ordinary, workers, per_test, total, seed) -> dict:
    """Score the batch once and check everything in the module docstring -> result dict ("failures")."""
    workers = workers or sandbox._default_workers()
    batch = build_batch(n_hostile, n_ordinary, seed)
    sentinel = ROOT / ".code_hostile_sentinel"
    sentinel.write_text("untouched")
    before, table0 = trainer_state(), process_table()
    load0 = os.getloadavg()
    t = time.perf_counter()
    verdicts = sandbox.score_code_batch_verdicts([b[2] for b in batch], [b[3] for b in batch], workers=workers,
                                                 per_test=per_test, total=total)
    seconds = time.perf_counter() - t
    table1, after = process_table(), trainer_state()
    bound = (sum(total + 1.5 if b[0] == "hostile" else 1.0 for b in batch) / workers) + total + 1.5
    failures, by_kind = [], {}
    for (kind, name, _, _, exp), v in zip(batch, verdicts):
        by_kind.setdefault(name, {}).setdefault(v.reason, 0)
        by_kind[name][v.reason] += 1
        ok = (v.reward == 0.0 and v.reason in exp) if kind == "hostile" else ((v.reward, v.reason) == exp)
        if not ok:
            failures.append(f"{kind} {name!r}: got {v.reward} {v.reason} ({v.detail[:80]}), expected {exp}")
    if seconds > bound:
        failures.append(f"batch took {seconds:.1f} s, over its bound {bound:.1f} s")
    # children that existed before the batch (verifier.py's persistent math pool, say) are not the sandbox's
    left = sorted(set(descendants(os.getpid(), table1)) - set(descendants(os.getpid(), table0)))
    orphans = sorted(set(leftover_sandboxes(table1)) - set(left))
    if left:
        failures.append(f"processes left under this one: {[table1[p] for p in left]}")
    if orphans:
        failures.append(f"sandbox processes left elsewhere: {[table1[p] for p in orphans]}")
    for key in before:
        if before[key] != after[key]:
            failures.append(f"calling process changed: {key} {before[key]!r} -> {after[key]!r}")
    if sentinel.read_text() != "untouched" or MARK.exists():
        failures.append("a file outside the sandboxes was written")
    sentinel.unlink()
    return {"programs": len(batch), "hostile": n_hostile, "ordinary": n_ordinary, "workers": workers,
            "per_test_s": per_test, "total_s": total, "seconds": round(seconds, 2), "bound_s": round(bound, 1),
            "load_average_start": [round(x, 2) for x in load0],
            "processes_left": len(left) + len(orphans), "reasons_by_program": by_kind,
            "failures": failures}


def main(argv=None) -> int:
    a = parse_args(Args, argv)
    res = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "sandbox_mode": "",
           **run(a.hostile, a.ordinary, a.workers, a.per_test, a.total, a.seed)}
    res["sandbox_mode"] = sandbox.sandbox_mode()
    if a.memory:
        mem = res["parent_memory"] = parent_memory(a.per_test, a.total)
        res["parent_peak_mib"] = max(m["peak_mib"] for m in mem.values())
        if res["parent_peak_mib"] > PARENT_MB_PER_SANDBOX:
            res["failures"].append(f"parent peak {res['parent_peak_mib']} MiB over {PARENT_MB_PER_SANDBOX} MiB")
        res["failures"] += [f"parent memory {k!r}: reward {m['reward']}, {m['seconds']} s" for k, m in mem.items()
                            if m["reward"] or m["seconds"] > a.total + 2.0]
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
