"""data.py -- data files: the benchmark and training file loaders, the prompt templates and the one prompt
encoder, shared by lad.py and eval.py so that a checkpoint is evaluated on prompts encoded exactly as it
was trained.

A problem is {"id": str, "problem": str or chat messages, "gold": str or a code problem dict, "meta": dict,
"kind": "math" | "code"}; a row (what lad.py trains on) is {"id", "prompt", "gold", "kind"} with the
prompt rendered from its template. What a kind means (reward, answer key) is tasks.py's. Every malformed
row is reported with its file and line; nothing is silently dropped.

Commands: none (a module). Deliberately left out: downloading datasets (files are local paths only).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import sandbox
from common import UsageError

CODE_KEYS = ("tests", "input_output", "inputs", "base_input")   # a row holding one of these is a code problem


def is_code_row(row) -> bool:
    """Code rows carry tests (LiveCodeBench, LeetCode, TACO/APPS, EvalPlus, or verl's ground_truth)."""
    if not isinstance(row, dict):
        return False
    if any(k in row for k in CODE_KEYS):
        return True
    gt = row["reward_model"].get("ground_truth") if isinstance(row.get("reward_model"), dict) else None
    if isinstance(gt, str) and gt.lstrip()[:1] in "[{":
        try:
            gt = json.loads(gt)
        except ValueError:
            return False
    return isinstance(gt, (dict, list))


# ROWS: benchmark and training files
#
# A problem is {"id": str, "problem": str, "gold": str, "meta": dict}. Field conventions differ per
# file (checked on the shared copies): AIME 2024 "problem"/"answer" (str); AMC 2023 "answer" as a float
# (27.0); Minerva math has no answer field (the gold is the last \boxed{} of "solution");
# OlympiadBench has "question" (plus "context" for some), "final_answer" as a list and sometimes a
# "unit"; MATH-500 and AIME 2025 use "problem"/"answer" in their usual releases.
# ----------------------------------------------------------------------------------------------------

BENCHMARKS = {  # name -> file stems tried in --data-dir (.jsonl, then .parquet)
    "aime24": ["aime24", "aime2024", "aime_2024"],
    "aime25": ["aime25", "aime2025", "aime_2025"],
    "amc23": ["amc23", "amc2023", "amc"],
    "math500": ["math500", "math_500", "MATH-500", "math-500"],
    "minerva": ["minerva_math", "minerva"],
    "olympiadbench": ["olympiadbench", "olympiad_bench"],
    "humanevalplus": ["humanevalplus", "HumanEvalPlus"],                  # code (EvalPlus format)
    "livecodebench": ["livecodebench_v5_test", "livecodebench"],         # code (public tests)
}
PROBLEM_FIELDS = ("problem", "question", "prompt")
ANSWER_FIELDS = ("answer", "final_answer", "gold")
ID_FIELDS = ("id", "idx", "unique_id", "problem_id")


def last_boxed(text: str) -> str | None:
    r"""Content of the last \boxed{...} (or \fbox{...}, \framebox{...}) in text, braces matched; None if none."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox|framebox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            best = text[m.end():i - 1].strip()
    return best


def _gold_str(value) -> str:
    """A gold answer as a string: floats that are integers lose their '.0' (AMC's 27.0 -> '27'), lists
    (OlympiadBench's final_answer) are joined with ', ', and $...$ math delimiters are removed."""
    if isinstance(value, bool):
        raise ValueError(f"boolean answer {value!r}")
    if isinstance(value, (list, tuple)):
        return ", ".join(_gold_str(v) for v in value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite answer {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        s = value.strip()
        if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
            # OlympiadBench writes several answers as "$69$,$84$"
            s = re.sub(r"\$\s*,\s*\$", ", ", s).strip("$").strip()
        return s
    raise ValueError(f"answer of type {type(value).__name__}")


def parse_row(row, where: str, problem_field: str = "", answer_field: str = "", id_field: str = "",
              default_id: str = "") -> dict:
    """One benchmark row -> problem dict. Raises ValueError whose message names `where` (file:line)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not a JSON object")
    pf = [problem_field] if problem_field else [f for f in PROBLEM_FIELDS if f in row]
    if not pf or pf[0] not in row:
        raise ValueError(f"{where}: no problem field (looked for {problem_field or ', '.join(PROBLEM_FIELDS)})")
    problem, templated = row[pf[0]], False
    gt = row["reward_model"].get("ground_truth") if isinstance(row.get("reward_model"), dict) else None
    if isinstance(problem, list) and gt is not None:      # verl/DAPO rows: chat messages, already templated
        if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in problem):
            raise ValueError(f"{where}: 'prompt' messages need a 'content' string each")
        templated = True                                   # kept as messages: prompt_ids wraps them
    if not templated and (not isinstance(problem, str) or not problem.strip()):
        raise ValueError(f"{where}: empty or non-text problem in field {pf[0]!r}")
    if not templated and isinstance(row.get("context"), str) and row["context"].strip():   # OlympiadBench
        problem = row["context"].strip() + "\n" + problem
    if answer_field:
        if answer_field not in row:
            raise ValueError(f"{where}: no field {answer_field!r}")
        raw, source = row[answer_field], answer_field
    else:
        source = next((f for f in ANSWER_FIELDS if row.get(f) not in (None, "", [])), None)
        if source is not None:
            raw = row[source]
        elif gt not in (None, "", []):
            raw, source = gt, "reward_model.ground_truth"
        elif isinstance(row.get("solution"), str):            # Minerva: the last box of the solution
            raw, source = last_boxed(row["solution"]), "solution (last \\boxed{})"
            if raw is None:
                raise ValueError(f"{where}: no answer field and no \\boxed{{}} in solution")
        else:
            raise ValueError(f"{where}: no answer (looked for {', '.join(ANSWER_FIELDS)}, or a solution with \\boxed{{}})")
    try:
        gold = _gold_str(raw)
    except ValueError as e:
        raise ValueError(f"{where}: bad answer in {source!r}: {e}") from None
    if not gold:
        raise ValueError(f"{where}: empty answer in {source!r}")
    idf = [id_field] if id_field else [f for f in ID_FIELDS if f in row]
    if id_field and id_field not in row:
        raise ValueError(f"{where}: no field {id_field!r}")
    pid = str(row[idf[0]]) if idf else default_id
    meta = {k: row[k] for k in ("unit", "answer_type", "is_multiple_answer") if row.get(k) is not None}
    if templated:
        meta["templated"] = True                           # --prompt-template is not applied again
    return {"id": pid, "problem": problem, "gold": gold, "meta": meta}


def read_rows(path: Path):
    """Yield (where, row-or-exception, default id) per row of a .jsonl (id: line number) or .parquet (row index) file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}:row {i}", row, i
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line), lineno
            except json.JSONDecodeError as e:
                yield f"{path}:{lineno}", ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})"), lineno


# ----------------------------------------------------------------------------------------------------
# PROMPTS: the templates (lad.py's default is "boxed") and the one encoder of a prompt into token ids
# ----------------------------------------------------------------------------------------------------

TEMPLATES = {
    # lad.py's default --prompt-template: its checkpoints are scored in the format they were rewarded in
    "boxed": "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}.",
    # DAPO-Math-17k's own prompt (the paper's training set, App. C.2), for models trained on it verbatim
    "dapo": ("Solve the following math problem step by step. The last line of your response should be of "
             "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
             "{problem}\n\nRemember to put your answer on its own line after \"Answer:\"."),
    "raw": "{problem}",
    # code rows (DeepCoder's rule: the program is the response's last fenced python block)
    "code": ("{problem}\n\nWrite your solution in Python 3 and put the complete program in a single "
             "```python code block at the end of your response."),
}


def render_prompt(template: str, problem: str) -> str:
    text = TEMPLATES.get(template, template)
    return text.replace("{problem}", problem)      # not str.format: problems and templates contain braces


def use_chat_template(tok, chat: str) -> bool:
    """--chat auto|true|false against a tokenizer: auto = when the tokenizer has a chat template."""
    has = bool(getattr(tok, "chat_template", None))
    if chat == "true" and not has:
        raise UsageError("--chat true, but the tokenizer has no chat template")
    return has if chat == "auto" else chat == "true"


def prompt_ids(tok, prompt, use_chat: bool) -> list[int]:
    """Token ids of one prompt (a string, or chat messages [{role, content}]): the messages (a string is
    one user turn) in the chat template with the assistant prefix, or the contents joined by blank
    lines without added special tokens. lad.py's training prompts and eval.py's are encoded here."""
    msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if use_chat:
        x = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(x["input_ids"]) if isinstance(x, dict) or hasattr(x, "keys") else list(x)
    return list(tok("\n\n".join(m["content"] for m in msgs), add_special_tokens=False)["input_ids"])


def load_file(path: Path, problem_field: str = "", answer_field: str = "", id_field: str = "") -> tuple[list[dict], list[str]]:
    """All rows of a benchmark or training file -> (problems, errors); each error names its file:line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"data file not found: {path}")
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise UsageError(f"{path}: unknown data format (expected .jsonl or .parquet)")
    problems, errors, seen = [], [], {}
    try:
        for where, row, i in read_rows(path):
            try:
                if isinstance(row, Exception):
                    raise row
                p = code_problem(row, where, str(i)) if is_code_row(row) else \
                    {**parse_row(row, where, problem_field, answer_field, id_field, default_id=str(i)),
                     "kind": answer_kind(row, where)}
                if p["id"] in seen:
                    raise ValueError(f"{where}: duplicate id {p['id']!r} (first at {seen[p['id']]})")
                seen[p["id"]] = where
                problems.append(p)
            except ValueError as e:
                errors.append(str(e))
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read: {e}") from None
    except Exception as e:                                  # pyarrow's own errors on a broken parquet
        if type(e).__module__.startswith("pyarrow"):
            raise UsageError(f"{path}: cannot read parquet: {e}") from None
        raise
    return problems, errors


def answer_kind(row, where: str) -> str:
    """The task kind of a row with an answer: its "kind" field, math (the default) or sum (builtin-sum's rows
    written to a file, e.g. a split of its training prompts); code rows are recognised by their tests."""
    kind = row.get("kind", "math")
    if kind not in ("math", "sum"):
        raise ValueError(f"{where}: kind {kind!r}; a row with an answer is math or sum (code rows carry tests)")
    return kind


def code_problem(row, where: str, default_id: str) -> dict:
    """A code row -> problem (sandbox.py parses the test formats; its errors name file:line)."""
    p = sandbox.parse_code_row(row, where)
    pid = next((str(row[f]) for f in ("task_id", "question_id", *ID_FIELDS) if row.get(f) is not None), default_id)
    return {"id": pid, "problem": p["prompt"], "gold": p, "meta": {}, "kind": "code"}


def load_rows(path, template: str, code_template: str = "") -> list[dict]:
    """Training or held-out rows of a file, every row valid or a UsageError listing each bad one.
    A row's prompt: its problem in `template` ({problem} replaced; code rows: `code_template`, default
    TEMPLATES["code"]), or its chat messages as they are."""
    problems, errors = load_file(Path(path))
    if errors:
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise UsageError(f"{len(errors)} bad row(s):\n  " + "\n  ".join(errors[:20]) + more)
    if not problems:
        raise UsageError(f"{path}: no rows")
    kinds = sorted({p["kind"] for p in problems})
    if len(kinds) > 1:
        raise UsageError(f"{path}: mixes task kinds {kinds}; one file holds one kind")
    pick = {"code": code_template or TEMPLATES["code"]}
    return [{"id": p["id"], "prompt": p["problem"] if p["meta"].get("templated") else
             render_prompt(pick.get(p["kind"], template), p["problem"]), "gold": p["gold"], "kind": p["kind"]}
            for p in problems]


def encode_rows(rows, tok, chat: str, limit: int, what: str):
    """Token ids of each row's prompt; prompts longer than `limit` tokens are skipped, counted and returned."""
    use_chat = use_chat_template(tok, chat)
    out, skipped = [], 0
    for r in rows:
        ids = prompt_ids(tok, r["prompt"], use_chat)
        if len(ids) > limit:
            skipped += 1
            continue
        out.append({**r, "ids": ids})
    if not out:
        raise UsageError(f"{what}: all {len(rows)} prompts are longer than the context allows ({limit} tokens "
                         f"= max_position_embeddings - max_new_tokens)")
    return out, skipped
