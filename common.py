"""common.py -- the plumbing every script shares: the command line made from an Args dataclass, the
one bad-input error, and the run's seeds.

Every script (lad.py, eval.py, bandit.py, verifier.py, tiny.py, bench/*.py) declares one `Args`
dataclass whose fields carry a one-line docstring each, and calls `parse_args(Args)`. The conventions,
held here once:
    - one flag per field, `--field-name` (underscores become dashes), its help the field's docstring;
    - booleans: `--flag true|false` (also 1/0, yes/no); a bare `--flag` means true;
    - list fields (`list[str]`): one or more values after the flag;
    - fixed choices: a plain class attribute `CHOICES = {"field": [...]}` on the Args class;
    - renamed flags: `DEPRECATED_FLAGS = {"old_name": "field"}` keeps --old-name working, with a one-line note;
    - fields inherited from a shared Args base (baselines.BaselineArgs) are flags too, listed after the
      script's own, with the base's docstring unless the script redeclares the field;
    - a bad value: one line `script.py: error: ...` on stderr and exit code 2, no usage dump.

Commands: none (a module). Deliberately left out: config files and environment-variable overrides
(the command line is the whole config, and every run logs it).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import sys
import textwrap
from pathlib import Path


class UsageError(Exception):
    """Bad input (arguments, data, paths): a message on stderr (one line; a bad data file: one line per bad
    row) and exit code 2, on every rank."""


def field_docs(cls) -> dict:
    """{field name: its docstring, whitespace collapsed} of a dataclass (the string under each field), bases
    first, so that a subclass that redeclares a field also gives its docstring."""
    doc = {}
    for klass in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                doc[a.target.id] = " ".join(str(b.value.value).split())
    return doc


def boolean(s: str) -> bool:
    """The one boolean convention of every script's command line."""
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def parse_args(cls, argv=None, prog: str | None = None):
    """Dataclass -> argparse -> an instance of cls (see the module docstring for the conventions)."""
    doc = field_docs(cls)
    prog = prog or Path(inspect.getfile(cls)).name      # the script whose Args these are

    class Parser(argparse.ArgumentParser):
        def error(self, message):                        # one line, no usage dump, exit code 2
            print(f"{prog}: error: {message}", file=sys.stderr)
            sys.exit(2)

    class Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"{prog}: {option_string} is deprecated; use --{self.dest.replace('_', '-')}", file=sys.stderr)
            setattr(namespace, self.dest, values)

    p = Parser(prog=prog, description=cls.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    choices = getattr(cls, "CHOICES", {})
    own = cls.__dict__.get("__annotations__", {})
    fields = sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)       # the script's own first
    kws = {}
    for f in fields:
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if isinstance(default, bool):
            kws[f.name] = {"type": boolean, "nargs": "?", "const": True}
        elif isinstance(default, list):
            kws[f.name] = {"nargs": "+"}
        else:
            kws[f.name] = {"type": type(default)}
        p.add_argument(f"--{f.name.replace('_', '-')}", default=default, choices=choices.get(f.name),
                       help=doc.get(f.name, "").replace("%", "%%"), **kws[f.name])
    for old, new in getattr(cls, "DEPRECATED_FLAGS", {}).items():
        p.add_argument(f"--{old.replace('_', '-')}", dest=new, action=Deprecated, choices=choices.get(new),
                       help=argparse.SUPPRESS, **kws[new])
    return cls(**vars(p.parse_args(argv)))


# Every random stream of a run is a function of (purpose, seed, step, rank[, round]) only, so a resumed
# run draws exactly what a straight run would, and no two ranks, steps or purposes share a stream.
# The multipliers are distinct primes (or prime-ish spacings) chosen once; changing one changes results.
def seed_for(purpose: str, seed: int, step: int = 0, rank: int = 0, round: int = 0) -> int:
    """The seed of one random stream: init (torch/python RNGs), data (epoch permutation; step = epoch),
    rollout (one generate round), shuffle (mini-batch order), eval (held-out sampling), clipcov (Clip-Cov's
    token draws: one generator per rank for the run, its state checkpointed)."""
    formula = {
        "init": lambda: seed * 1000 + rank,
        "data": lambda: seed * 1000003 + step,
        "rollout": lambda: (seed * 1000003 + step * 101 + round) * 64 + rank,
        "shuffle": lambda: seed * 7 + step * 31 + rank,
        "eval": lambda: seed * 7919 + 104729 * step + rank,
        "clipcov": lambda: seed * 15485863 + 999331 + rank,
    }
    if purpose not in formula:
        raise ValueError(f"unknown seed purpose {purpose!r}; choose from {sorted(formula)}")
    return formula[purpose]()


def cores_per_rank() -> int:
    """Usable cores / local ranks (torchrun's LOCAL_WORLD_SIZE), at least 1: the default size of the
    verifier's and the sandbox's worker pools, so ranks on one node do not oversubscribe its cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, cores // local)
