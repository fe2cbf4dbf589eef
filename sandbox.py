"""sandbox.py -- code rewards: model-written programs run under bubblewrap, tests compared outside.

What it implements
    - A real OS sandbox (bubblewrap): every program runs in new user, pid, network, IPC, UTS and mount
      namespaces as uid/gid 65534, killed with its parent, in its own session; it sees only the base
      interpreter's prefix and the system libraries (read-only) and a size-capped tmpfs /tmp (its
      folder, the only writable place); the environment is cleared. Inside, a trusted harness sets
      resource limits (address space, CPU seconds, processes, file size, open files) and an audit hook
      (fork/exec/spawn, sockets, ctypes, signals, writes outside the folder) as a second layer.
    - One interpreter per program runs ALL its tests (per-test and total time limits, enforced by the
      harness and, as the hard bound, by the parent which kills the sandbox).
    - Expected values never enter the sandbox: the child reports each test's stdout or return value
      (encoded by the harness into tagged JSON of plain builtin types: a user object with a rigged
      __eq__ cannot survive it; long number lists as raw array bytes after the record, a long str
      result as its SHA-256), the parent decodes and compares. A program can forge the report
      channel but not the expected values, so a forged report is just another wrong answer. Only
      check(candidate) asserts that are not `assert candidate(...) == literal` (or is_same_list /
      is_same_tree against list_node/tree_node literals) run inside; such tests are marked
      "inside": True and counted in Verdict.inside.
    - Test formats as parsed problems (parse_code_row): LiveCodeBench/DeepCoder, LeetCode check(),
      TACO/APPS inputs/outputs (+fn_name), EvalPlus HumanEval+/MBPP+ (expected outputs from the
      canonical solution, run once in the sandbox and cached; atol as EvalPlus), verl-style rows.
    - The reward: 1 iff every test passes, with a reason: ok, wrong_answer, runtime_error, timeout,
      memory, blocked, no_code_block.

Public API
    parse_code_row(row, where) -> dict           a row of any format above -> problem dict (see below)
    load_code_rows(path) -> list[dict]           a .jsonl/.json file of such rows ("file:line" errors)
    extract_program(response) -> str | None      the last fenced python block
    run_problem(response, problem, **limits) -> Verdict
    score_code_batch(responses, problems, workers=None, **limits) -> list[(reward, reason)]
    score_code_batch_verdicts(...) -> list[Verdict]   (EvalPlus: Verdict.base_reward = base tests only)
    check_sandbox() -> None                      raises SandboxUnavailable naming the fix

Problem dict: {"format": "lcb"|"leetcode"|"taco"|"evalplus", "where": "file:line", "prompt": str,
    "mode": "stdin"|"call", "class_name": "Solution"|None, "fn_name": str|None, "prelude": str,
    "tests": [test, ...], "n_base": int (EvalPlus: tests[:n_base] are base_input), "atol": float,
    "canonical": str|None (EvalPlus program whose outputs are the expected values), "task_id": str|None}
  test: {"stdin": str, "expect": str} | {"args": [...], "expect": value} | {"call": "candidate(...)",
        "expect": value} | {"call": ..., "assert": True, "inside": True}; EvalPlus tests have no
        "expect" until the canonical run fills it (cached per task).

Commands
    python -m pytest -q tests/test_sandbox.py
    python bench/code_speed.py                  # all 164 HumanEval+ problems vs EvalPlus's checker

Deliberately left out
    - seccomp filters and cgroups (memory is bounded by RLIMIT_AS, processes by RLIMIT_NPROC inside
      the pid namespace, time by the parent's kill);
    - third-party packages inside the sandbox (only the standard library: -I -S);
    - official LiveCodeBench private tests (the shared files hold public tests only).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import marshal
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from itertools import compress
from dataclasses import dataclass, field

PER_TEST_S = 6.0
"""Per-test wall-clock limit (LiveCodeBench/DeepCoder use 6 s)."""
TOTAL_S = 60.0
"""Limit for a whole program (all its tests)."""
MEMORY_MB = 1024
"""RLIMIT_AS of the sandboxed interpreter."""
TMPFS_BYTES = 64 << 20
"""Size of the program's own /tmp."""
OUTPUT_CAP = 256 << 20
"""Most bytes the parent reads from a sandbox before killing it."""
REASONS = ("ok", "wrong_answer", "runtime_error", "timeout", "memory", "blocked", "no_code_block")


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create namespaces; the message names the fix."""


# ----------------------------------------------------------------------------------------------------
# The trusted harness: runs first in the sandboxed interpreter, reads the job from stdin, then runs
# the program on every test and streams one JSON record per test (plus the raw bytes of its
# attachments, "__n" their lengths) to the original stdout (kept on a private fd; fd 1 is redirected
# to a file per test). Records carry outputs, never verdicts (except
# for "inside" asserts), so nothing the program does to this process can produce a pass by itself.
# ----------------------------------------------------------------------------------------------------

_HARNESS = r'''
import builtins, io, marshal, os, resource, sys, _signal
job = marshal.loads(sys.stdin.buffer.read())   # from the trusted parent, after this code (see _BOOT)
R = os.dup(1)
_write, _type, _len, _isinst = os.write, type, len, isinstance
try:  # the C JSON encoder without importing json (json and signal import re, enum, ...: ~12 ms a start)
    from _json import make_encoder, encode_basestring_ascii
    def _plain_only(o): raise TypeError(_type(o).__name__)
    _iterenc = make_encoder(None, _plain_only, encode_basestring_ascii, None, ":", ",", False, False, True)
    def _dumps(o): return "".join(_iterenc(o, 0))
    _dumps({"k": [1, 1.5, "x", None, True]})
except (ImportError, TypeError):
    from json import dumps as _dumps
_blobs = []                                      # raw attachments of the record being encoded
def send(rec):
    # one JSON line; "__n": the byte lengths of the raw attachments that follow it (packed number lists)
    global _blobs
    blobs, _blobs = _blobs, []
    if blobs: rec["__n"] = [_len(b) for b in blobs]
    for data in [(_dumps(rec) + "\n").encode("ascii", "replace")] + blobs:
        data = memoryview(data)
        while data:
            data = data[_write(R, data):]
def lim(r, v):
    try: resource.setrlimit(r, (v, v))
    except (ValueError, OSError): pass
lim(resource.RLIMIT_AS, job["mem"]); lim(resource.RLIMIT_CPU, int(job["total"]) + 2)
lim(resource.RLIMIT_FSIZE, job["fsize"]); lim(resource.RLIMIT_NPROC, 16)
lim(resource.RLIMIT_NOFILE, 64); lim(resource.RLIMIT_CORE, 0)
try: sys.set_int_max_str_digits(0)
except AttributeError: pass
here = os.getcwd()
_BLOCK = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
          "os.killpg", "subprocess.", "socket.", "ctypes.", "signal.pthread_kill", "pty.", "os.setuid",
          "os.chroot", "os.putenv", "winreg")
_MODS = {"_posixsubprocess", "subprocess", "_ctypes", "ctypes", "_socket", "socket", "multiprocessing",
         "_multiprocessing", "pty", "_posixshmem", "mmap", "fcntl", "_signal_kill"}
_WFLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_real, _startswith, _exit = os.path.realpath, str.startswith, os._exit
def hook(event, args):
    bad = _startswith(event, _BLOCK) or (event == "import" and args[0] in _MODS)
    if event == "open" and not bad and _isinst(args[0], str):
        mode, flags = args[1], args[2]
        if (_isinst(mode, str) and any(c in mode for c in "wax+")) or (mode is None and flags & _WFLAGS):
            p = _real(args[0])
            bad = not (p == here or _startswith(p, here + "/") or p == "/dev/null")
    if bad:
        try: send({"blocked": event})
        finally: _exit(86)
sys.addaudithook(hook)
class _Timeout(BaseException): pass
def on_alarm(*a): raise _Timeout()
_signal.signal(_signal.SIGALRM, on_alarm)
OUT = os.open(".out", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
_BIG, _FLAT, _INTS, _NUMS, _KIND = 1 << 4096, {str, bool, float, _type(None)}, {int, bool}, {int, float}, {int: 1, float: 0}
_EXACT, _array = 1 << 53, None
def _attach(b):
    _blobs.append(b)
    return _len(_blobs) - 1
def pack(x, ts):
    # a long list of numbers as the raw bytes of a double array, attached after the record (exact, and C
    # speed both ways: no text encoding of millions of numbers)
    global _array
    if _array is None: from array import array as _array
    if ts == {int}:                                  # 64-bit ints; a larger one raises, and goes as text
        try: return {"__qb": _attach(_array("q", x).tobytes())}
        except OverflowError: return None
    try: a = _array("d", x)
    except OverflowError: return None
    if ts == {float}: return {"__fb": _attach(a.tobytes())}
    # ints and floats mixed. A program's output is compared by value (2 == 2.0 in every comparison
    # here), so unless the job asks for exact types (the canonical run, whose values become the
    # expected outputs: EvalPlus looks at their float-ness) it goes as doubles, once no int is past 2**53
    fits = not job["types"] and max(x) <= _EXACT and min(x) >= -_EXACT   # every int is a double exactly
    if not fits and a.tolist() != x: return None         # an int that a double does not hold exactly
    if not job["types"]: return {"__fb": _attach(a.tobytes())}
    return {"__nb": [_attach(a.tobytes()), _attach(bytes(map(_KIND.__getitem__, map(_type, x))))]}
def enc(x, d=0):
    t = _type(x)
    if t is int and (x > _BIG or x < -_BIG): return {"__ih": hex(x)}  # linear, unlike str
    if x is None or t is bool or t is int or t is float or t is str: return x
    if d > 200: return {"__r": "too deep"}
    if t is list:
        ts = set(map(_type, x))                          # C speed: no per-element Python for flat lists
        if _len(x) > 64 and (ts == {int} or (float in ts and ts <= _NUMS)):
            v = pack(x, ts)
            if v is not None: return v
        if ts <= _FLAT or (ts <= _INTS and max(x) <= _BIG and min(x) >= -_BIG): return x
        return [enc(v, d + 1) for v in x]
    if t is tuple: return {"__t": [enc(v, d + 1) for v in x]}
    if t is set or t is frozenset: return {"__s": [enc(v, d + 1) for v in x]}
    if t is dict: return {"__d": [[enc(k, d + 1), enc(v, d + 1)] for k, v in x.items()]}
    if t is bytes: return {"__b": x.hex()}
    if t is complex: return {"__c": [x.real, x.imag]}
    n = t.__name__
    if n == "ListNode":
        vals = []
        while x is not None and _len(vals) < 100000: vals.append(enc(x.val, d + 1)); x = x.next
        return {"__ln": vals}
    if n == "TreeNode":
        vals, q, i = [], [x], 0
        while i < _len(q) and i < 100000:
            node = q[i]; i += 1
            if node is None: vals.append(None); continue
            vals.append(enc(node.val, d + 1)); q.append(node.left); q.append(node.right)
        while vals and vals[-1] is None: vals.pop()
        return {"__tn": vals}
    return {"__r": n}
_DIGEST_MIN, _sha256 = 1 << 16, None
def digest(s):
    # a long str result as its SHA-256 (every comparison of a call's str result is exact equality, which
    # the parent checks against the expected value's digest): JSON-escaping megabytes costs more than the test
    global _sha256
    if _sha256 is None: from hashlib import sha256 as _sha256
    return {"__sh": [_sha256(s.encode("utf-8", "surrogatepass")).hexdigest(), _len(s)]}
def err(e): return _type(e).__name__ + ": " + str(e)[:300]
def timed(k, fn):
    _signal.setitimer(_signal.ITIMER_REAL, job["per_test"])
    try: return fn()
    finally: _signal.setitimer(_signal.ITIMER_REAL, 0)
def run_stdin(code):
    for k, t in enumerate(job["tests"]):
        fd = os.open(".in", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, t["stdin"].encode("utf-8")); os.close(fd)
        fd = os.open(".in", os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
        os.ftruncate(OUT, 0); os.lseek(OUT, 0, 0); os.dup2(OUT, 1)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
        out = sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        rec = {"k": k}
        try:
            timed(k, lambda: exec(code, {"__name__": "__main__", "__builtins__": builtins}))
        except SystemExit as e:
            if e.code not in (None, 0): rec["err"] = "SystemExit: " + str(e.code)[:50]
        except _Timeout: rec["timeout"] = True
        except BaseException as e: rec["err"] = err(e)
        try: out.flush()
        except BaseException: pass
        n = os.lseek(OUT, 0, 1); os.lseek(OUT, 0, 0)
        rec["out"] = os.read(OUT, min(n, job["fsize"])).decode("utf-8", "replace")
        send(rec)
def run_call(code):
    os.dup2(OUT, 1)
    ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        timed(-1, lambda: (exec(job["prelude"], ns), exec(code, ns)))
    except _Timeout: send({"k": -1, "timeout": True}); return
    except BaseException as e: send({"k": -1, "err": err(e)}); return
    cls, name = job["cls"], job["fn"]
    def candidate_of():
        if cls and cls in ns: return getattr(ns[cls](), name)
        if name in ns: return ns[name]
        raise NameError("no function " + repr(name))
    for k, t in enumerate(job["tests"]):
        rec = {"k": k}
        try:
            if "args" in t: v = timed(k, lambda: candidate_of()(*t["args"]))
            else: v = timed(k, lambda: eval(t["call"], dict(ns, candidate=candidate_of())))
            if t.get("assert"): rec["pass"] = v is True or (v is not False and bool(v))
            elif _type(v) is str and _len(v) > _DIGEST_MIN: rec["out"] = digest(v)
            else: rec["out"] = enc(v)
        except _Timeout: rec["timeout"] = True
        except AssertionError: rec["pass"] = False
        except BaseException as e: rec["err"] = err(e)
        send(rec)
try:
    code = compile(job["program"], "solution.py", "exec")
except BaseException as e:
    send({"k": -1, "err": err(e)}); _exit(0)
(run_stdin if job["mode"] == "stdin" else run_call)(code)
_exit(0)
'''

# The interpreter's command line: read the harness's compiled code (marshal, compiled once per parent by
# the same interpreter) from stdin, then run it; the harness then reads the job that follows it.
_BOOT = "import marshal,sys;exec(marshal.loads(sys.stdin.buffer.read({})))"
_HARNESS_CODE: bytes | None = None


def _harness_code() -> bytes:
    global _HARNESS_CODE
    if _HARNESS_CODE is None:
        _HARNESS_CODE = marshal.dumps(compile(_HARNESS, "<harness>", "exec"))
    return _HARNESS_CODE

# ----------------------------------------------------------------------------------------------------
# bubblewrap command line and availability check
# ----------------------------------------------------------------------------------------------------


def _interpreter() -> str:
    """The base interpreter (not the venv's wrapper): the venv and its packages stay invisible."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(exe)


def _bwrap_cmd(interp: str) -> list[str]:
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--uid", "65534",
           "--gid", "65534", "--hostname", "sandbox"]
    # system libraries python links against; symlinked dirs (/lib -> usr/lib) are recreated as links
    for d in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32"):
        if os.path.islink(d):
            cmd += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            cmd += ["--ro-bind", d, d]
    for d in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
                     os.path.dirname(interp)}):
        if d != "/" and not any(d == x or d.startswith(x + "/") for x in ("/usr/lib", "/lib")):
            cmd += ["--ro-bind", d, d]
    cmd += ["--dev", "/dev", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp",
            "--clearenv", "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/tmp",
            "--setenv", "PYTHONHASHSEED", "0", "--"]
    return cmd


