"""sandbox.py -- code rewards: model-written programs run under bubblewrap + seccomp, tests judged outside.

What it implements (docs/sandbox.md lists every limit with the layer that enforces it)
    - A real OS sandbox (bubblewrap): new pid, network, IPC, UTS and mount namespaces, killed with its
      parent, in its own session; it sees only the base interpreter's prefix and the system libraries
      (read-only), /dev/null-like devices, and a size-capped tmpfs /tmp (its folder, the only writable
      place); the environment is cleared. A seccomp filter (libseccomp, through pyseccomp) refuses every
      way to create a process (fork, vfork, clone without CLONE_THREAD, clone3), namespaces and mounts,
      keyrings (keyctl, add_key, request_key), memory that RLIMIT_AS does not count (memfd, SysV shm and
      message queues, POSIX mqueues), sockets other than AF_UNIX, ptrace and the other kernel interfaces
      a judged program never needs. With fork refused the sandbox is one process, so RLIMIT_AS bounds
      its memory and RLIMIT_NPROC its threads.
    - The program runs as an unprivileged host identity, so those limits are real: when the trainer is
      root, bwrap runs privileged (no user namespace) and the harness drops to a uid/gid of its own
      (UID_BASE + bwrap's host pid: unique among live sandboxes, so RLIMIT_NPROC counts only this
      sandbox's threads); otherwise bwrap's unprivileged user namespace maps uid 65534 to the trainer's
      own uid. check_sandbox() picks the first mode that works here (sandbox_mode() names it).
    - Inside, a trusted harness sets the resource limits and an audit hook (process creation, sockets,
      ctypes, introspection of its own state, writes outside the folder) as a second layer; with
      weak_sandbox=True (no bubblewrap) the harness installs the same seccomp filter itself (and also
      refuses exec), but nothing isolates the file system: see docs/sandbox.md for what that mode does
      not protect.
    - One interpreter per program runs ALL its tests (per-test and total time limits, enforced by the
      harness and, as the hard bound, by the parent which kills the sandbox).
    - Every verdict is computed by the parent: the child reports each test's stdout (raw bytes) or the
      values of its candidate calls (tagged JSON of plain builtin types: a user object with a rigged
      __eq__ cannot survive it; long number lists as raw array bytes after the record, a long str result
      as its SHA-256), and the parent compares them with expected values that never enter the sandbox.
      LeetCode check() asserts of any form are dataset code: the child evaluates only their
      candidate(...) calls, the parent evaluates the assert on the returned values. A program can forge
      the report channel, but a forged report is just another answer.
    - The parent's cost is bounded by the limits, not by the program: records are read with a size,
      nesting and decoded-size cap each, records for tests that do not exist are dropped, each record
      is judged as it arrives and then dropped, and the deadline is checked while reading; anything
      malformed is that sample's runtime_error, never an exception.
    - Test formats as parsed problems (parse_code_row): LiveCodeBench/DeepCoder, LeetCode check(),
      TACO/APPS inputs/outputs (+fn_name), EvalPlus HumanEval+/MBPP+ (inputs deserialised and outputs
      compared with the evalplus package's own code; expected outputs from the canonical solution, run
      once in the sandbox and cached), verl-style rows. Each format is judged as its own grader does
      (docs/sandbox.md, "Comparison rules").
    - The reward: 1 iff every test passes, with a reason from REASONS.

Public API
    parse_code_row(row, where) -> dict           a row of any format above -> problem dict (see below)
    load_code_rows(path) -> list[dict]           a .jsonl/.json file of such rows ("file:line" errors)
    extract_program(response) -> str | None      the last fenced python block
    run_problem(response, problem, **limits) -> Verdict
    score_code_batch(responses, problems, workers=None, **limits) -> list[(reward, reason)]
    score_code_batch_verdicts(...) -> list[Verdict]   (EvalPlus: Verdict.base_reward = base tests only)
    check_sandbox() -> None                      raises SandboxUnavailable naming the fix
    sandbox_mode() -> str                        "root" or "userns" (after check_sandbox), "weak"
    A problem whose reference solution fails (EvalPlus canonical) gives every sample reason
    "bad_problem" with a detail starting "file:line: "; evaluations exclude such problems.

Problem dict: {"format": "lcb"|"leetcode"|"taco"|"evalplus", "where": "file:line", "prompt": str,
    "mode": "stdin"|"call", "class_name": "Solution"|None, "fn_name": str|None, "prelude": str,
    "tests": [test, ...], "n_base": int (EvalPlus: tests[:n_base] are base_input), "atol": float,
    "canonical": str|None (EvalPlus program whose outputs are the expected values), "task_id": str|None}
  test: {"stdin": str, "expect": str} | {"args": [...], "expect": value} |
        {"calls": ["candidate(...)", ...], "expect": value} (LeetCode; "judge": a parent-side expression
        over the calls' values when the assert is not `candidate(...) == literal`); EvalPlus tests have
        no "expect" until the canonical run fills it (cached per task).

Commands
    python -m pytest -q tests/test_sandbox.py
    python bench/code_speed.py                  # all 164 HumanEval+ problems vs EvalPlus's checker
    python bench/code_hostile.py                # hostile programs in a batch of ordinary ones

Deliberately left out
    - cgroups: with fork refused the sandbox is one process whose memory RLIMIT_AS bounds (plus the
      capped tmpfs), and the unprivileged identity makes RLIMIT_NPROC count its threads; a cgroup would
      need a writable hierarchy, which a user's container rarely has (docs/sandbox.md);
    - third-party packages inside the sandbox (only the standard library: -I -S);
    - official LiveCodeBench private tests (the shared files hold public tests only).
"""

from __future__ import annotations

import ast
import errno
import functools
import hashlib
import json
import marshal
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from itertools import compress

import numpy as np
from evalplus.eval import is_floats
from evalplus.eval._special_oracle import (MBPP_OUTPUT_NOT_NONE_TASKS, MBPP_OUTPUT_SET_EQ_TASKS,
                                           _digit_distance_nums, _poly, _surface_Area)

from common import cores_per_rank

try:  # its import loads libseccomp.so.2; without it only check_sandbox() fails (naming the fix)
    import pyseccomp
    _SECCOMP_MISSING = ""
except (ImportError, RuntimeError, OSError) as _e:
    pyseccomp, _SECCOMP_MISSING = None, f"{type(_e).__name__}: {_e}"

