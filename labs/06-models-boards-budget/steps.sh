#!/usr/bin/env bash
# Lab 6, N models x M boards under a budget: an experiment file, its Pareto fronts, and two budgets (a satellite,
# a battery keyword sensor).
#   TINYHOST_LAB_FAST=1  one board, two modes, 4 samples, short windows (the test suite runs every lab this way)
set -euo pipefail
cd "$(dirname "$0")"
SET=()
if [ "${TINYHOST_LAB_FAST:-0}" = 1 ]; then
  SET=(--set 'boards=[sim:esp32]' --set 'modes=[local]' --set bench.limit=4 --set bench.window_s=0.1
       --set bench.inputs=1 --set bench.min_inferences=3)
fi
mkdir -p out
set -x
tinyhost budget disco2.yaml                                   # the satellite: what on-board filtering changes
tinyhost experiment plan experiment.yaml "${SET[@]}"          # the cells, which do not fit, a time estimate
tinyhost experiment run experiment.yaml "${SET[@]}"           # every cell; Ctrl-C, then --resume, continues
tinyhost experiment report experiment.yaml "${SET[@]}" --out out/report    # tables, Pareto plots (HTML)
tinyhost budget experiment.yaml                               # the keyword sensor's budget from the measured cells
tinyhost results export --store results.duckdb --format csv --out out/cells.csv --sql \
  "select model, board_name, mode, accuracy, board_ms, energy_uj, ram_bytes, offloaded_fraction from runs
   where status = 'ok' and session_id = (select max(session_id) from runs)"
