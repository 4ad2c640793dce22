#!/usr/bin/env bash
# Lab 3, Quantization: the same keyword model as float32, int8 post-training (PTQ) and int8 quantization-aware
# (QAT), made by the training pipeline and shipped in models/kws/variants/ (no TensorFlow needed here).
#   TINYHOST_LAB_BOARD   the board (default: sim, the virtual ESP32; with a kit: esp32, esp32s3, nano33ble)
#   TINYHOST_LAB_FAST=1  24 test samples instead of all 196 (the test suite runs every lab this way)
set -euo pipefail
cd "$(dirname "$0")"
BOARD=${TINYHOST_LAB_BOARD:-sim}
if [ "${TINYHOST_LAB_FAST:-0}" = 1 ]; then N=24; else N=196; fi
VARIANTS=$(python3 -c "from tinyhost import paths; print(paths.models_dir() / 'kws' / 'variants')")
TESTSET=$(python3 -c "from tinyhost import zoo; print(zoo.shipped_testset(zoo.find('kws')))")
mkdir -p out
echo "$N" > out/samples.txt
set -x
tinyhost model inspect "$VARIANTS/kws_float32.tflite" > out/inspect-kws_float32.txt 2>&1 \
  || echo "exit $?" >> out/inspect-kws_float32.txt           # the board's engine runs int8 models only
for V in kws_int8_ptq kws_int8_qat; do
  tinyhost model inspect "$VARIANTS/$V.tflite" --board "$BOARD" --json "out/inspect-$V.json"
  tinyhost verify --board "$BOARD" --model "$VARIANTS/$V.tflite" --json "out/verify-$V.json"
done
# the shipped test set holds int8 features quantized for the PTQ variant's input (the shipped model's): its
# accuracy on the board is the check that the board scores what TFLM scores in the notebook
tinyhost bench --board "$BOARD" --model "$VARIANTS/kws_int8_ptq.tflite" --mode accuracy --dataset "$TESTSET" \
  --limit "$N" --json out/bench-kws_int8_ptq.json