PER_TEST_S = 6.0
"""Per-test wall-clock limit (LiveCodeBench/DeepCoder use 6 s)."""
TOTAL_S = 60.0
"""Limit for a whole program (all its tests)."""
MEMORY_MB = 1024
"""RLIMIT_AS of the sandboxed interpreter (the whole sandbox: fork is refused)."""
TMPFS_BYTES = 64 << 20
"""Size of the program's own /tmp, the sandbox's only writable mount."""
OUTPUT_CAP = 256 << 20
"""Most bytes the parent reads from a sandbox before killing it (a time bound: records are not kept)."""
STDOUT_CAP = 8 << 20
"""RLIMIT_FSIZE inside: the most stdout one test can produce (and the largest file the program writes)."""
RECORD_CAP = STDOUT_CAP + (1 << 20)
"""Most bytes of one record (its JSON line plus attachments): the parent's read buffer."""
DECODE_CAP = 40 << 20
"""Most bytes one record may cost the parent once decoded (estimated from its shape before decoding:
8 per JSON byte + 80 per JSON node + 4 per attachment byte)."""
DEPTH_CAP = 100
"""Deepest nesting of a reported value (deeper ones are cut off inside and equal to nothing)."""
THREADS = 16
"""RLIMIT_NPROC inside: threads of the one sandboxed process."""
UID_BASE = 2_000_000_000
"""Root trainers: a program runs as uid/gid UID_BASE + bwrap's host pid (docs/sandbox.md)."""
REASONS = ("ok", "wrong_answer", "runtime_error", "timeout", "memory", "blocked", "no_code_block",
           "bad_problem", "sandbox_error")
"""ok: all tests pass; wrong_answer: an output differs; runtime_error: an exception, exit, a malformed or
oversized report; timeout; memory; blocked: the audit hook stopped a forbidden operation; no_code_block;
bad_problem: the problem's reference solution fails (detail: "file:line: why"; not the program's fault);
sandbox_error: the sandbox itself could not run (detail says why; not the program's fault)."""


class SandboxUnavailable(RuntimeError):
    """bwrap or libseccomp is missing, or cannot create the sandbox; the message names the fix."""


# ----------------------------------------------------------------------------------------------------
# The trusted harness: runs first in the sandboxed interpreter (in a private globals dict, not
# __main__'s), reads the job from stdin, drops to its uid (root trainers), sets the limits (and, without
# bwrap, the seccomp filter), installs the audit hook, then runs the program on every test and streams
# one JSON record per test (plus the raw bytes of its attachments, "__n" their lengths) to the original
# stdout (kept on a private fd; fd 1 is redirected to a file per test). Records carry outputs, never
# verdicts, so nothing the program does to this process can produce a pass by itself.
# ----------------------------------------------------------------------------------------------------

_HARNESS = r'''
import builtins, io, marshal, os, posix, resource, sys, _signal
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
    # one JSON line; "__n": the byte lengths of the raw attachments that follow it
    global _blobs
    blobs, _blobs = _blobs, []
    if blobs: rec["__n"] = [_len(b) for b in blobs]
    for data in [(_dumps(rec) + "\n").encode("ascii", "replace")] + blobs:
        data = memoryview(data)
        while data:
            data = data[_write(R, data):]
def fatal(why):
    send({"k": -1, "fatal": why}); os._exit(0)
if job["bpf"]:
    # no bwrap: install the seccomp filter here (no_new_privs first, as the kernel requires)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        prog = ctypes.create_string_buffer(job["bpf"], _len(job["bpf"]))
        class _Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        fp = _Fprog(_len(job["bpf"]) // 8, ctypes.addressof(prog))
        if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fp), 0, 0) != 0:
            fatal("seccomp: errno %d" % ctypes.get_errno())
        del libc, prog, fp, ctypes
        for m in [m for m in sys.modules if "ctypes" in m]: del sys.modules[m]   # a re-import meets the hook
    except (ImportError, OSError, AttributeError) as e: fatal("seccomp: %s" % e)
if job["uid"]:
    # root trainer, bwrap without a user namespace: become a host identity of our own before anything
    # else runs (the parent gave this process CAP_SETUID/CAP_SETGID only; setresuid clears them)
    try:
        os.setgroups([]); os.setresgid(job["uid"], job["uid"], job["uid"]); os.setresuid(job["uid"], job["uid"], job["uid"])
    except OSError as e: fatal("cannot drop to uid %d: %s" % (job["uid"], e))
    if os.getresuid() != (job["uid"],) * 3 or os.getgroups(): fatal("uid drop did not hold")
def lim(r, v):
    try: resource.setrlimit(r, (v, v))
    except (ValueError, OSError): pass
lim(resource.RLIMIT_AS, job["mem"]); lim(resource.RLIMIT_CPU, int(job["total"]) + 2)
lim(resource.RLIMIT_FSIZE, job["fsize"]); lim(resource.RLIMIT_NPROC, job["nproc"])
lim(resource.RLIMIT_NOFILE, 64); lim(resource.RLIMIT_CORE, 0)
try: sys.set_int_max_str_digits(0)
except AttributeError: pass
def _make_hook(here, exit_, send_, str_, bytes_, int_, isinst, startswith, lstat, readlink, getcwd, islnk, any_,
               len_, oserror):
    # Everything the hook uses is bound here, once: C functions and immutable values, so that a program
    # that patches builtins, os, os.path or this harness's globals cannot change what the hook does;
    # the hook object itself is referenced by nothing a program can reach (gc introspection is blocked).
    block = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
             "os.killpg", "subprocess.", "socket.", "ctypes.", "signal.pthread_kill", "pty.", "os.setuid",
             "os.chroot", "os.putenv", "os.unsetenv", "winreg", "gc.get_", "sys.settrace", "sys.setprofile",
             "sys._current_frames", "mmap.", "os.memfd_create")
    mods = frozenset(("_posixsubprocess", "subprocess", "_ctypes", "ctypes", "_socket", "socket",
                      "multiprocessing", "_multiprocessing", "pty", "_posixshmem", "mmap", "fcntl"))
    # events that change the file system: (event, index of the path argument, index of its dir_fd or -1)
    paths = {"os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
             "os.mkdir": ((0, 2),), "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.chmod": ((0, 2),),
             "os.chown": ((0, 3),), "os.truncate": ((0, -1),), "os.utime": ((0, 3),), "os.mkfifo": ((0, 2),),
             "os.mknod": ((0, 3),), "shutil.rmtree": ((0, 1),), "os.chflags": ((0, -1),),
             "os.lchflags": ((0, -1),), "os.setxattr": ((0, -1),), "os.removexattr": ((0, -1),)}
    wflags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    def real(p):
        # realpath from the captured C functions; None when it cannot be resolved safely
        if isinst(p, bytes_):
            p = p.decode("utf-8", "surrogateescape")
        if not isinst(p, str_):
            return None
        if not startswith(p, "/"):
            p = getcwd() + "/" + p
        parts, out, hops = p.split("/"), [], 0
        while parts:
            c = parts.pop(0)
            if c in ("", "."):
                continue
            if c == "..":
                out = out[:-1]
                continue
            cur = "/" + "/".join(out + [c])
            try:
                link = islnk(lstat(cur).st_mode)
            except oserror:
                link = False
            if link:
                hops += 1
                if hops > 40:
                    return None
                t = readlink(cur)
                parts = t.split("/") + parts
                if startswith(t, "/"):
                    out = []
                continue
            out.append(c)
        return "/" + "/".join(out)
    def inside(p, dir_fd):
        if dir_fd is not None and dir_fd != -100:    # relative to a directory fd: not resolvable here
            return False
        r = real(p)
        return r is not None and (r == here or startswith(r, here + "/") or r == "/dev/null")
    def hook(event, args):
        # an import is judged by the module's last name and by its file, whatever name it is imported as
        bad = startswith(event, block) or (event == "import" and (str_(args[0]).rsplit(".", 1)[-1] in mods or
              (isinst(args[1], str_) and args[1].rsplit("/", 1)[-1].split(".", 1)[0] in mods)))
        if not bad and event == "open":
            p, mode, flags = args
            if (isinst(mode, str_) and any_(c in mode for c in "wax+")) or (mode is None and flags & wflags):
                # an fd was opened through here already; os.open (mode None) may carry a dir_fd that the
                # event does not show, so it must name an absolute path
                if not isinst(p, int_):
                    bad = (mode is None and not (isinst(p, str_) and startswith(p, "/"))) or not inside(p, None)
        elif not bad and event in paths:
            for i, j in paths[event]:
                p = args[i] if i < len_(args) else None
                if not (isinst(p, int_) and event == "os.truncate") and not inside(p, args[j] if 0 <= j < len_(args) else None):
                    bad = True
        if bad:
            try: send_({"blocked": event})
            finally: exit_(86)
    return hook
import stat as _stat
sys.addaudithook(_make_hook(os.getcwd(), os._exit, send, str, bytes, int, isinstance, str.startswith, posix.lstat,
                            posix.readlink, posix.getcwd, _stat.S_ISLNK, any, len, OSError))
del _make_hook
class _Timeout(BaseException): pass
def on_alarm(*a): raise _Timeout()
_signal.signal(_signal.SIGALRM, on_alarm)
HERE = os.getcwd()   # os.open needs absolute paths past the hook (a relative one could ride on a dir_fd)
OUT = os.open(HERE + "/.out", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
_BIG, _FLAT, _INTS, _NUMS, _KIND = 1 << 4096, {str, bool, float, _type(None)}, {int, bool}, {int, float}, {int: 1, float: 0}
_EXACT, _array, _DEPTH = 1 << 53, None, job["depth"]
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
    if d >= _DEPTH: return {"__r": "too deep"}
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
def value(v): return digest(v) if _type(v) is str and _len(v) > _DIGEST_MIN else enc(v)
def err(e): return _type(e).__name__ + ": " + str(e)[:300]
def timed(fn):
    _signal.setitimer(_signal.ITIMER_REAL, job["per_test"])
    try: return fn()
    finally: _signal.setitimer(_signal.ITIMER_REAL, 0)
def run_stdin(code):
    for k, t in enumerate(job["tests"]):
        fd = os.open(HERE + "/.in", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, t["stdin"].encode("utf-8")); os.close(fd)
        fd = os.open(HERE + "/.in", os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
        os.ftruncate(OUT, 0); os.lseek(OUT, 0, 0); os.dup2(OUT, 1)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
        out = sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        rec = {"k": k}
        try:
            timed(lambda: exec(code, {"__name__": "__main__", "__builtins__": builtins}))
        except SystemExit as e:
            if e.code not in (None, 0): rec["err"] = "SystemExit: " + str(e.code)[:50]
        except _Timeout: rec["timeout"] = True
        except BaseException as e: rec["err"] = err(e)
        try: out.flush()
        except BaseException: pass
        n = os.lseek(OUT, 0, 1); os.lseek(OUT, 0, 0)
        _attach(os.read(OUT, min(n, job["fsize"])))    # stdout as raw bytes: no JSON escaping of megabytes
        send(rec)
def run_call(code):
    os.dup2(OUT, 1)
    ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        timed(lambda: (exec(job["prelude"], ns), exec(code, ns)))
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
            if "args" in t: rec["out"] = [value(timed(lambda: candidate_of()(*t["args"])))]
            else: rec["out"] = [value(timed(lambda: eval(c, dict(ns, candidate=candidate_of())))) for c in t["calls"]]
        except _Timeout: rec["timeout"] = True
        except BaseException as e: rec["err"] = err(e)
        send(rec)
try:
    code = compile(job["program"], "solution.py", "exec")
except BaseException as e:
    send({"k": -1, "err": err(e)}); os._exit(0)
(run_stdin if job["mode"] == "stdin" else run_call)(code)
os._exit(0)
'''

