"""--report DIR: Markdown + HTML + PNG plots from a BenchResult; virtual-board figures are marked."""

import base64
import dataclasses
import random
import re

import pytest

from tinyhost.bench import report, results


def sample_result(virtual=True):
    prov = results.Provenance(board="esp32", virtual=virtual, port="/dev/pts/3", baud=115200,
                              firmware_hash="abcd1234", model_path="/models/kws.tflite", model_sha256="a" * 64,
                              backend="viper", tinyhost_version="0.1.0", date="2026-01-01T00:00:00Z",
                              micropython_version="1.29.0")
    windows = [results.Window(i, 1, 10, 10_000 + 100 * i, 1e7 / (10_000 + 100 * i), [1000 + i] * 10)
               for i in range(5)]
    perf = results.PerformanceResult(
        window_s=0.01, min_inferences=10, windows=windows, median_inferences_per_s=980.4, median_latency_us=1020.0,
        min_inferences_per_s=961.5, max_inferences_per_s=1000.0, spread_pct=3.9,
        latency={"count": 50, "mean_us": 1002.0, "min_us": 1000.0, "p50_us": 1002.0, "p90_us": 1004.0,
                 "p99_us": 1004.0, "max_us": 1004.0}, latency_source="each inference of the windows")
    acc = results.AccuracyResult(
        benchmark="kws01", n_items=4, n_files=4, metric="top1", value=0.75, target=0.90, meets_target=False,
        top_k={"1": 0.75}, class_names=["yes", "no"], confusion=[[2, 1], [0, 1]],
        per_class=[{"index": 0, "name": "yes", "support": 3, "precision": 1.0, "recall": 2 / 3},
                   {"index": 1, "name": "no", "support": 1, "precision": 0.5, "recall": 1.0}])
    return results.BenchResult(
        provenance=prov, performance=perf, accuracy=acc,
        memory=results.MemoryResult(model_bytes=53936, arena_bytes=22000, heap_peak_bytes=30000, source="stats"),
        energy=results.EnergyResult("estimate", 168.3, {"active_current_ma": 50.0, "supply_v": 3.3,
                                                        "latency_us": 1020.0}, ["datasheet"], "estimate"))


