"""--report DIR: Markdown + HTML + PNG plots from a BenchResult; virtual-board figures are marked."""

import dataclasses


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
    assert "<strong>75.00 %</strong>" in page and 'src="latency_histogram.png"' in page
    assert page.count("virtual board") >= md.count("virtual board")


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


def test_virtual_report_puts_the_board_time_first(tmp_path):
    r = sample_result()
    r.performance.board_time_us, r.performance.board_inferences_per_s = 374_300.5, 1e6 / 374_300.5
    r.performance.board_time_model = "bt-1"
    report.write_report(r, tmp_path)
    md = (tmp_path / "report.md").read_text()
    board_row = "| board time per inference on the esp32 | 374.300 ms (ESTIMATE, board-time model bt-1) |"
    assert board_row in md
    assert md.index(board_row) < md.index("| median throughput (score) |")
