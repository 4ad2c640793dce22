"""Streaming keyword spotting on the virtual board (the firmware behind a pty): `tinyhost listen` on a minute of audio
with ten keywords at known times, `bench --mode streaming`, the microphone's stand-in, and the MLPerf Tiny streaming
DUT commands with audio over the serial link. Slow (ROMFS flash, a minute of audio): TINYHOST_SLOW=1.

The virtual ESP32-S3 with its firmware in ROMFS is used: these tests run several streams, the microphone's stand-in
and the DUT commands from one board, with room to spare; tests/test_stream_esp32_sim.py runs `tinyhost listen` as
written on the default virtual ESP32 (plain esp32, 112 KB heap)."""

import json
import os
import time

import pytest
from click.testing import CliRunner

from tinyhost.bench import sww
from tinyhost.cli import cli
from tinyhost.boardtime import BOARD_TIME_MODEL

pytestmark = pytest.mark.skipif(os.environ.get("TINYHOST_SLOW") != "1",
                                reason="about 90 s (ROMFS flash, a minute of audio): set TINYHOST_SLOW=1")

BOARD = ["--board", "sim:esp32s3-romfs", "--baud", "921600"]


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return tmp_path_factory.mktemp("sim-stream")


def _run(args):
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def test_listen_finds_ten_keywords_at_their_times_in_a_minute(state, tmp_path):
    f = sww.make_stream(tmp_path / "data", seconds=60, keywords=10, seed=1)
    out = _run(["listen", *BOARD, "--state-dir", str(state), "--model", "kws", "--wav", str(f.wav_path),
                "--json", str(tmp_path / "l.json")])
    doc = json.loads((tmp_path / "l.json").read_text())["stream"]
    assert doc["clock"] == BOARD_TIME_MODEL and doc["keeps_up"] and doc["line_keeps_up"]
    assert doc["counters"]["hops"] == 3000 and doc["counters"]["inferences_skipped"] == 0
    s = sww.score([(d["board_s"], d["label"]) for d in doc["detections"]], f.windows, 60.0, f.labels)
    assert s.true_positives >= 8 and s.false_positives <= 2, (s, out)
    assert f"board time, ESTIMATE of board-time model {BOARD_TIME_MODEL}" in out


def test_bench_streaming_reports_mlperf_figures(state, tmp_path):
    sww.make_stream(tmp_path / "data", seconds=12, keywords=3, seed=5)
    _run(["bench", *BOARD, "--state-dir", str(state), "--model", "kws", "--mode", "streaming", "--dataset",
          str(tmp_path / "data"), "--json", str(tmp_path / "b.json")])
    fig = json.loads((tmp_path / "b.json").read_text())["streaming"]
    assert fig["true_positives"] + fig["false_negatives"] == 3 and fig["true_positives"] >= 2
    assert fig["audio_s"] == 12 and fig["clock"] == BOARD_TIME_MODEL
    assert 0.5 < fig["duty_cycle"] < 1.0 and fig["energy_mj"] > 0 and fig["keeps_up"]


def test_microphone_stand_in_on_the_virtual_board(state, tmp_path):
    f = sww.make_stream(tmp_path / "data", seconds=8, keywords=2, seed=3)
    out = _run(["listen", *BOARD, "--state-dir", str(state), "--model", "kws", "--mic", "--wav", str(f.wav_path),
                "--seconds", "8", "--json", str(tmp_path / "m.json")])
    doc = json.loads((tmp_path / "m.json").read_text())["stream"]
    assert doc["counters"]["hops"] == 400 and doc["clock"] == BOARD_TIME_MODEL
    s = sww.score([(d["board_s"], d["label"]) for d in doc["detections"]], f.windows, 8.0, f.labels)
    assert s.true_positives == 2, (s, out)


def test_streaming_dut_commands_with_audio_over_the_link(state, tmp_path):
    from tinyhost import board, stream as st
    from tinyhost.features.mfcc import read_wav
    from tinyhost.protocol import T
    from tinyhost.zoo import resolve

    f = sww.make_stream(tmp_path / "data", seconds=8, keywords=2, seed=3)
    pcm = st.to_int16(read_wav(f.wav_path))
    model = resolve("kws")
    with board.connect("sim:esp32s3-romfs", baud=921600, state_dir=state) as b:
        b.flash([model])
        b.load(model)
        link = b.dev.link

        def text(cmd):
            link.take_text()
            link.t.write(cmd.encode())
            deadline = time.monotonic() + 30
            while b"m-ready" not in link.text_tail:
                assert link.next_frame(min(deadline, time.monotonic() + 0.1)) is None
                assert time.monotonic() < deadline, f"no m-ready after {cmd}"
            return [x for x in link.take_text().decode().replace("\r", "").split("\n") if x]

        assert text("state%") == ["m-[state idle]", "m-ready"]
        assert f"clock {BOARD_TIME_MODEL}" in text("start%")[0]
        frame = st.audio_frame_bytes(link.max_payload)
        for off in range(0, len(pcm), frame):
            link.request(T.AUDIO, pcm[off:off + frame], what="audio", timeout_s=30.0)
        stopped = text("stop%")
        assert stopped[0] == "Streaming stopped." and stopped[1].startswith("m-[hops 400,")
        lines = text("print_detections%")
    assert lines[0] == "Detection Timestamps (ms)" and lines[1] == "0," and lines[-1] == "m-ready"
    stamps = [int(x.rstrip(",")) / 1000 for x in lines[2:-1]]
    s = sww.score([(t, "") for t in stamps], f.windows, 8.0)
    assert s.true_positives == 2 and s.false_positives == 0, stamps


