"""The README's layout table against the code, and the docs' flags against the scripts.

- Every top-level module is in the table, and the table's "imports" column is exactly the project modules
  the file imports; those imports sit at the top of the file (none inside a function), and they form no
  cycle.
- Every `--flag` the README and docs/ name exists: on a command line, in that script's Args; in prose, in
  some script's Args (or it is a flag of torchrun, pip or pytest).
"""

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODULES = sorted(p.stem for p in ROOT.glob("*.py"))
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def layout_table():
    """{module: set of imported modules} from the README's table (between the layout markers)."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- layout -->(.*?)<!-- /layout -->", text, re.S)
    assert m, "README.md has no <!-- layout --> table"
    table = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`(\w+)\.py`", cells[0]) if cells and cells[0] else None
        if name:
            table[name.group(1)] = set(re.findall(r"`(\w+)`", cells[-1]))
    return table


def imports_of(module):
    """(project modules imported anywhere in the file, those imported inside a function or class)."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    found, nested = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        found |= {n for n in names if n in MODULES and n != module}
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    nested = found - top
    return found, nested


def test_every_module_is_in_the_table_with_its_imports():
    table = layout_table()
    assert sorted(table) == MODULES
    for module in MODULES:
        found, nested = imports_of(module)
        assert found == table[module], f"{module}.py imports {sorted(found)}, the README says {sorted(table[module])}"
        assert not nested, f"{module}.py imports {sorted(nested)} inside a function: imports go at the top"


def test_imports_run_one_way():
    graph = {m: imports_of(m)[0] for m in MODULES}
    state = {}

    def visit(m, path):
        if state.get(m) == "open":
            raise AssertionError("import cycle: " + " -> ".join(path + [m]))
        if state.get(m) == "done":
            return
        state[m] = "open"
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = "done"

    for m in MODULES:
        visit(m, [])


SCRIPTS = ["lad.py", "eval.py", "bandit.py", "tiny.py"] + [f"{d}/{p.name}" for d in ("bench", "examples")
                                                            for p in sorted((ROOT / d).glob("*.py"))]
OTHER_TOOLS = {"--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port", "--no-deps",
               "--rdzv_backend", "--rdzv_endpoint", "--standalone", "--help", "--index-url", "--extra-index-url"}
# bubblewrap's options: the ones sandbox.py's command line uses (its string literals)
OTHER_TOOLS |= {n.value for n in ast.walk(ast.parse((ROOT / "sandbox.py").read_text()))
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.fullmatch(r"--[a-z][a-z0-9-]*", n.value)}


def _class_fields(tree, name):
    """Field names of class `name` in a module's AST, with those of its bases found in baselines.py."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            fields = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
            for s in node.body:
                if isinstance(s, ast.Assign) and any(getattr(t, "id", "") == "DEPRECATED_FLAGS" for t in s.targets):
                    fields |= set(ast.literal_eval(s.value))
            for base in node.bases:
                if getattr(base, "id", "") == "BaselineArgs":
                    fields |= _class_fields(ast.parse((ROOT / "baselines.py").read_text()), "BaselineArgs")
            return fields
    return set()


def flags_of(script):
    """The flags a script's Args gives it (common.parse_args: one per field, and DEPRECATED_FLAGS), read
    from its source (a bench script may import packages that are not installed)."""
    return {"--" + f.replace("_", "-") for f in _class_fields(ast.parse((ROOT / script).read_text()), "Args")}


def commands_in(text):
    """(script, [flags]) for each command line in the text that runs one of our scripts."""
    for line in re.split(r"\n|(?:&&|;|\|)", text.replace("\\\n", " ")):
        m = re.search(r"(?:^|[\s/`])((?:bench/|examples/)?\w+\.py)\b(.*)", line)
        if m and m.group(1) in SCRIPTS:
            yield m.group(1), re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", m.group(2).split("#")[0])


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_flag_the_docs_name_exists(doc):
    text = doc.read_text()
    cache = {}
    for script, flags in commands_in(text):
        known = cache.setdefault(script, flags_of(script)) | OTHER_TOOLS
        bad = [f for f in flags if f not in known]
        assert not bad, f"{doc.name}: {script} has no {bad}"
    every = set().union(*(flags_of(s) for s in SCRIPTS)) | OTHER_TOOLS
    prose = set(re.findall(r"`(--[a-z][a-z0-9-]*)", text))
    assert not prose - every, f"{doc.name} names flags no script has: {sorted(prose - every)}"