_CHECKED: str | None = None
_CHECK_LOCK = threading.Lock()


def check_sandbox() -> None:
    """Raise SandboxUnavailable (naming the fix) unless bwrap can start the interpreter here."""
    global _CHECKED
    with _CHECK_LOCK:
        if _CHECKED == "ok":
            return
        fix = ("code rewards need bubblewrap: install it (Debian/Ubuntu: `apt-get install -y bubblewrap`) "
               "and allow unprivileged user namespaces (`sysctl -w kernel.unprivileged_userns_clone=1`, "
               "`sysctl -w user.max_user_namespaces=15000`; on Ubuntu 24.04 also "
               "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`), or pass weak_sandbox=True "
               "(audit hook and rlimits only; warns every run)")
        if shutil.which("bwrap") is None:
            raise SandboxUnavailable("bwrap not found on PATH; " + fix)
        interp = _interpreter()
        try:
            p = subprocess.run(_bwrap_cmd(interp) + [interp, "-I", "-S", "-c", "print(6*7)"],
                               capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SandboxUnavailable("bwrap did not start within 30 s; " + fix) from None
        if p.returncode != 0 or p.stdout.strip() != b"42":
            raise SandboxUnavailable(f"bwrap cannot create the sandbox (exit {p.returncode}: "
                                     f"{p.stderr.decode(errors='replace').strip()[:300]}); " + fix)
        _CHECKED = "ok"


# ----------------------------------------------------------------------------------------------------
# Running one job: parent side (hard limits, capped reads, no process outlives the call)
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    records: dict = field(default_factory=dict)   # test index -> first record for it (-1: setup)
    blocked: str | None = None
    timed_out: bool = False
    flooded: bool = False
    rc: int | None = None
    stderr: str = ""
    pending: tuple | None = None                  # (record, attachment lengths) while its bytes arrive


_WEAK_SAID = False


def _run_job(job: dict, weak: bool) -> _Run:
    interp = _interpreter()
    code = _harness_code()
    tmp = None
    if weak:
        warnings.warn("sandbox.py: weak_sandbox=True -- programs run WITHOUT bubblewrap (no namespaces; "
                      "audit hook and rlimits only). Do not train on untrusted code like this.",
                      RuntimeWarning, stacklevel=3)
        global _WEAK_SAID
        if not _WEAK_SAID:                 # once per process on stderr (a training step runs hundreds of jobs)
            _WEAK_SAID = True
            print("WARNING: sandbox.py weak sandbox in use (no bubblewrap isolation)", file=sys.stderr)
        tmp = tempfile.mkdtemp(prefix="lad-code-")
        cmd = [interp, "-I", "-S", "-c", _BOOT.format(len(code))]
        kw = dict(cwd=tmp, env={"LANG": "C.UTF-8", "HOME": tmp, "PYTHONHASHSEED": "0"})
    else:
        check_sandbox()
        cmd = _bwrap_cmd(interp) + [interp, "-I", "-S", "-c", _BOOT.format(len(code))]
        kw = dict(env={})
    run = _Run()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True, **kw)
        try:
            _pump(proc, code + marshal.dumps(job), job, run)
        finally:
            _kill(proc)
        run.rc = proc.returncode
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return run


