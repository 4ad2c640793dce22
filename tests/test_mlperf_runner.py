"""The official MLPerf Tiny runner (mlcommons/tiny benchmark/runner) driving tinyfw on a virtual board through
benchmarks/mlperf_runner.py, its streaming wakeword test with tinyhost's interface-board stand-in.

Needs the runner's code, which is not in this repository: MLPERF_TINY_RUNNER=<clone of mlcommons/tiny>/benchmark/runner
and what it imports (pip install -e '.[mlperf-runner]'); skipped otherwise. About a minute (a ROMFS flash, ten
seconds of audio played at its rate)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNER = os.environ.get("MLPERF_TINY_RUNNER", "")
MISSING = [m for m in ("yaml", "usb", "sklearn", "matplotlib", "scipy") if importlib.util.find_spec(m) is None]

pytestmark = [
    pytest.mark.skipif(not RUNNER or not (Path(RUNNER) / "main.py").is_file(),
                       reason="set MLPERF_TINY_RUNNER to mlcommons/tiny's benchmark/runner folder"),
    pytest.mark.skipif(bool(MISSING), reason=f"the runner imports {', '.join(MISSING)}: "
                                             "pip install -e '.[mlperf-runner]'"),
]


def test_the_runners_streaming_mode_plays_the_short_wav_over_the_dut_link_and_scores_the_detections(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "mlperf_runner.py"), "--runner-dir", RUNNER,
                          "--benchmark", "sww01", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    (session,) = (tmp_path / "sww01" / "sessions").iterdir()
    log = (session / "log.txt").read_text()
    assert "Device model retrieved: sww01" in log and "Playing short_wav_easy10s.wav" in log
    # the runner's own scoring of the detections the stand-in reported (streaming_ww_utils.summarize_sww_result)
    results = (session / "results.txt").read_text()
    m = re.search(r"Accuracy: (\d+) True positives, (\d+) False negatives, (\d+) False positives", results)
    assert m, results
    windows = json.loads((Path(RUNNER) / "sww_data_dir" / "sww_short_test.json").read_text())[0]["detection_windows"]
    assert int(m[1]) + int(m[2]) == len(windows)
    assert re.search(r"Average duty cycle: 0\.\d+", results) and "Average period: 0.02" in results
    (record,) = json.loads((session / "results.json").read_text())
    detections = record["infer"]["detections"]
    assert detections[0] == 0 and len(detections) >= 2, detections   # the start, then the board's detections in ms
    assert detections == sorted(detections) and detections[-1] < 10_000
    assert len(record["dutycycle"]["start_times_s"]) == 500        # a busy interval for each of 500 hops of 20 ms
    assert "played short_wav_easy10s.wav (10.0 s of audio" in run.stdout
