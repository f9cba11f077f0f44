#!/usr/bin/env bash
# Retrain the embedded base models with the pretraining recipes, one after another, copy each
# exported directory to dflow/assets/<name>/, and evaluate it on the test prompts
# (scripts/eval_bases.py prints the table that docs/pretraining.md shows).
#
# Usage: scripts/make_base_models.sh [name ...]    (default: all ten; names below)
# Logs and checkpoints go to runs/ (ignored by git); only dflow/assets/<name>/ changes in the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
DFLOW=${DFLOW:-.venv/bin/dflow}
PYTHON=${PYTHON:-.venv/bin/python}

declare -A RECIPE=(
  [shapes_uniform]=recipes/shapes/pretrain_uniform.yaml
  [shapes_mask]=recipes/shapes/pretrain_mask.yaml
  [glyphs_uniform]=recipes/glyphs/pretrain_uniform.yaml
  [sudoku_mask]=recipes/sudoku/pretrain_mask.yaml
  [sudoku_uniform]=recipes/sudoku/pretrain_uniform.yaml
  [countdown_mask]=recipes/countdown/pretrain_mask.yaml
  [countdown_uniform]=recipes/countdown/pretrain_uniform.yaml
  [countdown4_uniform]=recipes/countdown/pretrain_n4_uniform.yaml
  [arithmetic_mask]=recipes/arithmetic/pretrain_mask.yaml
  [arithmetic_uniform]=recipes/arithmetic/pretrain_uniform.yaml
)
declare -A EXPORT=(
  [shapes_uniform]=runs/shapes_pretrain_uniform/export
  [shapes_mask]=runs/shapes_pretrain_mask/export
  [glyphs_uniform]=runs/glyphs_pretrain_uniform/export
  [sudoku_mask]=runs/sudoku_pretrain_mask/export
  [sudoku_uniform]=runs/sudoku_pretrain_uniform/export
  [countdown_mask]=runs/countdown_pretrain_mask/export
  [countdown_uniform]=runs/countdown_pretrain_uniform/export
  [countdown4_uniform]=runs/countdown4_pretrain_uniform/export
  [arithmetic_mask]=runs/arithmetic_pretrain_mask/export
  [arithmetic_uniform]=runs/arithmetic_pretrain_uniform/export
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(shapes_uniform shapes_mask glyphs_uniform sudoku_mask sudoku_uniform countdown_mask countdown_uniform countdown4_uniform arithmetic_mask arithmetic_uniform)

for name in "${names[@]}"; do
  [ -n "${RECIPE[$name]:-}" ] || { echo "unknown base name=$name; known: ${!RECIPE[*]}" >&2; exit 2; }
  echo "== $name: ${RECIPE[$name]} ($(date -u +%H:%M:%S))"
  start=$(date +%s)
  "$DFLOW" fit --config "${RECIPE[$name]}" --trainer.enable_progress_bar=false
  echo "== $name trained in $(( ($(date +%s) - start) / 60 )) min"
  rm -rf "dflow/assets/$name"
  mkdir -p dflow/assets
  cp -r "${EXPORT[$name]}" "dflow/assets/$name"
done
"$PYTHON" scripts/eval_bases.py "${names[@]}"