def _pump(proc, payload: bytes, job: dict, run: _Run) -> None:
    """Feed the job, read records until EOF or a limit (per test since the last record, total, size)."""
    def feed():
        try:
            proc.stdin.write(payload)
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
    threading.Thread(target=feed, daemon=True).start()
    t0 = time.monotonic()
    hard_end = t0 + job["total"] + 1.0
    next_due = t0 + job["per_test"] + 2.0          # start-up plus the first test (or the module setup)
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    out_fd, total, scan = proc.stdout.fileno(), 0, 0
    open_fds = set(bufs)
    while open_fds:
        now = time.monotonic()
        wait = min(hard_end, next_due) - now
        if wait <= 0:
            run.timed_out = True
            return
        ready, _, _ = select.select(list(open_fds), [], [], wait)
        for fd in ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                open_fds.discard(fd)
                continue
            total += len(chunk)
            if total > OUTPUT_CAP:
                run.flooded = True
                return
            if fd == out_fd:
                bufs[fd] += chunk
                n, scan = _take_records(bufs[fd], run, scan)
                if n:
                    next_due = time.monotonic() + job["per_test"] + 0.5
            elif len(bufs[fd]) < 65536:
                bufs[fd] += chunk[:65536]
    run.stderr = bufs[proc.stderr.fileno()].decode("utf-8", "replace")


