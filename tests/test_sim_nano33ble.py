"""The Nano 33 BLE Sense as a new user meets it: a fresh virtual nano33ble (64 KB filesystem, 256 KB ROMFS
partition) takes the firmware and the KWS model with `tinyhost flash`, and `tinyhost bench` runs KWS on it.

The filesystem is too small to stage the ROMFS image, so this is also the test of writing the partition through
the raw REPL (tinyhost.romfs). A fast emulated line keeps it short (the link is not under test here)."""

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.sim, pytest.mark.slow]

BAUD = 1_000_000
KWS_DIR = Path(__file__).parents[1] / "models" / "kws"
N_SAMPLES = 6


def tinyhost(*args):
    from tinyhost.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code in (0, None), f"tinyhost {' '.join(args)} exited with {exit_info.value.code}"


def test_fresh_nano33ble_takes_firmware_and_kws_and_benches_it(tmp_path):
    from tinyhost import boards
    from tinyhost.sim import board_state_dir
    from tinyhost.sim.state import read_flash_files

    state = tmp_path / "nano"
    board = ["--board", "sim:nano33ble", "--state-dir", str(state), "--baud", str(BAUD)]
    tinyhost("flash", *board, "--model", "kws")

    # the filesystem holds main.py (and the board's boot.py), and on a virtual board the model's board-time
    # estimates for its clock (/board_time); the firmware package and the model are in /rom
    profile = boards.load("nano33ble")
    assert set(read_flash_files(board_state_dir("nano33ble", state) / "flash.img", profile)) == {
        "/boot.py", "/main.py", "/board_time"}

    accuracy = tmp_path / "accuracy.json"
    tinyhost("bench", *board, "--model", "kws", "--dataset", str(KWS_DIR / "testset"), "--mode", "accuracy",
             "--limit", str(N_SAMPLES), "--journal", str(tmp_path / "journal.jsonl"), "--json", str(accuracy))

    result = json.loads(accuracy.read_text())
    assert result["provenance"]["board"] == "nano33ble" and result["provenance"]["virtual"] is True
    samples = result["accuracy"]["samples"]
    assert len(samples) == N_SAMPLES

    from tinyhost.model import oracle

    if not oracle.available():
        pytest.skip("tflite-micro is not installed: predictions not compared with TFLM")
    tflm = oracle.TflmOracle(KWS_DIR / "kws.tflite")
    for sample in samples:
        x = np.frombuffer((KWS_DIR / "testset" / sample["file"]).read_bytes(), dtype=np.int8).reshape(1, 49, 10, 1)
        assert sample["predicted"] == int(np.argmax(tflm.run(x))), sample["file"]
