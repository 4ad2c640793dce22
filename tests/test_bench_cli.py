"""`tinyhost bench` end to end through the CLI: --dut eembc against a DUT on a pty (tinyfw.eembc under the
MicroPython VM with a stand-in model), writing --json, --csv and --report; plus option errors."""

import csv
import json
import re

import pytest
from click.testing import CliRunner

from test_eembc_host import FakeDutProcess, MICROPYTHON  # noqa: F401  (skips with it when micropython is absent)
from tinyhost.cli import cli


def kws_set(root, n=10):
    root.mkdir(parents=True)
    labels = [i % 12 if i % 4 else (i + 1) % 12 for i in range(n)]      # every 4th sample mislabelled
    for i in range(n):
        (root / f"s{i}.bin").write_bytes(bytes([i % 12]) + bytes(489))
    (root / "y_labels.csv").write_text("".join(f"s{i}.bin,12,{y}\n" for i, y in enumerate(labels)))
    return labels


@pytest.fixture
def dut():
    d = FakeDutProcess("kws", delay_us=500)
    yield d
    d.stop()


def test_bench_all_modes_over_eembc_writes_json_csv_and_report(dut, tmp_path):
    kws_set(tmp_path / "kws01")
    args = ["bench", "--port", dut.port, "--dut", "eembc", "--model", "kws01", "--mode", "all",
            "--dataset", str(tmp_path), "--window-s", "0.05", "--json", str(tmp_path / "r.json"),
            "--csv", str(tmp_path / "r.csv"), "--report", str(tmp_path / "rep"),
            "--journal", str(tmp_path / "j.jsonl"), "--verbose"]
    out = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert re.search(r"^accuracy +top1 70\.00 % over 10 inferences$", out.output, re.M), out.output
    assert re.search(r"^MLPerf Tiny target +90 %: NOT met$", out.output, re.M)
    assert re.search(r"^energy \(ESTIMATE\) +\d+\.\d\d uJ per inference, with the p50 single-inference latency "
                     r"\d+\.\d{3} ms$", out.output, re.M)
    data = json.loads((tmp_path / "r.json").read_text())
    prov = data["provenance"]
    assert (prov["dut"], prov["dut_name"], prov["benchmark"], prov["virtual"]) == ("eembc", "tinyhost", "kws01", False)
    assert len(data["performance"]["windows"]) == 5
    assert all(w["elapsed_us"] >= 50_000 for w in data["performance"]["windows"])
    assert len(data["accuracy"]["samples"]) == 10 and data["accuracy"]["value"] == pytest.approx(0.7)
    assert data["energy"]["kind"] == "estimate" and data["energy"]["inputs"]["supply_v"] == 3.3
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert sum(r["record"] == "sample" for r in rows) == 10
    assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "confusion_matrix.png").exists()


def test_accuracy_needs_a_dataset():
    out = CliRunner().invoke(cli, ["bench", "--port", "/dev/null", "--model", "kws01", "--dut", "eembc",
                                   "--mode", "accuracy"])
    assert out.exit_code != 0
    assert "accuracy mode needs a test set" in str(out.exception)


def test_unknown_model_is_a_usage_error(tmp_path):
    out = CliRunner().invoke(cli, ["bench", "--port", "/dev/null", "--model", str(tmp_path / "none.tflite")])
    assert out.exit_code != 0 and "no such model file" in str(out.exception)