def _take_records(buf: bytearray, run: _Run, scan: int) -> tuple[int, int]:
    """Parse the complete records at the head of `buf` -> (records taken, next scan offset). A record is
    a JSON line, followed by the raw bytes of its attachments when it has "__n" (their lengths); a line
    that is not a JSON object, or has a malformed "__n", is noise written by the program: ignored.
    scan: where the last newline search stopped (a record of many megabytes arrives in many chunks)."""
    n, start = 0, 0
    while True:
        if run.pending is not None:                        # a record whose attachments are still arriving
            rec, lens = run.pending
            if len(buf) - start < sum(lens):
                break
            rec["__blobs"] = []
            for ln in lens:
                rec["__blobs"].append(bytes(buf[start:start + ln]))
                start += ln
            run.pending = None
            n += _keep(rec, run)
            continue
        i = buf.find(b"\n", max(start, scan))
        if i < 0:
            break
        line = bytes(buf[start:i])
        start = i + 1
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        lens = rec.pop("__n", None)
        if lens is None:
            n += _keep(rec, run)
        elif isinstance(lens, list) and all(type(x) is int and x >= 0 for x in lens) and sum(lens) <= OUTPUT_CAP:
            run.pending = (rec, lens)
    del buf[:start]
    return n, (0 if run.pending is not None else len(buf))


def _keep(rec: dict, run: _Run) -> int:
    """Record rec in run (the first record of each test counts) -> 1 if it was a new test record."""
    if "blocked" in rec:
        run.blocked = run.blocked or str(rec["blocked"])[:100]
    elif isinstance(rec.get("k"), int) and rec["k"] not in run.records:
        run.records[rec["k"]] = rec
        return 1
    return 0


def _kill(proc) -> None:
    """SIGKILL the sandbox's process group; bwrap's --die-with-parent and pid namespace take the rest."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for f in (proc.stdin, proc.stdout, proc.stderr):
        try:
            f.close()
        except OSError:
            pass
    proc.wait()


# ----------------------------------------------------------------------------------------------------
# Values: decoding the child's tagged JSON, and the comparisons
# ----------------------------------------------------------------------------------------------------


class _Opaque:
    """A value the harness could not encode as plain data (a user object): equal to nothing."""

    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return False

    __hash__ = object.__hash__

    def __repr__(self):
        return f"<opaque {self.name}>"


_NESTED = (list, dict)


@functools.lru_cache(maxsize=32)
def _sha256_hex(s: str) -> str:
    """SHA-256 of an expected str, cached: G samples of one problem compare with the same expected value
    (one hash per problem, not per sample; ~10 ms per 7 MB). The cached strs are _EXPECTED's own."""
    return hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()


class _Digest:
    """A long str result the harness sent as its SHA-256 (and length): equal to exactly the str with that
    digest. Unforgeable: the expected value never enters the sandbox, so neither does its digest."""

    def __init__(self, hexdigest, n):
        if not (isinstance(hexdigest, str) and len(hexdigest) == 64 and isinstance(n, int)):
            raise TypeError("bad digest record")
        self.hex, self.n = hexdigest, n

    def __eq__(self, other):
        if isinstance(other, _Digest):
            return (self.hex, self.n) == (other.hex, other.n)
        return isinstance(other, str) and len(other) == self.n and _sha256_hex(other) == self.hex

    __hash__ = object.__hash__

    def __repr__(self):
        return f"<str of {self.n} chars, sha256 {self.hex[:12]}>"


