"""Streaming keyword spotting on the default virtual board (`--board sim`: the plain esp32 profile, 112 KB heap, the
firmware as .mpy files on its flash): `tinyhost listen` as written, with no --baud, on a short stream with keywords
at known times. The model is loaded leaving the stream's heap free (its weights then stream from flash), the front
end and the stream's buffers fit beside it, and the virtual board comes up at a line rate that carries the audio."""

import json

import pytest
from click.testing import CliRunner

from tinyhost import stream as st
from tinyhost.bench import sww
from tinyhost.boardtime import BOARD_TIME_MODEL
from tinyhost.cli import cli

# Run alone (the Makefile's serial pass, as the VWW flow on this board): the stream's buffers fit with a few KB to
# spare, and beside other workers the heap's layout has been seen to leave no block for them.
pytestmark = [pytest.mark.sim, pytest.mark.serial]


def test_listen_on_the_default_virtual_board_finds_the_keywords_and_keeps_up(tmp_path):
    f = sww.make_stream(tmp_path / "data", seconds=12, keywords=3, seed=5)
    r = CliRunner().invoke(cli, ["listen", "--board", "sim", "--state-dir", str(tmp_path / "state"), "--model", "kws",
                                 "--wav", str(f.wav_path), "--json", str(tmp_path / "l.json")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert f"virtual board started at {st.virtual_board_baud()} baud" in r.output
    doc = json.loads((tmp_path / "l.json").read_text())
    stream = doc["stream"]
    assert doc["provenance"]["board"] == "esp32" and stream["baud"] == 460800
    assert stream["clock"] == BOARD_TIME_MODEL and stream["keeps_up"] and stream["line_keeps_up"]
    c = stream["counters"]
    assert c["hops"] == 600 and c["inferences_skipped"] == 0 and c["hops_dropped"] == 0
    s = sww.score([(d["board_s"], d["label"]) for d in stream["detections"]], f.windows, 12.0, f.labels)
    assert s.true_positives >= 2 and s.false_positives <= 1, (s, r.output)


def test_a_virtual_board_given_a_rate_keeps_it(tmp_path):
    # --baud is the user's: a rate too slow for the audio still streams, its board times stretched, and says so
    f = sww.make_stream(tmp_path / "data", seconds=2, keywords=1, seed=2)
    r = CliRunner().invoke(cli, ["listen", "--board", "sim", "--baud", "230400", "--state-dir",
                                 str(tmp_path / "state"), "--model", "kws", "--wav", str(f.wav_path)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "virtual board started at" not in r.output
    assert "230400 baud carries the audio at 0.71x real time" in r.output