# The interpreter's command line: read the harness's compiled code (marshal, compiled once per parent by
# the same interpreter) from stdin and run it in a fresh globals dict (a program that imports __main__
# finds nothing of the harness there); the harness then reads the job that follows it.
_BOOT = "import marshal,sys;exec(marshal.loads(sys.stdin.buffer.read({})),{{'__builtins__':__builtins__}})"
_HARNESS_CODE: bytes | None = None


def _harness_code() -> bytes:
    global _HARNESS_CODE
    if _HARNESS_CODE is None:
        _HARNESS_CODE = marshal.dumps(compile(_HARNESS, "<harness>", "exec"))
    return _HARNESS_CODE


# ----------------------------------------------------------------------------------------------------
# The seccomp filter (libseccomp through pyseccomp): the first layer for what the audit hook stops
# ----------------------------------------------------------------------------------------------------

_CLONE_THREAD = 0x00010000
# Refused with EPERM: namespaces and mounts, keyrings, tracing and other processes' memory, kernel
# interfaces a judged program never needs, and memory RLIMIT_AS does not count (memfd, SysV IPC, mqueue).
_DENY = ("fork", "vfork", "execveat", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
         "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
         "keyctl", "add_key", "request_key", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
         "pidfd_getfd", "perf_event_open", "bpf", "userfaultfd", "io_uring_setup", "io_uring_enter",
         "io_uring_register", "memfd_create", "memfd_secret", "shmget", "shmat", "msgget", "msgsnd", "semget",
         "mq_open", "mq_timedsend", "kexec_load", "kexec_file_load", "init_module", "finit_module",
         "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "settimeofday",
         "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm",
         "name_to_handle_at", "open_by_handle_at", "lookup_dcookie", "vhangup", "fanotify_init",
         "quotactl_fd", "process_madvise")
_BPF: dict = {}
_BPF_LOCK = threading.Lock()


def _seccomp_bpf(deny_exec: bool) -> bytes:
    """The filter as BPF bytes, built once per process. deny_exec: also refuse execve (possible only when
    the harness installs the filter, after its own exec; under bwrap, bwrap execs the interpreter after
    loading it, and an exec'd image keeps every limit of the sandbox anyway)."""
    with _BPF_LOCK:
        if deny_exec not in _BPF:
            f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)   # other ABIs (x32, i386): killed (bad arch)
            eperm = pyseccomp.ERRNO(errno.EPERM)
            for name in sorted(set(_DENY)) + (["execve"] if deny_exec else []):
                try:
                    f.add_rule(eperm, name)
                except (ValueError, RuntimeError, OSError):   # a syscall this libseccomp does not know
                    pass
            f.add_rule(eperm, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, _CLONE_THREAD, 0))
            f.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")   # flags unreadable: glibc falls back to clone
            f.add_rule(eperm, "socket", pyseccomp.Arg(0, pyseccomp.NE, socket.AF_UNIX))
            f.add_rule(eperm, "socketpair", pyseccomp.Arg(0, pyseccomp.NE, socket.AF_UNIX))
            with tempfile.TemporaryFile() as t:
                f.export_bpf(t)
                t.seek(0)
                _BPF[deny_exec] = t.read()
        return _BPF[deny_exec]