def _blob(blobs, i) -> bytes:
    if type(i) is not int or not 0 <= i < len(blobs):
        raise IndexError("no such attachment")
    return blobs[i]


def _unpack(code: str, raw: bytes) -> list:
    from array import array

    a = array(code)
    a.frombytes(raw)                               # ValueError unless a whole number of items
    return a.tolist()


def _dec(x, blobs=()):
    """The harness's tagged JSON value -> the Python value (blobs: the record's raw attachments)."""
    if isinstance(x, list):
        if set(map(type, x)).isdisjoint(_NESTED):   # a flat list of JSON scalars is its own value
            return x
        return [_dec(v, blobs) for v in x]
    if not isinstance(x, dict):
        return x
    (tag, v), = x.items() if len(x) == 1 else (("__r", "bad"),)
    try:
        if tag == "__t":
            return tuple(_dec(e, blobs) for e in v)
        if tag == "__s":
            return set(_dec(e, blobs) for e in v)
        if tag == "__d":
            return {_dec(a, blobs): _dec(b, blobs) for a, b in v}
        if tag == "__ih":
            return int(v, 16)
        if tag == "__fb":                          # doubles, attachment v
            return _unpack("d", _blob(blobs, v))
        if tag == "__qb":                          # 64-bit ints, attachment v
            return _unpack("q", _blob(blobs, v))
        if tag == "__nb":                          # numbers of both kinds: doubles, and a mask of the ints
            vals, mask = _unpack("d", _blob(blobs, v[0])), _blob(blobs, v[1])
            if len(mask) != len(vals):
                raise ValueError("mask length")
            for i in compress(range(len(vals)), mask):
                vals[i] = int(vals[i])
            return vals
        if tag == "__sh":
            return _Digest(*v)
        if tag == "__b":
            return bytes.fromhex(v)
        if tag == "__c":
            return complex(*v)
        if tag in ("__ln", "__tn"):
            return (tag, tuple(_freeze(_dec(e, blobs)) for e in v))
    except (TypeError, ValueError, OverflowError, IndexError):
        pass
    return _Opaque(str(v)[:50])


def _freeze(v):
    return tuple(_freeze(e) for e in v) if isinstance(v, list) else v


def _tree_levels(values):
    """tree_node(values) then the harness's level-order serialisation, done in the parent."""
    if not values:
        return None
    nodes = [[values[0], None, None]]
    q, i = [nodes[0]], 1
    head = 0
    while head < len(q):
        node = q[head]
        head += 1
        for side in (1, 2):
            if i < len(values) and values[i] is not None:
                child = [values[i], None, None]
                node[side] = child
                q.append(child)
            i += 1
    out, q, j = [], [nodes[0]], 0
    while j < len(q):
        n = q[j]
        j += 1
        if n is None:
            out.append(None)
            continue
        out.append(n[0])
        q += [n[1], n[2]]
    while out and out[-1] is None:
        out.pop()
    return ("__tn", tuple(_freeze(v) for v in out))


def _jsonish(v):
    """Tuples -> lists (a JSON round trip), for formats whose expected values are JSON."""
    if isinstance(v, (list, tuple)):
        return [_jsonish(e) for e in v]
    if isinstance(v, dict):
        return {k: _jsonish(e) for k, e in v.items()}
    return v


def _close(a, b) -> bool:
    """Equality after JSON normalisation; floats within 1e-9 relative (int vs float allowed)."""
    if isinstance(a, _Digest):
        return a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _stdout_equal(got: str, want: str) -> bool:
    """Lines with trailing whitespace and trailing blank lines ignored; else tokens, numbers to 1e-6."""
    def lines(s):
        ls = [ln.rstrip() for ln in s.replace("\r\n", "\n").split("\n")]
        while ls and not ls[-1]:
            ls.pop()
        return ls
    if lines(got) == lines(want):
        return True
    g, w = got.split(), want.split()
    if len(g) != len(w):
        return False
    for a, b in zip(g, w):
        if a == b:
            continue
        try:
            fa, fb = float(a), float(b)
        except ValueError:
            return False
        if not math.isclose(fa, fb, rel_tol=1e-6, abs_tol=1e-6):
            return False
    return True


def _is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(i, float) for i in x)


def _evalplus_equal(out, exp, atol: float, inp, entry: str) -> bool:
    """EvalPlus's comparison (evalplus.eval.unsafe_execute): exact, else allclose(rtol 1e-7, atol)."""
    if entry == "find_zero":  # HumanEval/32's special oracle: a root of the polynomial, within atol
        try:
            return abs(sum(c * math.pow(out, i) for i, c in enumerate(inp[0]))) <= atol
        except (TypeError, ValueError, OverflowError):
            return False
    if out == exp:
        return True
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if atol == 0 or type(out) is not type(exp):
        return False
    xs, ys = (list(out), list(exp)) if isinstance(exp, (list, tuple)) else ([out], [exp])
    if len(xs) != len(ys):
        return False
    for a, b in zip(xs, ys):
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return False
        if math.isnan(a) or math.isnan(b):
            return False
        if abs(a - b) > atol + 1e-7 * abs(b):
            return False
    return True


# ----------------------------------------------------------------------------------------------------
# Parsing rows: each format -> one problem dict
# ----------------------------------------------------------------------------------------------------

