#!/usr/bin/env bash
# GRPO and LAD checkpoints of the built-in task side by side (README "eval"), next to the warm start
# both began from: held-out prompts, eval.py's defaults (n = 32, temperature 1.0), one table + one plot.
#
#   bash bench/eval_side_by_side.sh <GRPO checkpoint dir> <LAD checkpoint dir> [extra eval.py flags]
#
# Writes runs/eval/{warm-start,grpo,lad}/ and docs/eval/compare.md, docs/eval/tiny_pass_at_k.png
# (EVAL_DOCS=<dir> to write the table and plot elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: bash bench/eval_side_by_side.sh GRPO_CHECKPOINT LAD_CHECKPOINT [eval.py flags]" >&2
    exit 2
fi
grpo=$1 lad=$2
shift 2
python eval.py --benchmark tiny --name warm-start --out-dir runs/eval/warm-start "$@"
python eval.py --benchmark tiny --model "$grpo" --name grpo --out-dir runs/eval/grpo "$@"
python eval.py --benchmark tiny --model "$lad" --name lad --out-dir runs/eval/lad "$@"
# GRPO first: the differences in the table are lad - grpo (and warm-start - grpo)
python eval.py --compare runs/eval/grpo/summary.json runs/eval/lad/summary.json runs/eval/warm-start/summary.json \
    --out-dir "${EVAL_DOCS:-docs/eval}" --plot "${EVAL_DOCS:-docs/eval}/tiny_pass_at_k.png"