# ----------------------------------------------------------------------------------------------------
# bubblewrap command line, the sandbox modes and the availability check
# ----------------------------------------------------------------------------------------------------


def _interpreter() -> str:
    """The base interpreter (not the venv's wrapper): the venv and its packages stay invisible."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(exe)


@functools.lru_cache(maxsize=4)
def _bwrap_args(interp: str, mode: str) -> tuple[list, list]:
    """bwrap's command line around "--seccomp FD" (before, after). mode "root": the trainer is root, so
    bwrap runs privileged without a user namespace, keeps only CAP_SETUID/CAP_SETGID for the harness to
    drop to its own uid; "userns": unprivileged bwrap, uid 65534 inside = the trainer's uid outside."""
    if mode == "root":
        head = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        head = ["bwrap", "--unshare-all", "--uid", "65534", "--gid", "65534"]
    head += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    binds, dests = [], []
    # system libraries python links against; symlinked dirs (/lib -> usr/lib) are recreated as links
    for d in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32"):
        if os.path.islink(d):
            binds += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            binds += ["--ro-bind", d, d]
            dests.append(d)
    for d in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
                     os.path.dirname(interp)}):
        if d != "/" and not any(d == x or d.startswith(x + "/") for x in ("/usr/lib", "/lib")):
            binds += ["--ro-bind", d, d]
            dests.append(d)
    # the folders above each bind, world-searchable (bwrap copies the host's mode: /root is 0700, and
    # the program's uid is not the owner)
    above = sorted({"/".join(d.split("/")[:i]) for d in dests for i in range(2, d.count("/") + 1)})
    tail = [x for a in above for x in ("--perms", "0755", "--dir", a)] + binds
    # devices: the harmless character devices only (no /dev/shm, no pts, nothing writable but /tmp)
    tail += ["--dir", "/dev"]
    for dev in ("null", "zero", "full", "random", "urandom"):
        tail += ["--dev-bind", "/dev/" + dev, "/dev/" + dev]
    tail += ["--size", str(TMPFS_BYTES), "--perms", "1777", "--tmpfs", "/tmp", "--remount-ro", "/",
             "--chdir", "/tmp", "--clearenv", "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/tmp",
             "--setenv", "PYTHONHASHSEED", "0", "--"]
    return head, tail


_MODE: str | None = None
_CHECK_LOCK = threading.Lock()


def sandbox_mode() -> str:
    """How programs run here: "root" (privileged bwrap, a uid of their own), "userns" (unprivileged
    bwrap), "unchecked" before check_sandbox()."""
    return _MODE or "unchecked"


def check_sandbox() -> None:
    """Raise SandboxUnavailable (naming the fix) unless bwrap + seccomp can run a program here; picks
    the mode (root trainers: privileged bwrap and a uid of the sandbox's own, else a user namespace)."""
    global _MODE
    with _CHECK_LOCK:
        if _MODE is not None:
            return
        fix = ("code rewards need bubblewrap and libseccomp: install them (Debian/Ubuntu: `apt-get install -y "
               "bubblewrap libseccomp2`, `pip install -r requirements.txt`); a non-root trainer also needs "
               "unprivileged user namespaces (`sysctl -w kernel.unprivileged_userns_clone=1`, "
               "`sysctl -w user.max_user_namespaces=15000`; on Ubuntu 24.04 also "
               "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`); or pass weak_sandbox=True "
               "(no file-system isolation: docs/sandbox.md; warns every run)")
        if shutil.which("bwrap") is None:
            raise SandboxUnavailable("bwrap not found on PATH; " + fix)
        if pyseccomp is None:
            raise SandboxUnavailable(f"libseccomp not usable ({_SECCOMP_MISSING}); " + fix)
        probe = {"mode": "stdin", "tests": [{"stdin": ""}], "prelude": "", "class_name": None, "fn_name": None}
        why = []
        for mode in ("root", "userns") if os.geteuid() == 0 else ("userns",):
            try:
                run = _run_job(_job(probe, "print(6*7)", 10.0, 20.0, MEMORY_MB), mode,
                               lambda k, rec, blobs: blobs[0] if k == 0 and blobs else None, 1)
            except OSError as e:
                why.append(f"{mode}: {e}")
                continue
            if run.done.get(0) == b"42\n":
                _MODE = mode
                return
            why.append(f"{mode}: exit {run.rc}, {run.fatal or run.blocked or run.stderr.strip()[-300:]}")
        raise SandboxUnavailable(f"bwrap cannot create the sandbox ({'; '.join(why)}); " + fix)


# ----------------------------------------------------------------------------------------------------
# Running one job: parent side (hard limits, capped reads, each record judged as it arrives)
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    done: dict = field(default_factory=dict)      # test index -> the judge's result for it (-1: setup)
    blocked: str | None = None
    fatal: str | None = None                      # the harness could not set the sandbox up
    malformed: str | None = None                  # the report channel broke a cap: reading stopped
    timed_out: bool = False
    flooded: bool = False
    rc: int | None = None
    stderr: str = ""
    pending: tuple | None = None                  # (record, attachment lengths) while its bytes arrive
    scan: int = 0                                 # where the newline search stopped in the buffer


_WEAK_SAID = False
_MAX_ATTACH = 1 << 16                             # attachments of one record (a list of packed lists)


def _job(problem, program, per_test, total, memory_mb, types=False):
    """The harness's job (the parent fills "uid" and "bpf" per run). types=True: keep ints and floats
    apart in packed number lists (the canonical run's outputs are the expected values, and EvalPlus's
    tolerance depends on their float-ness)."""
    tests = [{k: v for k, v in t.items() if k in ("stdin", "args", "calls")} for t in problem["tests"]]
    return {"mode": problem["mode"], "program": program, "prelude": problem["prelude"], "tests": tests,
            "cls": problem["class_name"], "fn": problem["fn_name"], "per_test": per_test, "total": total,
            "mem": memory_mb << 20, "fsize": STDOUT_CAP, "nproc": THREADS, "depth": DEPTH_CAP, "types": types,
            "uid": 0, "bpf": None}