LEETCODE_PRELUDE = """\
import collections, heapq, bisect, math, itertools, functools, string, operator, random, re, datetime
from typing import *
from functools import *
from collections import *
from itertools import *
from heapq import *
from bisect import *
from string import *
from operator import *
from math import *
inf = float('inf')

class ListNode:
    def __init__(self, val=0, next=None):
        self.val = val
        self.next = next

class TreeNode:
    def __init__(self, val=0, left=None, right=None):
        self.val = val
        self.left = left
        self.right = right

def list_node(values):
    if not values:
        return None
    head = ListNode(values[0]); p = head
    for v in values[1:]:
        p.next = ListNode(v); p = p.next
    return head

def tree_node(values):
    if not values:
        return None
    root = TreeNode(values[0]); i = 1; queue = deque([root])
    while queue:
        node = queue.popleft()
        if i < len(values) and values[i] is not None:
            node.left = TreeNode(values[i]); queue.append(node.left)
        i += 1
        if i < len(values) and values[i] is not None:
            node.right = TreeNode(values[i]); queue.append(node.right)
        i += 1
    return root

def is_same_list(p1, p2):
    while p1 is not None and p2 is not None:
        if p1.val != p2.val:
            return False
        p1, p2 = p1.next, p2.next
    return p1 is None and p2 is None

def is_same_tree(p, q):
    if not p and not q:
        return True
    if not p or not q or p.val != q.val:
        return False
    return is_same_tree(p.left, q.left) and is_same_tree(p.right, q.right)
"""


class RowError(ValueError):
    """A malformed row or test; the message starts with file:line."""


def _starter_names(starter: str):
    """(class_name, method_name) of a LeetCode-style starter (often not valid Python: no body)."""
    cls = re.search(r"^\s*class\s+(\w+)", starter, re.M)
    fns = re.findall(r"^\s*def\s+(\w+)\s*\(", starter, re.M)
    fns = [f for f in fns if f != "__init__"]
    return (cls.group(1) if cls else None), (fns[0] if fns else None)


def _prompt_text(row) -> str:
    p = row.get("prompt", row.get("problem", row.get("question")))
    if isinstance(p, list):  # chat messages: the last user turn
        users = [m.get("content", "") for m in p if isinstance(m, dict) and m.get("role") == "user"]
        p = users[-1] if users else ""
    if not isinstance(p, str):
        raise TypeError("no prompt text (expected 'problem', 'prompt' or 'question')")
    return p


def _problem(fmt, where, prompt, mode, tests, cls=None, fn=None, prelude="", **kw):
    d = {"format": fmt, "where": where, "prompt": prompt, "mode": mode, "class_name": cls, "fn_name": fn,
         "prelude": prelude, "tests": tests, "n_base": len(tests), "atol": 0.0, "canonical": None,
         "task_id": None}
    d.update(kw)
    if not tests:
        raise ValueError("no tests")
    return d


def _parse_lcb(row, where, tests):
    prompt = _prompt_text(row)
    starter = row.get("starter_code") or ""
    out = []
    kinds = {t.get("testtype") for t in tests if isinstance(t, dict)}
    for k, t in enumerate(tests):
        if not isinstance(t, dict) or not isinstance(t.get("input"), str) or not isinstance(t.get("output"), str):
            raise ValueError(f"test {k}: needs string 'input' and 'output'")
        if t.get("testtype", "stdin") == "stdin":
            out.append({"stdin": t["input"], "expect": t["output"]})
        elif t["testtype"] == "functional":
            try:
                args = [json.loads(ln) for ln in t["input"].split("\n") if ln.strip()]
                out.append({"args": args, "expect": json.loads(t["output"])})
            except ValueError as e:
                raise ValueError(f"test {k}: functional input/output is not JSON ({e})") from None
        else:
            raise ValueError(f"test {k}: unknown testtype {t.get('testtype')!r}")
    if len(kinds) > 1:
        raise ValueError(f"mixed testtypes {sorted(map(str, kinds))}")
    if "functional" in kinds:
        cls, fn = _starter_names(starter)
        if fn is None:
            raise ValueError("functional tests but no method in starter_code")
        return _problem("lcb", where, prompt, "call", out, cls, fn, LEETCODE_PRELUDE)
    return _problem("lcb", where, prompt, "stdin", out)


def _leetcode_tests(src: str):
    """check(candidate) source -> (tests, method name); asserts of the usual forms become parent-side."""
    tree = ast.parse(src)
    fn = None
    for node in tree.body:  # check(Solution().method)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and node.value.args:
            a = node.value.args[0]
            if isinstance(a, ast.Attribute):
                fn = a.attr
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks or fn is None:
        raise ValueError("tests.functional needs `def check(candidate)` and `check(Solution().method)`")
    out = []
    for node in ast.walk(checks[0]):
        if not isinstance(node, ast.Assert):
            continue
        out.append(_assert_test(node.test))
    return out, fn


def _assert_test(e):
    def is_cand(c):
        return isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "candidate"
    if isinstance(e, ast.Compare) and len(e.ops) == 1 and isinstance(e.ops[0], ast.Eq) and is_cand(e.left):
        try:
            return {"call": ast.unparse(e.left), "expect": ast.literal_eval(e.comparators[0]), "lit": True}
        except (ValueError, SyntaxError, TypeError):
            pass
    if (isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id in ("is_same_list", "is_same_tree")
            and len(e.args) == 2 and is_cand(e.args[0]) and isinstance(e.args[1], ast.Call)
            and isinstance(e.args[1].func, ast.Name) and e.args[1].func.id in ("list_node", "tree_node")
            and len(e.args[1].args) == 1):
        try:
            vals = ast.literal_eval(e.args[1].args[0])
            if e.args[1].func.id == "list_node":
                exp = ("__ln", tuple(_freeze(v) for v in vals)) if vals else None
            else:
                exp = _tree_levels(vals)
            return {"call": ast.unparse(e.args[0]), "expect": exp, "lit": True}
        except (ValueError, SyntaxError, TypeError):
            pass
    return {"call": ast.unparse(e), "assert": True, "inside": True}


