#!/usr/bin/env bash
# Lab 5, Local, offload or auto: the same test samples on the board, offloaded to a server, and offloaded only
# when the board is unsure, for a sweep of the confidence threshold.
#   TINYHOST_LAB_BOARD   the board (default: sim, the virtual ESP32; with a kit: esp32 on the same network)
#   TINYHOST_LAB_SERVER  HOST:PORT the board can reach the server at (default: a free port on 127.0.0.1)
#   TINYHOST_LAB_FAST=1  8 samples, one threshold (the test suite runs every lab this way)
set -euo pipefail
cd "$(dirname "$0")"
BOARD=${TINYHOST_LAB_BOARD:-sim}
if [ "${TINYHOST_LAB_FAST:-0}" = 1 ]; then N=8; THRESHOLDS="0.9"; else N=196; THRESHOLDS="0.3 0.5 0.7 0.8 0.9 0.95 0.99"; fi
TESTSET=$(python3 -c "from tinyhost import zoo; print(zoo.shipped_testset(zoo.find('kws')))")
SERVER=${TINYHOST_LAB_SERVER:-127.0.0.1:$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")}
mkdir -p out
set -x
tinyhost flash --board "$BOARD" --model kws
tinyhost serve --model kws --listen "$SERVER" > out/serve.txt 2>&1 &
SERVE=$!
trap 'kill -INT $SERVE 2>/dev/null; wait $SERVE' EXIT
for _ in $(seq 100); do grep -q listening out/serve.txt && break; sleep 0.1; done
tinyhost bench --board "$BOARD" --model kws --offload --server "$SERVER" --dataset "$TESTSET" --limit "$N" \
  --json out/offload-on.json                          # every sample on the board, then every one offloaded
for T in $THRESHOLDS; do
  tinyhost bench --board "$BOARD" --model kws --offload --server "$SERVER" --dataset "$TESTSET" --limit "$N" \
    --offload-mode auto --threshold "$T" --json "out/offload-auto-$T.json"
done