def _run_job(job: dict, mode: str, judge, n: int) -> _Run:
    """Run the harness on job in the given mode ("root", "userns" or "weak"); judge(k, record,
    attachments) is called once per test record as it arrives (k = -1: the program's setup) and its
    result kept in _Run.done; nothing else of the record is kept."""
    interp = _interpreter()
    code = _harness_code()
    tmp, rfd, info_w, info_r = None, None, None, None
    cmd = [interp, "-I", "-S", "-c", _BOOT.format(len(code))]
    if mode == "weak":
        warnings.warn("sandbox.py: weak_sandbox=True -- programs run WITHOUT bubblewrap (no namespaces, no "
                      "file-system isolation; seccomp, rlimits and the audit hook only). Do not train on "
                      "untrusted code like this.", RuntimeWarning, stacklevel=3)
        global _WEAK_SAID
        if not _WEAK_SAID:                 # once per process on stderr (a training step runs hundreds of jobs)
            _WEAK_SAID = True
            print("WARNING: sandbox.py weak sandbox in use (no bubblewrap isolation)", file=sys.stderr)
        if pyseccomp is None:
            raise SandboxUnavailable(f"libseccomp not usable ({_SECCOMP_MISSING}): the weak sandbox needs it too")
        tmp = tempfile.mkdtemp(prefix="lad-code-")
        job["bpf"] = _seccomp_bpf(True)
        kw = dict(cwd=tmp, env={"LANG": "C.UTF-8", "HOME": tmp, "PYTHONHASHSEED": "0"})
    else:
        rfd, wfd = os.pipe()                  # bwrap reads the BPF program from here
        os.write(wfd, _seccomp_bpf(False))
        os.close(wfd)
        info_r, info_w = os.pipe()            # bwrap names the sandbox's pid 1 here (see _kill)
        os.set_blocking(info_r, False)
        head, tail = _bwrap_args(interp, mode)
        cmd = head + ["--seccomp", str(rfd), "--info-fd", str(info_w)] + tail + cmd
        # bwrap's own environment (the program's is cleared) names the trainer: its sandboxes can be found
        # by `grep -l SANDBOX_PARENT=<pid> /proc/*/environ`, whatever uid they run as
        kw = dict(env={"SANDBOX_PARENT": str(os.getpid())}, pass_fds=(rfd, info_w))
    run = _Run()
    try:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True, close_fds=True, **kw)
        finally:
            for fd in (rfd, info_w):
                if fd is not None:
                    os.close(fd)
        try:
            if mode == "root" or (mode == "weak" and os.geteuid() == 0 and _world_searchable(interp)):
                job["uid"] = UID_BASE + proc.pid   # unique among live processes, so among live sandboxes
                if tmp:
                    os.chown(tmp, job["uid"], job["uid"])
            _pump(proc, code + marshal.dumps(job), job, run, judge, n)
        finally:
            _kill(proc, info_r)
        run.rc = proc.returncode
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if info_r is not None:
            os.close(info_r)
    return run


def _world_searchable(interp: str) -> bool:
    """Whether another uid can run this interpreter and read its standard library (the weak sandbox
    drops a root trainer's programs to a uid of their own only then; bwrap makes its own copy of the path)."""
    for d in {os.path.realpath(sys.base_prefix), os.path.dirname(interp)}:
        while d != "/":
            if not os.stat(d).st_mode & 0o001:
                return False
            d = os.path.dirname(d)
    return True


def _pump(proc, payload: bytes, job: dict, run: _Run, judge, n: int) -> None:
    """Feed the job, read records until EOF or a limit (per test since the last record, total, size)."""
    def feed():
        try:
            proc.stdin.write(payload)
            proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
    threading.Thread(target=feed, daemon=True).start()
    t0 = time.monotonic()
    hard_end = t0 + job["total"] + 1.0
    next_due = t0 + job["per_test"] + 2.0          # start-up plus the first test (or the module setup)
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    buf, err, total = bytearray(), bytearray(), 0
    open_fds = {out_fd, err_fd}
    try:
        while open_fds:
            wait = min(hard_end, next_due) - time.monotonic()
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
                    buf += chunk
                    if _take_records(buf, run, judge, n, hard_end):
                        next_due = time.monotonic() + job["per_test"] + 0.5
                    if run.malformed or run.timed_out:
                        return
                elif len(err) < 65536:
                    err += chunk[:65536]
    finally:
        run.stderr = err.decode("utf-8", "replace")


def _take_records(buf: bytearray, run: _Run, judge, n: int, hard_end: float) -> int:
    """Judge the complete records at the head of `buf`, then drop them -> test records taken. A record is
    a JSON line, followed by the raw bytes of its attachments when it has "__n" (their lengths); a line
    that is not a JSON object, or has a malformed "__n", is noise written by the program: ignored. A line
    or a record over its cap stops the reading (run.malformed); so does the deadline."""
    taken, start = 0, 0
    while True:
        if time.monotonic() > hard_end:
            run.timed_out = True
            break
        if run.pending is not None:                        # a record whose attachments are still arriving
            rec, lens = run.pending
            if len(buf) - start < sum(lens):
                break
            blobs = []
            for ln in lens:
                blobs.append(bytes(buf[start:start + ln]))
                start += ln
            run.pending = None
            taken += _keep(rec, blobs, run, judge, n)
            continue
        i = buf.find(b"\n", max(start, run.scan))
        if i < 0:
            if len(buf) - start > RECORD_CAP:
                run.malformed = "a report line over the record cap"
            break
        line = bytes(buf[start:i])
        start = i + 1
        cost = 8 * len(line) + 80 * (line.count(b",") + line.count(b"[") + line.count(b"{") + line.count(b":"))
        if cost > DECODE_CAP:                              # what json.loads would allocate, at most
            run.malformed = "a report record over the decode cap"
            break
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(rec, dict):
            continue
        lens = rec.pop("__n", None)
        if lens is None:
            taken += _keep(rec, [], run, judge, n)
        elif (isinstance(lens, list) and len(lens) <= _MAX_ATTACH and all(type(x) is int and x >= 0 for x in lens)
              and len(line) + sum(lens) <= RECORD_CAP and cost + 4 * sum(lens) <= DECODE_CAP):
            run.pending = (rec, lens)
        elif isinstance(lens, list) and all(type(x) is int and x >= 0 for x in lens[:_MAX_ATTACH]):
            run.malformed = "a report record over the record cap"
            break
    del buf[:start]
    run.scan = 0 if run.pending is not None else len(buf)
    return taken


def _keep(rec: dict, blobs: list, run: _Run, judge, n: int) -> int:
    """Judge rec if it is the first record of an existing test -> 1 if it was a new test record."""
    if "blocked" in rec:
        run.blocked = run.blocked or str(rec["blocked"])[:100]
        return 0
    k = rec.get("k")
    if "fatal" in rec and k == -1:
        run.fatal = run.fatal or str(rec["fatal"])[:300]
        return 0
    if type(k) is not int or not -1 <= k < n or k in run.done:
        return 0
    try:
        run.done[k] = judge(k, rec, blobs)
    except Exception as e:                   # the comparisons never raise; this is the last net
        run.done[k] = ("runtime_error", f"test {k}: unreadable report ({type(e).__name__})")
    return 1 if k >= 0 else 0