def test_report_files_and_virtual_marks(tmp_path):
    written = report.write_report(sample_result(), tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["confusion_matrix.png", "latency_histogram.png", "report.html", "report.md",
                     "window_throughput.png"]
    for png in ("confusion_matrix.png", "latency_histogram.png", "window_throughput.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# tinyhost bench: kws.tflite on esp32 (virtual board)")
    assert "## Performance (virtual board)" in md and "## Accuracy (virtual board)" in md
    assert "| median throughput (score) | 980.400 inferences/s (virtual board) |" in md
    assert "top-1 accuracy: **75.00 %**" in md and "target 90.00 %: does NOT meet it" in md
    assert "| yes | 3 | 100.00 % | 66.67 % |" in md
    assert "## Energy (ESTIMATE) (virtual board)" in md and "168.30 uJ per inference (ESTIMATE)" in md
    assert "![confusion matrix (virtual board)](confusion_matrix.png)" in md
    page = (tmp_path / "report.html").read_text()
    assert "<strong>75.00 %</strong>" in page
    assert page.count("virtual board") >= md.count("virtual board")


def test_html_report_is_one_file_with_its_plots_embedded(tmp_path):
    report.write_report(sample_result(), tmp_path)
    page = (tmp_path / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 3 and all(src.startswith("data:image/png;base64,") for src in sources)
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in sources}
    assert embedded == {(tmp_path / name).read_bytes()
                        for name in ("confusion_matrix.png", "latency_histogram.png", "window_throughput.png")}


def _titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_plot_titles_name_model_board_and_date():
    virtual = sample_result().provenance
    fig = report.latency_figure(sample_result().performance, virtual)
    assert _titles(fig) == ["Latency distribution\nkws.tflite on esp32 (virtual board), 2026-01-01 00:00:00 UTC"]
    real = sample_result(virtual=False).provenance
    assert report.plot_subtitle(real) == "kws.tflite on esp32, 2026-01-01 00:00:00 UTC"


def _with_times(result, times_us):
    perf = result.performance
    perf.windows = [dataclasses.replace(perf.windows[0], times_us=times_us)]
    return perf


@pytest.mark.parametrize("outliers_us", [[950_000], [29_000, 31_000, 40_000, 500_000, 950_000]])
def test_a_few_slow_outliers_do_not_set_the_histogram_axis(outliers_us):
    rng = random.Random(5)
    bulk_us = [int(rng.gauss(8000, 300)) for _ in range(500)]
    times_us = bulk_us + outliers_us                          # one, or 1 % of them (past the 99.5th percentile)
    low, high = report.histogram_range([t / 1000 for t in times_us])
    assert low == min(bulk_us) / 1000 and max(bulk_us) / 1000 <= high < 12.0
    fig = report.latency_figure(_with_times(sample_result(), times_us), sample_result().provenance)
    histogram, strip = fig.axes
    assert histogram.get_xlim()[1] < 12.0                      # the bulk fills the axis
    shown_from, shown_to = strip.get_xlim()                   # the outliers are shown, on their own axis
    assert shown_from < min(outliers_us) / 1000 and max(outliers_us) / 1000 < shown_to
    assert strip.get_title().startswith(f"{len(outliers_us)} slower")


def test_histogram_without_outliers_has_no_outlier_strip():
    times_us = list(range(1000, 1100))
    fig = report.latency_figure(_with_times(sample_result(), times_us), sample_result().provenance)
    assert len(fig.axes) == 1 and fig.axes[0].get_xlim()[1] < 1.11
    assert report.histogram_range([1.0] * 10) == (1.0, 1.01)       # identical times: a narrow axis, not a crash


def test_real_board_report_has_no_virtual_marks(tmp_path):
    report.write_report(sample_result(virtual=False), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "virtual" not in md.replace("| virtual | False |", "")


def test_report_without_timings_skips_the_histogram(tmp_path):
    r = sample_result()
    r.performance.windows = [dataclasses.replace(w, times_us=[]) for w in r.performance.windows]
    r.accuracy = None
    names = sorted(p.name for p in report.write_report(r, tmp_path))
    assert names == ["report.html", "report.md", "window_throughput.png"]


def test_console_energy_line_shows_the_latency_it_is_computed_from(capsys):
    from tinyhost.bench import energy
    from tinyhost.boards import load
    from tinyhost.commands.bench import print_result

    result = sample_result(virtual=False)
    p50_us = result.performance.latency["p50_us"]                 # 1002 us, not the 1020 us of 1/throughput
    result.energy = energy.estimate(load("esp32"), p50_us)
    print_result(result)
    text = capsys.readouterr().out
    energy_line = next(line for line in text.splitlines() if line.startswith("energy (ESTIMATE)"))
    assert "p50 single-inference latency 1.002 ms" in energy_line
    ma, v = result.energy.inputs["active_current_ma"], result.energy.inputs["supply_v"]
    assert f"{result.energy.uj_per_inference:.2f} uJ" in energy_line
    assert abs(ma * v * 1.002 - result.energy.uj_per_inference) < 1e-9      # recomputable from what is printed


def test_virtual_report_puts_the_board_time_first(tmp_path):
    r = sample_result()
    r.performance.board_time_us, r.performance.board_inferences_per_s = 374_300.5, 1e6 / 374_300.5
    r.performance.board_time_model = "bt-1"
    report.write_report(r, tmp_path)
    md = (tmp_path / "report.md").read_text()
    board_row = "| board time per inference on the esp32 | 374.300 ms (ESTIMATE, board-time model bt-1) |"
    assert board_row in md
    assert md.index(board_row) < md.index("| median throughput (score) |")
