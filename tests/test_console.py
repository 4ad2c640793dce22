"""What the CLI prints: tables whose columns stay apart however wide the figures, plain text (no escape codes)
when the output is not a terminal, and progress that stays off a pipe."""

import io
import re
import sys

import pytest
from click.testing import CliRunner

from tinyhost import console
from tinyhost.bench import results, session
from tinyhost.cli import cli

ANSI = re.compile(r"\x1b\[")
NUMBER = re.compile(r"^(-|\d+\.\d{3})$")


def _stats(p50_us, p90_us, p99_us):
    return {"count": 4, "mean_us": p50_us, "min_us": p50_us, "p50_us": p50_us, "p90_us": p90_us, "p99_us": p99_us,
            "max_us": p99_us}


def offload_result():
    prov = results.Provenance(board="esp32", virtual=True, port="/dev/pts/9", baud=115200, firmware_version="0.4",
                              firmware_hash="abcd1234", model_path="/models/kws.tflite", model_sha256="b" * 64,
                              date="2026-03-04T05:06:07Z")
    local = results.OffloadPass(
        name="local", mode="off", requests=4, offloaded=0, fallbacks=0, retries=0, sources={"local": 4},
        latency={"total": _stats(7553, 9227, 11219), "local": _stats(7400, 9100, 11000)}, accuracy=0.75,
        correct_per_s=98.5)
    offl = results.OffloadPass(
        name="offload", mode="on", requests=4, offloaded=4, fallbacks=0, retries=1, sources={"model": 4},
        latency={"total": _stats(7842, 10529, 10984), "network": _stats(123456, 234567, 345678),
                 "server_compute": _stats(1, 2, 3)}, accuracy=1.0, correct_per_s=101.25)
    off = results.OffloadResult(server="127.0.0.1:7373", server_started=True, model_id="kws", reference=False,
                                transport="tcp", link_rate_bps=1_000_000, inputs_source="4 pseudo-random inputs",
                                passes=[local, offl])
    return results.BenchResult(provenance=prov, offload=off)


@pytest.fixture
def bench_output(monkeypatch, tmp_path):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(session, "run", lambda opts, listener: offload_result())
    out = CliRunner().invoke(cli, ["bench", "--port", "/dev/null", "--model", "kws", "--offload"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return out.output


def test_offload_latency_table_keeps_every_figure_in_its_own_column(bench_output):
    rows = {}
    for line in bench_output.splitlines():
        words = line.split()
        if words and words[0] in ("total", "local", "network", "server_compute"):
            rows[words[0]] = words[1:]
    assert set(rows) == {"total", "local", "network", "server_compute"}, bench_output
    for stage, cells in rows.items():
        # local p50 p90 p99, then offload p50 p90 p99: six figures, none run into its neighbour
        assert len(cells) == 6 and all(NUMBER.match(c) for c in cells), (stage, cells)
    assert rows["total"] == ["7.553", "9.227", "11.219", "7.842", "10.529", "10.984"]
    assert rows["network"] == ["-", "-", "-", "123.456", "234.567", "345.678"]


def test_offload_figures_side_by_side_and_no_escape_codes_off_a_terminal(bench_output):
    assert not ANSI.search(bench_output)
    line = next(ln for ln in bench_output.splitlines() if ln.startswith("accuracy (ground truth)"))
    assert line.split()[-4:] == ["75.00", "%", "100.00", "%"]
    assert "offload (on)" in bench_output


def test_a_table_wider_than_80_columns_is_not_cut_off_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    t = console.table("name", "value", right={"value"})
    t.add_row("x" * 120, "123456789.123")
    console.print_table(t, "title")
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "title"
    assert out.splitlines()[3] == "x" * 120 + "   123456789.123"       # one line, no padding left at its end
    assert "…" not in out and not ANSI.search(out)


def test_names_in_tables_and_titles_are_shown_inert_on_a_terminal(monkeypatch):
    """A sample or model name with an escape sequence or a newline, in a table cell and a title, on a terminal:
    escaped, so it can neither clear the screen nor fake a row."""
    out = io.StringIO()
    out.isatty = lambda: True
    monkeypatch.setattr(sys, "stdout", out)
    t = console.table("file", "label")
    t.add_row("a\x1b[2Jb\nfake row.wav", "yes")
    console.print_table(t, "results for m\x1b]0;owned\x07.tflite")
    text = out.getvalue()
    assert "\x1b[2J" not in text and "\x1b]0;" not in text and "\x07" not in text
    assert "a\\x1b[2Jb\\x0afake row.wav" in text and "m\\x1b]0;owned\\x07.tflite" in text


def test_progress_is_off_when_stderr_is_not_a_terminal(capsys):
    with console.TransferProgress() as progress:
        progress("/a.py", 0, 100)
        progress("/b.py", 0, 50)
        progress("/a.py", 100, 100)
        progress("/b.py", 50, 50)
    assert capsys.readouterr() == ("", "")


def test_one_transfer_bar_counts_every_announced_file():
    with console.TransferProgress() as progress:
        progress("/a.py", 0, 100)
        progress("/b.py", 0, 50)
        task = progress._progress.tasks[0]
        assert (task.completed, task.total) == (0, 150)        # the whole transfer is known before a byte
        progress("/a.py", 60, 100)
        assert (task.completed, task.total) == (60, 150)
        progress("/rom", 10, 1000)                              # a file not announced joins the total
        assert (task.completed, task.total) == (70, 1150)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_the_bar_goes_to_stderr_and_stdout_keeps_only_results(monkeypatch):
    err, out = _Terminal(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", out)
    with console.TransferProgress() as progress:
        progress("/tinyfw/a.py", 0, 2048)
        progress("/tinyfw/a.py", 2048, 2048)
    assert "flashing" in err.getvalue() and "2.0/2.0 KiB" in err.getvalue()
    assert out.getvalue() == ""