def _sandbox_init(proc, info_fd):
    """A pidfd of the sandbox's pid 1 (bwrap's reaper, whose exit empties the pid namespace), taken while
    it is still bwrap's child (so the pid cannot have been reused); None if it is gone already."""
    try:
        m = re.search(rb'"child-pid": *(\d+)', os.read(info_fd, 4096))
    except (BlockingIOError, OSError):
        return None
    if m is None:
        return None
    pid = int(m.group(1))
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if int(f.read().rsplit(b")", 1)[1].split()[1]) == proc.pid:
                return fd
    except (OSError, ValueError, IndexError):
        pass
    os.close(fd)
    return None


def _kill(proc, info_fd) -> None:
    """SIGKILL the sandbox: its pid 1 (the whole pid namespace goes with it) and bwrap's process group,
    then wait until the namespace is empty, so that no sandbox outlives the call."""
    init = _sandbox_init(proc, info_fd) if info_fd is not None else None
    if init is not None:
        try:
            signal.pidfd_send_signal(init, signal.SIGKILL)
        except OSError:
            pass
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
    if init is not None:
        select.select([init], [], [], 5.0)       # readable once pid 1 has exited, after all its namespace
        os.close(init)


# ----------------------------------------------------------------------------------------------------
# Values: decoding the child's tagged JSON, and the comparisons of each format
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
    a = array(code)
    a.frombytes(raw)                               # ValueError unless a whole number of items
    return a.tolist()


def _dec(x, blobs=(), d=0):
    """The harness's tagged JSON value -> the Python value (blobs: the record's raw attachments). Never
    raises: a malformed or too deep part becomes an _Opaque, equal to nothing."""
    if isinstance(x, list):
        if set(map(type, x)).isdisjoint(_NESTED):   # a flat list of JSON scalars is its own value
            return x
        if d >= DEPTH_CAP:
            return _Opaque("too deep")
        return [_dec(v, blobs, d + 1) for v in x]
    if not isinstance(x, dict):
        return x
    (tag, v), = x.items() if len(x) == 1 else (("__r", "bad"),)
    if d >= DEPTH_CAP:
        return _Opaque("too deep")
    try:
        if tag == "__t":
            return tuple(_dec(e, blobs, d + 1) for e in v)
        if tag == "__s":
            return set(_dec(e, blobs, d + 1) for e in v)
        if tag == "__d":
            return {_dec(a, blobs, d + 1): _dec(b, blobs, d + 1) for a, b in v}
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
            return (tag, tuple(_freeze(_dec(e, blobs, d + 1)) for e in v))
    except (TypeError, ValueError, OverflowError, IndexError, AttributeError, RecursionError):
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


def _equal(a, b) -> bool:
    """Python's ==, as every grader here uses it, that never raises (a failed comparison is unequal)."""
    try:
        return bool(a == b)
    except Exception:
        return False


def _lcb_stdout_equal(raw: bytes, want: str) -> bool:
    """LiveCodeBench's grade_stdio (which DeepCoder uses): both sides stripped and split on "\\n", the same
    number of lines, each line equal after strip() or else equal as a list of Decimals (exact: "1.0"
    equals "1", 999999000 does not equal 999999937)."""
    got = raw.decode("utf-8", "replace").strip()
    want = want.strip()
    if got.count("\n") != want.count("\n"):
        return False
    for a, b in zip(got.split("\n"), want.split("\n")):
        a, b = a.strip(), b.strip()
        if a == b:
            continue
        want_tokens = b.split()
        got_tokens = a.split(None, len(want_tokens))   # never more pieces than the expected line has, + 1
        if len(got_tokens) != len(want_tokens):
            return False
        try:
            if any(Decimal(x) != Decimal(y) for x, y in zip(got_tokens, want_tokens)):
                return False
        except (InvalidOperation, ValueError, ArithmeticError):
            return False
    return True


def _taco_equal(out, exp) -> bool:
    """TACO/APPS call-based tests as TACO's testing_util judges them: a tuple result as a list, ==, or
    equal to the expected list's first element (outputs are often wrapped in one), or a list of tuples
    as lists equal to it."""
    if isinstance(out, tuple):
        out = list(out)
    if _equal(out, exp):
        return True
    if isinstance(exp, list) and exp and _equal(out, exp[0]):
        return True
    try:
        return isinstance(out[0], tuple) and _equal([list(x) for x in out], exp[0])
    except Exception:
        return False


def _evalplus_equal(out, exp, atol_pre: float, atol: float, inp, entry: str, dataset: str) -> bool:
    """EvalPlus's comparison (evalplus.eval.unsafe_execute, 0.3.1), with its own oracles and is_floats:
    exact ==, the special oracles of its datasets, else allclose(rtol 1e-7, atol) on the same type.
    atol_pre / atol: the tolerance before / after EvalPlus's loop reached this input (it raises a zero
    atol to 1e-6 at the first float expected value and keeps it for the later inputs)."""
    try:
        exact = out == exp
        if dataset == "mbpp":
            if entry == "are_equivalent":                   # Mbpp/164
                exact = True
            elif entry == "sum_div":                        # Mbpp/295
                exact = exact or out == 0
            elif entry == "surface_Area":                   # Mbpp/581
                exact = exact or abs(out - _surface_Area(*inp)) <= atol_pre
            elif entry == "digit_distance_nums":            # Mbpp/558
                exact = exact or out == _digit_distance_nums(*inp)
            elif entry in MBPP_OUTPUT_SET_EQ_TASKS:
                exact = set(out) == set(exp)
            elif entry in MBPP_OUTPUT_NOT_NONE_TASKS:
                exact = out == exp if isinstance(out, bool) else exp == (out is not None)
        if dataset == "humaneval" and entry == "find_zero":  # HumanEval/32: a root within atol
            return bool(abs(_poly(*inp, out)) <= atol_pre)
        if not exact and atol != 0:
            if type(out) is not type(exp) or (isinstance(exp, (list, tuple)) and len(out) != len(exp)):
                return False
            with np.errstate(all="ignore"):
                return bool(np.allclose(out, exp, rtol=1e-07, atol=atol))
        return bool(exact)
    except Exception:
        return False


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
    """One check() assert -> a test: its candidate(...) calls run inside, the rest is judged in the parent."""
    def is_cand(c):
        return isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "candidate"
    if isinstance(e, ast.Compare) and len(e.ops) == 1 and isinstance(e.ops[0], ast.Eq) and is_cand(e.left):
        try:
            return {"calls": [ast.unparse(e.left)], "expect": ast.literal_eval(e.comparators[0])}
        except (ValueError, SyntaxError, TypeError, RecursionError):
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
            return {"calls": [ast.unparse(e.args[0])], "expect": exp}
        except (ValueError, SyntaxError, TypeError, RecursionError):
            pass
    # any other form: the dataset's own expression, evaluated by the parent on the returned values
    calls = []

    class Calls(ast.NodeTransformer):
        def visit_Call(self, node):
            if is_cand(node):
                calls.append(ast.unparse(node))
                return ast.copy_location(ast.Name(id=f"__v{len(calls) - 1}", ctx=ast.Load()), node)
            self.generic_visit(node)
            return node

    expr = ast.fix_missing_locations(Calls().visit(ast.Expression(body=e)))
    _check_judge(expr)
    if not calls:
        raise ValueError(f"assert without a candidate(...) call: {ast.unparse(e)[:80]}")
    return {"calls": calls, "judge": ast.unparse(expr.body)}


