#!/usr/bin/env bash
# Lab 4, Memory: which model fits which board; weights in RAM, streamed from flash, or read in place from ROMFS.
#   TINYHOST_LAB_BOARDS  the boards measured (default: "sim sim:esp32-romfs", the virtual ESP32 without and with a
#                        ROMFS partition; with a kit: "esp32", or "esp32 esp32-romfs" for a board with ROMFS)
#   TINYHOST_LAB_FAST=1  the notebook's model ladder is shorter (the test suite runs every lab this way)
set -euo pipefail
cd "$(dirname "$0")"
BOARDS=${TINYHOST_LAB_BOARDS:-"sim sim:esp32-romfs"}
mkdir -p out
set -x
tinyhost model inspect kws --json out/inspect-kws.json     # every board profile: fits?, weights where, peak RAM
tinyhost model inspect vww --json out/inspect-vww.json
for BOARD in $BOARDS; do
  tinyhost flash --board "$BOARD" --model kws
  tinyhost bench --board "$BOARD" --model kws --mode memory --json "out/memory-${BOARD//:/-}.json"
done