def _parse_leetcode(row, where, tests):
    prompt = _prompt_text(row)
    src = tests["functional"]
    if not isinstance(src, str):
        raise ValueError("tests.functional must be a string")
    try:
        out, fn = _leetcode_tests(src)
    except SyntaxError as e:
        raise ValueError(f"tests.functional line {e.lineno}: {e.msg}") from None
    cls, sfn = _starter_names(row.get("starter_code") or prompt.split("```python")[-1])
    return _problem("leetcode", where, prompt, "call", out, cls or "Solution", fn, LEETCODE_PRELUDE)


def _parse_taco(row, where, io_):
    prompt = _prompt_text(row)
    ins, outs = io_.get("inputs"), io_.get("outputs")
    if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
        raise ValueError("'inputs' and 'outputs' must be lists of the same length")
    fn = io_.get("fn_name") or row.get("fn_name")
    out = []
    if fn:
        for k, (i, o) in enumerate(zip(ins, outs)):
            if not isinstance(i, list):
                raise ValueError(f"test {k}: call-based input must be a list of arguments")
            out.append({"args": i, "expect": o, "taco": True})
        cls, _ = _starter_names(row.get("starter_code") or "")
        return _problem("taco", where, prompt, "call", out, cls, fn, LEETCODE_PRELUDE)
    for k, (i, o) in enumerate(zip(ins, outs)):
        i = "\n".join(map(str, i)) if isinstance(i, list) else i
        o = "\n".join(map(str, o)) if isinstance(o, list) else o
        if not isinstance(i, str) or not isinstance(o, str):
            raise ValueError(f"test {k}: stdin input/output must be strings")
        out.append({"stdin": i, "expect": o})
    return _problem("taco", where, prompt, "stdin", out)


def _parse_evalplus(row, where):
    for k in ("prompt", "entry_point", "canonical_solution", "base_input"):
        if k not in row:
            raise ValueError(f"EvalPlus row needs {k!r}")
    def inputs(v, name):
        v = json.loads(v) if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(a, list) for a in v):
            raise ValueError(f"{name} must be a list of argument lists")
        return v
    base, plus = inputs(row["base_input"], "base_input"), inputs(row.get("plus_input") or [], "plus_input")
    tests = [{"args": a} for a in base + plus]
    atol = float(row.get("atol") or 0)
    return _problem("evalplus", where, row["prompt"], "call", tests, None, row["entry_point"], "",
                    n_base=len(base), atol=atol, canonical=row["prompt"] + row["canonical_solution"],
                    task_id=row.get("task_id"))


def parse_code_row(row, where: str = "<row>") -> dict:
    """One data row of any supported format -> a problem dict (module docstring); RowError names `where`."""
    try:
        if not isinstance(row, dict):
            raise TypeError(f"row must be a JSON object, got {type(row).__name__}")
        if "reward_model" in row:  # verl: prompt messages + reward_model.ground_truth holding the tests
            gt = (row.get("reward_model") or {}).get("ground_truth")
            gt = json.loads(gt) if isinstance(gt, str) else gt
            extra = row.get("extra_info") or {}
            inner = {"prompt": row.get("prompt"), "tests": gt,
                     "starter_code": extra.get("starter_code", row.get("starter_code", ""))}
            if isinstance(gt, dict) and "inputs" in gt:
                inner = {"prompt": row.get("prompt"), "input_output": gt, "starter_code": inner["starter_code"]}
            return parse_code_row(inner, where)
        if "entry_point" in row and "base_input" in row:
            return _parse_evalplus(row, where)
        tests = row.get("tests", row.get("input_output"))
        if isinstance(tests, str):
            tests = json.loads(tests)
        if tests is None and "inputs" in row:
            tests = row
        if isinstance(tests, list):
            return _parse_lcb(row, where, tests)
        if isinstance(tests, dict) and "functional" in tests:
            return _parse_leetcode(row, where, tests)
        if isinstance(tests, dict) and "inputs" in tests:
            return _parse_taco(row, where, tests)
        raise ValueError("no tests recognised (expected LiveCodeBench 'tests' list, LeetCode "
                         "{'functional': ...}, TACO {'inputs','outputs'}, EvalPlus or verl reward_model)")
    except RowError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise RowError(f"{where}: {e}") from None


def load_code_rows(path: str) -> list[dict]:
    """Problems of a .jsonl (one row a line) or .json (array) file; errors name path:line."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        rows = json.loads(text)
        return [parse_code_row(r, f"{path}:row {i}") for i, r in enumerate(rows)]
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise RowError(f"{path}:{i}: not JSON ({e})") from None
        out.append(parse_code_row(row, f"{path}:{i}"))
    return out


# ----------------------------------------------------------------------------------------------------
# Responses -> programs -> verdicts
# ----------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*(python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)


def extract_program(response: str) -> str | None:
    """The last fenced python block (DeepCoder's rule); unlabelled ``` blocks count too."""
    blocks = _FENCE.findall(response or "")
    return blocks[-1][1] if blocks else None


@dataclass
class Verdict:
    reward: float
    reason: str
    detail: str = ""
    passed: int = 0
    total: int = 0
    base_reward: float | None = None   # EvalPlus: all base tests (HumanEval) passed
    inside: int = 0                    # tests judged inside the sandbox (forgeable asserts)


_EXPECTED: dict = {}
_EXPECTED_LOCK = threading.Lock()


def _job(problem, program, per_test, total, memory_mb, types=False):
    """The harness's job. types=True: keep ints and floats apart in packed number lists (the canonical
    run's outputs are the expected values, and EvalPlus's tolerance depends on their float-ness)."""
    tests = [{k: v for k, v in t.items() if k in ("stdin", "args", "call", "assert")} for t in problem["tests"]]
    return {"mode": problem["mode"], "program": program, "prelude": problem["prelude"], "tests": tests,
            "cls": problem["class_name"], "fn": problem["fn_name"], "per_test": per_test, "total": total,
            "mem": memory_mb << 20, "fsize": 16 << 20, "types": types}


def _expected(problem, per_test, total, memory_mb, weak):
    """EvalPlus: outputs of the canonical solution on every input, run once (sandboxed) and cached."""
    key = (problem.get("task_id"), hash(problem["canonical"]), len(problem["tests"]))
    with _EXPECTED_LOCK:
        if key in _EXPECTED:
            return _EXPECTED[key]
    run = _run_job(_job(problem, problem["canonical"], per_test, max(total, 120.0), memory_mb, types=True), weak)
    exp = []
    for k in range(len(problem["tests"])):
        rec = run.records.get(k)
        if rec is None or "out" not in rec:
            raise RuntimeError(f"{problem['where']}: canonical solution failed on input {k}: {rec}")
        exp.append(_dec(rec["out"], rec.get("__blobs", ())))
    with _EXPECTED_LOCK:
        _EXPECTED[key] = exp
    return exp


def _failure(run: _Run, rec) -> tuple[str, str]:
    """(reason, detail) for a test without a good output record."""
    if run.blocked:
        return "blocked", run.blocked
    if rec is not None and rec.get("timeout"):
        return "timeout", "per-test limit"
    if rec is not None and "err" in rec:
        e = str(rec["err"])
        return ("memory" if e.startswith("MemoryError") else "runtime_error"), e[:300]
    if run.timed_out:
        return "timeout", "killed by the parent"
    if run.flooded:
        return "runtime_error", "output over the cap"
    if run.rc in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU):
        return "timeout", f"cpu limit (exit {run.rc})"
    if "MemoryError" in run.stderr or "Cannot allocate" in run.stderr:
        return "memory", run.stderr[-200:]
    return "runtime_error", f"no result (exit {run.rc}): {run.stderr.strip()[-200:]}"