# What a parent-side assert may contain: pure operations on the returned values whose cost is bounded by
# the values' size (no *, **, << on them), and the prelude's helpers; anything else is a row error.
_JUDGE_NAMES = frozenset(("None", "True", "False", "inf", "list_node", "tree_node", "is_same_list", "is_same_tree",
                          "ListNode", "TreeNode", "sorted", "set", "frozenset", "len", "abs", "round", "list", "tuple",
                          "dict", "all", "any", "min", "max", "sum", "str", "int", "float", "bool", "isclose",
                          "isinstance", "reversed", "Counter"))
_JUDGE_NODES = (ast.Expression, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.Call, ast.Name, ast.Load,
                ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.Subscript, ast.Slice, ast.Attribute,
                ast.IfExp, ast.keyword, ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Div,
                ast.FloorDiv, ast.Mod, ast.Mult, ast.Pow, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In,
                ast.NotIn, ast.Is, ast.IsNot)


def _check_judge(expr) -> None:
    for node in ast.walk(expr):
        if not isinstance(node, _JUDGE_NODES):
            raise ValueError(f"assert uses {type(node).__name__}, which the parent does not evaluate")
        if isinstance(node, ast.Name) and not (node.id in _JUDGE_NAMES or re.fullmatch(r"__v\d+", node.id)):
            raise ValueError(f"assert uses name {node.id!r}, which the parent does not evaluate")
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Name):
            raise ValueError("assert calls something other than a plain name")
        if isinstance(node, ast.Attribute) and node.attr not in ("val", "next", "left", "right"):
            raise ValueError(f"assert reads attribute {node.attr!r}")
        if (isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Pow))
                and any(isinstance(x, ast.Name) and x.id.startswith("__v") for x in ast.walk(node))):
            raise ValueError("assert multiplies or raises a returned value to a power")


@functools.lru_cache(maxsize=1)
def _judge_globals() -> dict:
    """The LeetCode prelude (this module's own code) run once in the parent: the names an assert uses."""
    ns: dict = {}
    exec(LEETCODE_PRELUDE, ns)
    return ns


@functools.lru_cache(maxsize=4096)
def _judge_code(src: str):
    return compile(src, "<assert>", "eval")


def _as_nodes(v, d=0):
    """Decoded ListNode/TreeNode values back into the prelude's objects, for an assert's helpers."""
    ns = _judge_globals()
    if isinstance(v, tuple) and len(v) == 2 and v[0] in ("__ln", "__tn") and isinstance(v[1], tuple):
        return (ns["list_node"] if v[0] == "__ln" else ns["tree_node"])(list(v[1]))
    if isinstance(v, list) and d < DEPTH_CAP:
        return [_as_nodes(e, d + 1) for e in v]
    return v


def _leetcode_judge(src: str, vals: list) -> bool:
    """An assert of the dataset evaluated in the parent on the values the program returned."""
    env = dict(_judge_globals())
    env.update((f"__v{i}", _as_nodes(v)) for i, v in enumerate(vals))
    try:
        return bool(eval(_judge_code(src), env))
    except Exception:
        return False


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
            out.append({"args": i, "expect": o})
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
    task_id = str(row.get("task_id") or "")
    if task_id.startswith("Mbpp/"):
        # MBPP+ stores tuples, sets and complex numbers as JSON lists and strings; EvalPlus turns them back
        # per task. Imported here: its package imports `datasets` (1.4 s), which only MBPP+ rows need.
        from evalplus.data.mbpp import mbpp_deserialize_inputs

        base, plus = mbpp_deserialize_inputs(task_id, base), mbpp_deserialize_inputs(task_id, plus)
    tests = [{"args": list(a)} for a in base + plus]
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
    inside: int = 0                    # tests judged inside the sandbox: none any more (kept for callers)


class _BadProblem(Exception):
    """The problem's reference solution fails: every sample of it gets reason bad_problem."""


_EXPECTED: dict = {}
_EXPECTED_LOCK = threading.Lock()


def _mode(weak: bool) -> str:
    if weak:
        return "weak"
    check_sandbox()
    return _MODE


def _failed(rec) -> tuple | None:
    """(reason, detail) when a test record reports an error or a timeout, else None."""
    if rec.get("timeout"):
        return "timeout", "per-test limit"
    if "err" in rec:
        e = str(rec["err"])
        return ("memory" if e.startswith("MemoryError") else "runtime_error"), e[:300]
    return None


def _values(t, rec, blobs) -> list:
    """The decoded values of a call test's record (one per call); a malformed "out" raises ValueError."""
    out = rec.get("out")
    if not isinstance(out, list) or len(out) != len(t.get("calls") or [None]):
        raise ValueError("malformed out")
    return [_dec(v, blobs) for v in out]


def _expected(problem, per_test, total, memory_mb, weak):
    """EvalPlus: (expected outputs, atol before / after each input) of the canonical solution on every
    input, run once (sandboxed) and cached; raises _BadProblem (cached too) when it fails."""
    key = (problem.get("task_id"), hash(problem["canonical"]), len(problem["tests"]))
    with _EXPECTED_LOCK:
        if key in _EXPECTED:
            got = _EXPECTED[key]
            if isinstance(got, str):
                raise _BadProblem(got)
            return got
    tests = problem["tests"]

    def judge(k, rec, blobs):
        why = _failed(rec)
        if why or k < 0:
            return why or ("runtime_error", "setup")
        vals = _values(tests[k], rec, blobs)
        if any(isinstance(v, _Opaque) and v.name == "too deep" for v in vals):
            return "runtime_error", "output nested past the depth cap"
        return ("value", vals[0])

    run = _run_job(_job(problem, problem["canonical"], per_test, max(total, 120.0), memory_mb, types=True),
                   _mode(weak), judge, len(tests))
    exp, bad = [], None
    for k in range(len(tests)):
        got = run.done.get(k)
        if not (isinstance(got, tuple) and got[0] == "value"):
            why = got if isinstance(got, tuple) else _failure(run, run.done.get(-1))
            if why[0] == "sandbox_error":
                raise RuntimeError(why[1])        # not the problem's fault: not cached
            bad = f"{problem['where']}: canonical solution failed on input {k}: {why[0]} ({why[1][:200]})"
            break
        exp.append(got[1])
    if bad is None:
        entry, dataset = problem["fn_name"], _evalplus_dataset(problem)
        if dataset == "mbpp" and entry in MBPP_OUTPUT_NOT_NONE_TASKS:
            exp = [v is not None for v in exp]  # EvalPlus keeps only "not None" for these tasks
        pre, post = [], []
        for seg in (range(problem["n_base"]), range(problem["n_base"], len(tests))):  # base, plus: apart
            a = problem["atol"]
            for k in seg:
                pre.append(a)
                if not (dataset == "humaneval" and entry == "find_zero") and a == 0 and is_floats(exp[k]):
                    a = 1e-6
                post.append(a)
    with _EXPECTED_LOCK:
        _EXPECTED[key] = bad if bad is not None else (exp, pre, post)
    if bad is not None:
        raise _BadProblem(bad)
    return exp, pre, post


