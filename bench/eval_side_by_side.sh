#!/usr/bin/env bash
# bench/eval_side_by_side.sh -- GRPO and LAD checkpoints of the built-in task side by side, next to the warm
# start both began from (README "eval"): eval.py on builtin-sum's held-out prompts with its defaults (n = 32,
# temperature 1.0, builtin-sum's 12 new tokens), then one comparison table (paired bootstrap intervals of the
# differences) and one Pass@k plot.
#
# SPEC: "run python eval.py to score checkpoints with Avg@k, Pass@k and diversity, side by side".
#
#   bash bench/eval_side_by_side.sh <GRPO checkpoint dir> <LAD checkpoint dir> [extra eval.py flags]
#   (checkpoints: e.g. runs/compare/runs/grpo-lr0.0003-s0/ckpt-000200 and runs/compare/runs/lad-js-lr0.0003-s0/ckpt-000200
#    from python bench/train_compare.py --methods grpo lad-js --seeds 1 --sweep false --claims false --common false)
#
# Writes runs/eval/{warm-start,grpo,lad}/ and docs/eval/compare.md, docs/eval/tiny_pass_at_k.png
# (EVAL_DOCS=<dir> to write the table and plot elsewhere).
# Deliberately left out: training (bench/train_compare.py), the math and code benchmarks (eval.py --benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: bash bench/eval_side_by_side.sh GRPO_CHECKPOINT LAD_CHECKPOINT [eval.py flags]" >&2
    exit 2
fi
grpo=$1 lad=$2
shift 2
python eval.py --benchmark builtin-sum --name warm-start --out-dir runs/eval/warm-start "$@"
python eval.py --benchmark builtin-sum --model "$grpo" --name grpo --out-dir runs/eval/grpo "$@"
python eval.py --benchmark builtin-sum --model "$lad" --name lad --out-dir runs/eval/lad "$@"
# GRPO first: the differences in the table are lad - grpo (and warm-start - grpo)
python eval.py --compare runs/eval/grpo/summary.json runs/eval/lad/summary.json runs/eval/warm-start/summary.json \
    --out-dir "${EVAL_DOCS:-docs/eval}" --plot "${EVAL_DOCS:-docs/eval}/tiny_pass_at_k.png"