def _compare(problem, t, rec, exp) -> bool:
    if problem["mode"] == "stdin":
        return _stdout_equal(rec["out"], t["expect"])
    if t.get("assert"):
        return rec.get("pass") is True
    if "out" not in rec:
        return False
    out = _dec(rec["out"], rec.get("__blobs", ()))
    if problem["format"] == "evalplus":
        return _evalplus_equal(out, exp, problem["atol"], t["args"], problem["fn_name"])
    if t.get("lit"):  # LeetCode `candidate(...) == literal`: Python == on plain values, as the assert
        return out == exp
    if t.get("taco") and isinstance(exp, list) and exp and _close(_jsonish(out), _jsonish(exp[0])):
        return True  # TACO call-based outputs are often wrapped in a one-element list
    return _close(_jsonish(out), _jsonish(exp))


def run_problem(response: str, problem: dict, *, per_test: float = PER_TEST_S, total: float = TOTAL_S,
                memory_mb: int = MEMORY_MB, weak_sandbox: bool = False) -> Verdict:
    """Verdict of one response on one problem (reward 1 iff every test passes)."""
    program = extract_program(response)
    n = len(problem["tests"])
    if program is None:
        return Verdict(0.0, "no_code_block", total=n, base_reward=0.0 if problem["format"] == "evalplus" else None)
    if problem["format"] == "evalplus":
        exps = _expected(problem, per_test, total, memory_mb, weak_sandbox)
        # the prompt's imports (e.g. `from typing import List`), as EvalPlus's sanitizer keeps them
        imports = "".join(ln + "\n" for ln in problem["prompt"].splitlines() if ln.startswith(("import ", "from ")))
        program = imports + program
    else:
        exps = [t.get("expect") for t in problem["tests"]]
    run = _run_job(_job(problem, program, per_test, total, memory_mb), weak_sandbox)
    first, passed, base_ok = None, 0, True
    for k, t in enumerate(problem["tests"]):
        rec = run.records.get(k)
        if rec is not None and ("out" in rec or "pass" in rec) and not rec.get("timeout") and "err" not in rec:
            ok = _compare(problem, t, rec, exps[k])
            why = None if ok else ("wrong_answer", f"test {k}")
        else:
            ok = False
            why = _failure(run, rec if rec is not None else run.records.get(-1))
        passed += ok
        if not ok:
            first = first or why
            if k < problem["n_base"]:
                base_ok = False
    inside = sum(1 for t in problem["tests"] if t.get("inside"))
    base = (1.0 if base_ok else 0.0) if problem["format"] == "evalplus" else None
    if first is None:
        return Verdict(1.0, "ok", "", passed, n, base, inside)
    return Verdict(0.0, first[0], first[1], passed, n, base, inside)


def _default_workers() -> int:
    from common import cores_per_rank

    return cores_per_rank()


def score_code_batch_verdicts(responses, problems, workers: int | None = None, **limits) -> list[Verdict]:
    """Verdicts of many (response, problem) pairs: parallel sandboxes, threads waiting on subprocesses."""
    responses, problems = list(responses), list(problems)
    if len(responses) != len(problems):
        raise ValueError(f"{len(responses)} responses but {len(problems)} problems")
    if not limits.get("weak_sandbox"):
        check_sandbox()  # refuse before starting anything
    n = workers or _default_workers()
    # EvalPlus expected outputs first, once per task (not once per response)
    seen = {}
    for p in problems:
        if p["format"] == "evalplus":
            seen[id(p)] = p
    lim = {k: v for k, v in limits.items() if k in ("per_test", "total", "memory_mb", "weak_sandbox")}
    with ThreadPoolExecutor(max_workers=n) as ex:
        list(ex.map(lambda p: _expected(p, lim.get("per_test", PER_TEST_S), lim.get("total", TOTAL_S),
                                        lim.get("memory_mb", MEMORY_MB), lim.get("weak_sandbox", False)),
                    seen.values()))
        return list(ex.map(lambda rp: run_problem(rp[0], rp[1], **lim), zip(responses, problems)))


def score_code_batch(responses, problems, workers: int | None = None, **limits) -> list[tuple[float, str]]:
    """[(reward, reason)] of many (response, problem) pairs; no sandbox outlives the call."""
    return [(v.reward, v.reason) for v in score_code_batch_verdicts(responses, problems, workers, **limits)]