def test_the_interface_board_stand_in_plays_over_the_dut_link_and_reports_what_the_dut_detected(state, tmp_path):
    # the runner's streaming wakeword sequence (script.py's stream step) on the stand-in's two ports
    import serial

    from tinyhost import board
    from tinyhost.bench.interface_board import DutLineTap, InterfaceBoard
    from tinyhost.zoo import resolve

    f = sww.make_stream(tmp_path / "sd", seconds=8, keywords=2, seed=3)
    model = resolve("kws")

    def ask(port, cmd, timeout_s=60.0):
        port.write(f"{cmd}%".encode())
        lines, text, deadline = [], b"", time.monotonic() + timeout_s
        while not lines or "m-ready" not in lines[-1]:
            text += port.read(256)
            *done, text = text.split(b"\n")
            lines += [x.decode().strip() for x in done if x.strip()]
            assert time.monotonic() < deadline, f"no m-ready after {cmd}: {lines}"
        return lines

    with board.connect("sim:esp32s3-romfs", baud=921600, state_dir=state) as b:
        b.flash([model])
        b.load(model)
        with DutLineTap(b.dev) as tap, InterfaceBoard(tap, tmp_path / "sd") as io, \
                serial.Serial(tap.port, timeout=0.1) as dut, serial.Serial(io.port, timeout=0.1) as interface:
            assert ask(dut, "stop") == ["m-[Already idle; ignoring stop]", "m-ready"]
            assert ask(dut, "start")[0].startswith("m-[Listening for audio")
            assert ask(interface, "record_detections") == ["Now recording detections", "m-ready"]
            t0 = time.monotonic()
            played = ask(interface, "play stream.wav")
            assert played[0] == "Playing stream.wav" and played[-1] == "m-ready"
            assert all(x.startswith("played ") for x in played[1:-1]), played   # progress, every 5 s
            assert time.monotonic() - t0 >= 8.0                       # played at the audio's rate
            stopped = ask(dut, "stop")
            detections = ask(interface, "print_detections")
            duty = ask(interface, "print_dutycycle")
            own = ask(dut, "print_detections")
            assert ask(interface, "play stream.wav")[1].startswith("e-[play stream.wav: the DUT took no audio")
            assert ask(interface, "play nothing.wav")[0].startswith("e-[no file 'nothing.wav'")
    assert stopped[0] == "Streaming stopped." and stopped[1].startswith("m-[hops 400,")
    # the detections' board times, from the AUDIO replies, are the ones the DUT itself logged
    assert detections == own and detections[:2] == ["Detection Timestamps (ms)", "0,"]
    stamps = [int(x.rstrip(",")) / 1000 for x in detections[2:-1]]
    s = sww.score([(t, "") for t in stamps], f.windows, 8.0)
    assert s.true_positives == 2 and s.false_positives == 0, stamps
    # a busy interval per hop, in 10 us ticks since the stream started, as the runner's process_dutycycle reads them
    split = duty.index("Duty cycle stop times (s)")
    assert duty[0] == "Duty cycle start times (s)" and duty[-1] == "m-ready"
    starts = [int(x) for line in duty[1:split] for x in line.split(",") if x.strip()]
    stops = [int(x) for line in duty[split + 1:-1] for x in line.split(",") if x.strip()]
    assert len(starts) == len(stops) == 400 and all(a <= z for a, z in zip(starts, stops))
    assert all(z0 <= a1 for z0, a1 in zip(stops, starts[1:]))
    assert 0.5 < sum(z - a for a, z in zip(starts, stops)) / (stops[-1] - starts[0]) < 1.0     # the duty cycle


def test_a_board_asked_for_more_than_it_can_says_so(state, tmp_path):
    # an inference every hop (20 ms) on a board that needs 374 ms for one: inferences skipped, counted, said
    f = sww.make_stream(tmp_path / "data", seconds=6, keywords=1, seed=2)
    out = _run(["listen", *BOARD, "--state-dir", str(state), "--model", "kws", "--wav", str(f.wav_path),
                "--infer-every", "1", "--json", str(tmp_path / "s.json")])
    doc = json.loads((tmp_path / "s.json").read_text())["stream"]
    assert doc["counters"]["inferences_skipped"] > 0 and not doc["keeps_up"]
    assert "does NOT keep up" in out
