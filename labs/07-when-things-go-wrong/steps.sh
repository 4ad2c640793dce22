#!/usr/bin/env bash
# Lab 7, When things go wrong: a noisy line, a corrupt model, Ctrl-C and --resume, a client without a key.
#   TINYHOST_LAB_FAST=1  fewer samples (the test suite runs every lab this way)
# Runs on the virtual board only: it injects the line faults itself (box in README.md for a kit).
set -uo pipefail
cd "$(dirname "$0")"
if [ "${TINYHOST_LAB_FAST:-0}" = 1 ]; then N=12; STOP_AFTER=4; else N=196; STOP_AFTER=60; fi
RATE=0.001                                            # per byte, both directions: drop and corrupt
mkdir -p out
: > out/exit-codes.txt
code() { echo "$1 $2" >> out/exit-codes.txt; }      # what each step that should fail exited with
set -x
tinyhost flash --board sim --model kws || exit 1

# 1. the same accuracy run on a clean line and on a line that drops and corrupts bytes (seeded)
tinyhost bench --board sim --model kws --mode accuracy --limit "$N" --json out/clean.json || exit 1
tinyhost sim --board esp32 --drop-rate "$RATE" --corrupt-rate "$RATE" --seed 2 > out/sim.txt 2>&1 &
SIM=$!
for _ in $(seq 100); do grep -q /dev/ out/sim.txt && break; sleep 0.1; done
PORT=$(grep -o '/dev/[a-z/]*[0-9]*' out/sim.txt | head -1)
tinyhost bench --port "$PORT" --model kws --mode accuracy --limit "$N" --json out/noisy.json
code noisy-line $?
kill -INT $SIM; wait $SIM

# 2. a corrupt model: its header broken, then 64 bytes of a weight buffer flipped (a well-formed file)
python3 -c "
import pathlib, struct, tinyhost.zoo as z
good = z.resolve('kws').read_bytes()
b = bytearray(good); b[4:8] = b'XXXX'; pathlib.Path('out/header-broken.tflite').write_bytes(b)
b = bytearray(good); at = b.index(struct.pack('<I', 4096)) + 4 + 1000   # inside a buffer of 4096 weight bytes
b[at:at + 64] = bytes(x ^ 0x5A for x in b[at:at + 64]); pathlib.Path('out/weights-flipped.tflite').write_bytes(b)"
tinyhost model inspect out/header-broken.tflite
code inspect-header-broken $?
tinyhost flash --board sim --model out/header-broken.tflite
code flash-header-broken $?
tinyhost model inspect out/weights-flipped.tflite > /dev/null
code inspect-weights-flipped $?
tinyhost verify --board sim --model out/weights-flipped.tflite --samples 2 --json out/verify-flipped.json
code verify-weights-flipped $?

# 3. Ctrl-C in the middle of an accuracy run, then --resume
set -m                                                # the run gets Ctrl-C (SIGINT) as from a terminal
rm -f out/journal.jsonl
tinyhost bench --board sim --model kws --mode accuracy --limit "$N" --journal out/journal.jsonl \
  --json out/resumed.json &
RUN=$!
for _ in $(seq 600); do [ "$(wc -l < out/journal.jsonl 2>/dev/null || echo 0)" -gt "$STOP_AFTER" ] && break; sleep 0.05; done
kill -INT $RUN; wait $RUN
code interrupted $?
set +m
wc -l < out/journal.jsonl > out/journal-lines-at-interrupt.txt
tinyhost bench --board sim --model kws --mode accuracy --limit "$N" --journal out/journal.jsonl \
  --json out/resumed.json --resume || exit 1

# 4. an offload server that wants a key, a board with one and a board without
tinyhost offload keygen --token-file out/keys.json --device-id lab7-board || exit 1
SERVER=127.0.0.1:$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
tinyhost serve --model kws --token-file out/keys.json --listen "$SERVER" > out/serve.txt 2>&1 &
SERVE=$!
for _ in $(seq 100); do grep -q listening out/serve.txt && break; sleep 0.1; done
tinyhost bench --board sim --model kws --offload --server "$SERVER" --offload-inputs "$N" --device-id lab7-board \
  --token-file out/keys.json --json out/offload-key.json || exit 1
tinyhost bench --board sim --model kws --offload --server "$SERVER" --offload-inputs "$N" --device-id intruder \
  --json out/offload-nokey.json
code offload-without-key $?
kill -INT $SERVE; wait $SERVE
exit 0