def _evalplus_dataset(problem) -> str:
    return "mbpp" if str(problem.get("task_id") or "").startswith("Mbpp/") else "humaneval"


def _failure(run: _Run, setup) -> tuple[str, str]:
    """(reason, detail) for a test without a judged record (setup: the judged k = -1 record, if any)."""
    if run.fatal and not any(k >= 0 for k in run.done):
        return "sandbox_error", run.fatal
    if run.blocked:
        return "blocked", run.blocked
    if isinstance(setup, tuple):
        return setup
    if run.timed_out:
        return "timeout", "killed by the parent"
    if run.malformed:
        return "runtime_error", run.malformed
    if run.flooded:
        return "runtime_error", "output over the cap"
    if run.rc in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU):
        return "timeout", f"cpu limit (exit {run.rc})"
    if "MemoryError" in run.stderr or "Cannot allocate" in run.stderr:
        return "memory", run.stderr[-200:]
    return "runtime_error", f"no result (exit {run.rc}): {run.stderr.strip()[-200:]}"


def _compare(problem, k, t, rec, blobs, exp) -> bool:
    """Test k's record against its expected value, as the format's own grader compares (docs/sandbox.md)."""
    if problem["mode"] == "stdin":
        return len(blobs) == 1 and _lcb_stdout_equal(blobs[0], t["expect"])
    vals = _values(t, rec, blobs)
    fmt = problem["format"]
    if fmt == "evalplus":
        exps, pre, post = exp
        return _evalplus_equal(vals[0], exps[k], pre[k], post[k], t["args"], problem["fn_name"],
                               _evalplus_dataset(problem))
    if "judge" in t:                              # a LeetCode assert of another form than `== literal`
        return _leetcode_judge(t["judge"], vals)
    if fmt == "taco":
        return _taco_equal(vals[0], t["expect"])
    out = vals[0]
    if fmt == "lcb" and isinstance(out, tuple):   # LiveCodeBench's grade_call_based: a tuple as a list, then ==
        out = list(out)
    return _equal(out, t["expect"])               # LeetCode `assert candidate(...) == literal`: Python ==


def run_problem(response: str, problem: dict, *, per_test: float = PER_TEST_S, total: float = TOTAL_S,
                memory_mb: int = MEMORY_MB, weak_sandbox: bool = False) -> Verdict:
    """Verdict of one response on one problem (reward 1 iff every test passes). Never raises for
    anything a program or a record does (SandboxUnavailable only: the machine cannot sandbox at all)."""
    evalplus = problem.get("format") == "evalplus"
    base = 0.0 if evalplus else None
    n = len(problem.get("tests") or ())
    if not n:                                      # parse_code_row never makes one; no test is no pass
        return Verdict(0.0, "bad_problem", f"{problem.get('where')}: no tests", base_reward=base)
    program = extract_program(response)
    if program is None:
        return Verdict(0.0, "no_code_block", total=n, base_reward=base)
    try:
        exps = None
        if evalplus:
            exps = _expected(problem, per_test, total, memory_mb, weak_sandbox)
            # the prompt's imports (e.g. `from typing import List`), as EvalPlus's sanitizer keeps them
            imports = "".join(ln + "\n" for ln in problem["prompt"].splitlines() if ln.startswith(("import ", "from ")))
            program = imports + program
        tests = problem["tests"]

        def judge(k, rec, blobs):
            why = _failed(rec)
            if why or k < 0:
                return why or ("runtime_error", "setup")
            try:
                return True if _compare(problem, k, tests[k], rec, blobs, exps) else ("wrong_answer", f"test {k}")
            except (ValueError, TypeError, RecursionError, MemoryError) as e:
                return "runtime_error", f"test {k}: unreadable report ({type(e).__name__})"

        run = _run_job(_job(problem, program, per_test, total, memory_mb), _mode(weak_sandbox), judge, n)
    except SandboxUnavailable:
        raise
    except _BadProblem as e:
        return Verdict(0.0, "bad_problem", str(e), total=n, base_reward=base)
    except Exception as e:                         # the machine could not run the sandbox (fork, fds, ...)
        return Verdict(0.0, "sandbox_error", f"{type(e).__name__}: {e}"[:300], total=n, base_reward=base)
    first, passed, base_ok = None, 0, True
    for k in range(n):
        got = run.done.get(k)
        ok = got is True
        passed += ok
        if not ok:
            first = first or (got if isinstance(got, tuple) else _failure(run, run.done.get(-1)))
            if k < problem["n_base"]:
                base_ok = False
    if evalplus:
        base = 1.0 if base_ok else 0.0
    if first is None:
        return Verdict(1.0, "ok", "", passed, n, base)
    return Verdict(0.0, first[0], first[1], passed, n, base)


def _default_workers() -> int:
    return cores_per_rank()


def score_code_batch_verdicts(responses, problems, workers: int | None = None, **limits) -> list[Verdict]:
    """Verdicts of many (response, problem) pairs: parallel sandboxes, threads waiting on subprocesses.
    Every pair gets its Verdict; only a missing sandbox (SandboxUnavailable) stops the call."""
    responses, problems = list(responses), list(problems)
    if len(responses) != len(problems):
        raise ValueError(f"{len(responses)} responses but {len(problems)} problems")
    if not limits.get("weak_sandbox"):
        check_sandbox()  # refuse before starting anything
    n = workers or _default_workers()
    lim = {k: v for k, v in limits.items() if k in ("per_test", "total", "memory_mb", "weak_sandbox")}
    # EvalPlus expected outputs first, once per task (not once per response); a failure is the problem's
    # verdict (bad_problem), given to each of its samples by run_problem
    seen = {id(p): p for p in problems if isinstance(p, dict) and p.get("format") == "evalplus"}

    def expect(p):
        try:
            _expected(p, lim.get("per_test", PER_TEST_S), lim.get("total", TOTAL_S), lim.get("memory_mb", MEMORY_MB),
                      lim.get("weak_sandbox", False))
        except Exception:
            pass

    with ThreadPoolExecutor(max_workers=n) as ex:
        list(ex.map(expect, seen.values()))
        return list(ex.map(lambda rp: run_problem(rp[0], rp[1], **lim), zip(responses, problems)))


def score_code_batch(responses, problems, workers: int | None = None, **limits) -> list[tuple[float, str]]:
    """[(reward, reason)] of many (response, problem) pairs; no sandbox outlives the call."""
    return [(v.reward, v.reason) for v in score_code_batch_verdicts(responses, problems, workers, **limits)]
