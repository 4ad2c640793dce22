#!/usr/bin/env bash
# Lab 2, Features and keywords: make keyword clips (espeak-ng, or your own recordings), MFCC features, infer on
# the board, and find which words the model confuses.
#   TINYHOST_LAB_BOARD   the board (default: sim, the virtual ESP32; with a kit: esp32, esp32s3, nano33ble)
#   TINYHOST_LAB_FAST=1  one voice per word (the test suite runs every lab this way)
#   Your own recordings: put 1 s, 16 kHz mono WAVs in clips/<word>/ (a word from the model's twelve classes, or
#   any other folder name for 'unknown'), set TINYHOST_LAB_CLIPS=mine, and run this again.
set -euo pipefail
cd "$(dirname "$0")"
BOARD=${TINYHOST_LAB_BOARD:-sim}
if [ "${TINYHOST_LAB_FAST:-0}" = 1 ]; then VOICES="m3"; SPEEDS="150"; else VOICES="m1 m3 m7 f2 f4 croak"; SPEEDS="130 170"; fi
WORDS="yes no up down left right on off stop go"
OTHERS="cat house bird"                               # words that are not keywords: 'unknown'
mkdir -p out
if [ "${TINYHOST_LAB_CLIPS:-espeak}" != mine ]; then
  rm -rf clips
  for word in $WORDS $OTHERS; do
    mkdir -p "clips/$word"
    for voice in $VOICES; do for speed in $SPEEDS; do
      espeak-ng -v "en-us+$voice" -s "$speed" -w "clips/$word/$voice-$speed.wav" "$word"
    done; done
  done
  mkdir -p clips/silence
  python3 -c "import wave; w = wave.open('clips/silence/quiet.wav', 'wb'); w.setnchannels(1); w.setsampwidth(2)
w.setframerate(16000); w.writeframes(bytes(32000)); w.close()"
fi
set -x
tinyhost flash --board "$BOARD" --model kws
tinyhost bench --board "$BOARD" --model kws --mode accuracy --dataset clips --json out/clips.json
