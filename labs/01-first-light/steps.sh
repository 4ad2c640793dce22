#!/usr/bin/env bash
# Lab 1, First light: firmware and a model on a board, what the board says, what the model is, a first benchmark.
#   TINYHOST_LAB_BOARD  the board: sim (default: the virtual ESP32), esp32, esp32s3, nano33ble (a kit on USB)
#   TINYHOST_LAB_FAST=1 short windows (the test suite runs every lab this way)
set -euo pipefail
cd "$(dirname "$0")"
BOARD=${TINYHOST_LAB_BOARD:-sim}
if [ "${TINYHOST_LAB_FAST:-0}" = 1 ]; then WINDOW_S=0.3; INPUTS=2; else WINDOW_S=10; INPUTS=5; fi
mkdir -p out
set -x
tinyhost flash --board "$BOARD" --model kws
tinyhost info --board "$BOARD" --json out/info.json
tinyhost model inspect kws --board "$BOARD" --json out/inspect.json
tinyhost bench --board "$BOARD" --model kws --mode performance --window-s "$WINDOW_S" --inputs "$INPUTS" \
  --json out/bench.json
