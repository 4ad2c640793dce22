"""Streaming keyword spotting, host side: the MLPerf Tiny scoring rule, the synthetic stream, line rates, the codecs
shared with the firmware, the board-time file, and the commands' errors. No virtual board (see test_stream_sim.py)."""

import ast
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinyhost import boards, flash
from tinyhost import protocol as P
from tinyhost import stream as st
from tinyhost.bench import sww
from tinyhost.boardtime import BOARD_TIME_MODEL
from tinyhost.cli import cli
from tinyhost.errors import UsageError

DEVICE = Path(__file__).resolve().parents[1] / "device" / "tinyfw"
KWS = Path(__file__).resolve().parents[1] / "models" / "kws" / "kws.tflite"


def _device_constant(module, name):
    for node in ast.parse((DEVICE / module).read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{module} has no {name}")


def _device_constant_call(module, name):
    """The value of ``NAME = const(value)`` (or a plain ``NAME = value``) at the top of a firmware module."""
    for node in ast.parse((DEVICE / module).read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name:
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "const":
                value = value.args[0]
            return ast.literal_eval(value)
    raise AssertionError(f"{module} has no {name}")


def test_score_follows_the_benchmark_rule():
    windows = [(1.0, 1.5), (5.0, 5.4), (10.0, 10.6)]
    detections = [(1.6, "yes"), (2.4, "yes"),          # in [1.0, 2.5]: one true positive (both taken)
                  (6.5, "no"),                          # after 5.4 + 1 s: a false positive, the keyword missed
                  (6.9, "no"), (8.0, "no"),             # 6.9 within 1 s of 6.5: debounced; 8.0 another
                  (9.99, "go")]                         # before the start of the third: false positive
    s = sww.score(detections, windows, 3600.0, ["yes", "no", "go"])
    assert (s.true_positives, s.false_negatives, s.false_positives) == (1, 2, 3)
    assert s.missed == [5.0, 10.0]
    assert s.false_s == [6.5, 8.0, 9.99]
    assert s.false_accepts_per_hour == pytest.approx(3.0)
    assert s.latencies_s == [pytest.approx(0.1)] and s.labels_right == 1


def test_synthetic_stream_is_deterministic_and_keeps_its_keywords_apart(tmp_path):
    a = sww.make_stream(tmp_path / "a", seconds=20, keywords=4, seed=7)
    b = sww.make_stream(tmp_path / "b", seconds=20, keywords=4, seed=7)
    c = sww.make_stream(tmp_path / "c", seconds=20, keywords=4, seed=8)
    assert a.wav_path.read_bytes() == b.wav_path.read_bytes()
    assert a.wav_path.read_bytes() != c.wav_path.read_bytes()
    assert len(a.windows) == 4 and len(set(a.labels)) == 4 and set(a.labels) <= set(sww.KEYWORDS)
    for i, (start, end) in enumerate(a.windows):              # each keyword inside its own 5 s slot
        assert 5 * i < start < end <= 5 * (i + 1)
    [read] = sww.read(tmp_path / "a")
    assert read.windows == [tuple(w) for w in a.windows] and read.labels == a.labels and read.length_s == 20
    entry = json.loads((tmp_path / "a" / "stream.json").read_text())[0]
    assert set(entry) >= {"wav_file", "sample_rate", "length_sec", "detection_windows"}   # the runner's form


def test_data_set_errors(tmp_path):
    with pytest.raises(Exception, match="holds no streaming data set"):
        sww.read(tmp_path)
    (tmp_path / "x.json").write_text('[{"wav_file": "a.wav"}]')
    with pytest.raises(Exception, match="not a streaming data set file"):
        sww.read(tmp_path)
    with pytest.raises(Exception, match="do not fit"):
        sww.make_stream(tmp_path, seconds=5, keywords=10)


def test_line_rates_that_carry_16_khz_int16():
    frame = st.audio_frame_bytes(2048)                       # the virtual ESP32's frames: 3 hops of 640 bytes
    assert frame == 1920
    need = st.line_bits_per_s(frame)
    assert need == pytest.approx(32000 * 10 * (1920 + 14) / 1920)      # 322 kbit/s on the line
    assert not st.line_keeps_up(115200, frame) and not st.line_keeps_up(230400, frame)
    assert st.line_keeps_up(460800, frame) and st.line_keeps_up(921600, frame)
    assert st.fast_enough_baud(frame) == 460800


def test_stream_start_format_is_the_firmwares():
    assert _device_constant("cmd_stream.py", "START_FORMAT") == P.STREAM_START_FORMAT
    assert _device_constant("stream.py", "COUNT_NAMES")[:6] == ("hops", "inferences", "inferences_skipped",
                                                                "hops_dropped", "detections", "events_lost")
    raw = P.pack_stream_start(3, 2, 200, 1000, P.STREAM_SOURCE_SERIAL, 0b11, 5)
    assert len(raw) == 24
    payload = (7).to_bytes(4, "little") + bytes([1]) + (1234).to_bytes(4, "little") + (1000).to_bytes(4, "little") \
        + bytes([5, 230])
    assert P.parse_audio(payload) == (7, [(1234, 1000, 5, 230)])


def test_stream_numbers_shared_with_the_firmware():
    assert _device_constant_call("stream_setup.py", "_STREAM_HEAP_BYTES") == st.STREAM_HEAP_BYTES
    for name in ("EVENT_BYTES", "BUSY_MAX", "BUSY_BYTES"):
        assert _device_constant_call("cmd_stream.py", "_" + name) == _device_constant_call("stream.py", name), name
    assert st.STREAM_KEEP_FREE_BYTES == st.STREAM_CODE_BYTES + st.STREAM_HEAP_BYTES
    keep = st.STREAM_KEEP_FREE_BYTES
    assert P.pack_load("/models/kws.tflite", "auto", keep) == b"auto\x00/models/kws.tflite\x00%d" % keep
    assert P.pack_load("/models/kws.tflite") == b"auto\0/models/kws.tflite"


def test_a_virtual_board_streams_at_the_slowest_standard_rate_that_carries_the_audio():
    baud = st.virtual_board_baud()
    smallest_frame = st.audio_frame_bytes(st.SMALLEST_MAX_PAYLOAD)
    assert baud == 460800 and st.line_keeps_up(baud, smallest_frame)
    slower = [b for b in st.STANDARD_BAUDS if b < baud]
    assert slower and not any(st.line_keeps_up(b, smallest_frame) for b in slower)
    assert boards.load("esp32").baud < baud           # the profile's rate does not carry it


def test_board_time_file_lines_for_a_virtual_board():
    assert _device_constant("cmd_load.py", "BOARD_TIME_FILE") == flash.BOARD_TIME_FILE
    profile = boards.load("esp32")
    [(remote, line)] = flash.board_time_lines([KWS], profile).items()
    version, invoke_ns, hop_ns, path = line.split()
    assert remote == path == "/models/kws.tflite" and version == BOARD_TIME_MODEL
    from tinyhost.boardtime import for_board
    assert int(invoke_ns) == for_board(KWS, profile, True, "viper").total_ns


def _error(args):
    r = CliRunner().invoke(cli, args)
    assert isinstance(r.exception, UsageError), r.output
    return str(r.exception)


def test_listen_needs_one_audio_source():
    assert "give --wav FILE or --mic" in _error(["listen", "--board", "sim", "--model", "kws"])
    assert "threshold 2.0 is not in (0, 1]" in _error(["listen", "--board", "sim", "--model", "kws", "--wav", "x.wav",
                                                       "--threshold", "2"])


def test_bench_streaming_needs_a_dataset():
    assert "--mode streaming needs --dataset DIR" in _error(["bench", "--board", "sim", "--model", "kws", "--mode",
                                                             "streaming"])


def test_microphone_settings_from_the_board_profiles():
    from tinyhost import mic

    assert _device_constant("mic.py", "PCM_FILE") == mic.PCM_FILE
    assert mic.mic_settings(boards.load("esp32")) == "0 32 25 33 32"
    assert mic.mic_settings(boards.load("esp32s3-romfs")) == "0 12 11 10 32"
    with pytest.raises(UsageError, match="PDM one: MicroPython's nrf port has no machine.I2S and no PDM driver"):
        mic.mic_settings(boards.load("nano33ble"))


_I2S_HARNESS = r'''
import sys, types
sys.path.insert(0, DEVICE)
calls = []
machine = types.ModuleType("machine")
class Pin:
    def __init__(self, n):
        self.n = n
    def __repr__(self):
        return "Pin(%d)" % self.n
class I2S:
    RX = "RX"
    MONO = "MONO"
    def __init__(self, i2s_id, **kw):
        calls.append((i2s_id, {k: repr(v) if isinstance(v, Pin) else v for k, v in kw.items()}))
machine.Pin, machine.I2S = Pin, I2S
sys.modules["machine"] = machine
from tinyfw import mic
i2s, bits = mic.make("0 32 25 33 32", 4096)
print(repr((calls, bits)))
'''


def test_firmware_constructs_machine_i2s_from_the_settings():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", f"DEVICE = {str(DEVICE.parent)!r}\n" + _I2S_HARNESS],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    calls, bits = eval(out.stdout)
    assert calls == [(0, {"sck": "Pin(32)", "ws": "Pin(25)", "sd": "Pin(33)", "mode": "RX", "bits": 32,
                          "format": "MONO", "rate": 16000, "ibuf": 4096})]
    assert bits == 32


def test_each_model_streams_with_its_own_front_end():
    opts = st.StreamOptions()
    assert (st.front_end_for("models/kws01.tflite", opts).window_samples,
            st.front_end_for("models/kws01.tflite", opts).fft_size) == (480, 512)      # MLPerf Tiny's kws01
    assert st.front_end_for(KWS, opts).window_samples == 640
    assert st.front_end_for("other.tflite", opts) == opts                              # the board's default
    raw = P.pack_stream_start(window_samples=480, fft_size=512)
    assert raw[20:24] == (480).to_bytes(2, "little") + (512).to_bytes(2, "little")
