"""The board-time model held against public timings: regenerates the validation table of docs/board-time.md.

Every public figure the model can be held against, the model's figure for the same model on the same chip, and
their ratio. Each row says whether the public figure is comparable to what our firmware does: the published
timings are TensorFlow Lite Micro in C (reference or optimised kernels), not MicroPython viper kernels, so they
bound what compiled C does on the chip and show where our firmware stands; they are not its time. The model is
fitted to none of them.

    python -m benchmarks.board_time_validation            # print the table (Markdown)
    python -m benchmarks.board_time_validation --write     # and replace the table in docs/board-time.md

Models: models/kws and models/vww from this repository; the MLPerf Tiny reference models from ../shared/mlperf-tiny
when present (rows for absent models are left out, and say so).
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "host"))

from tinyhost import boards, boardtime  # noqa: E402
from tinyhost.model import inspect  # noqa: E402

MLPERF = ROOT.parent / "shared" / "mlperf-tiny"
DOC = ROOT / "docs" / "board-time.md"
BEGIN = "<!-- board-time-validation: begin (python -m benchmarks.board_time_validation --write) -->"
END = "<!-- board-time-validation: end -->"

ESP_TFLM = "esp-tflite-micro README (Espressif), person detection invoke(), MobileNet 0.25 96x96"
MLPERF_13 = "MLPerf Tiny v1.3 results (mlcommons/tiny_results_v1.3), reference submission, X-CUBE-AI"
MLPERF_12 = "MLPerf Tiny v1.2 results (mlcommons/tiny_results_v1.2), Bosch, TFLM-class int8"


@dataclass
class Figure:
    what: str               # the public figure in words
    model: str              # which model of ours stands for it: a path
    chip: str               # the chip and clock it was measured on
    board: str              # our profile for that chip, or the nearest one (with clock_mhz scaling)
    clock_mhz: int          # the public figure's clock
    public_ms: float
    software: str           # what ran: TFLM reference C kernels, ESP-NN, CMSIS-NN ...
    source: str


FIGURES = [
    Figure("person detection", "models/vww/vww.tflite", "ESP32 240 MHz", "esp32", 240, 4084,
           "TFLM reference kernels (C)", ESP_TFLM),
    Figure("person detection", "models/vww/vww.tflite", "ESP32 240 MHz", "esp32", 240, 380,
           "TFLM + ESP-NN (optimised C/assembly)", ESP_TFLM),
    Figure("person detection", "models/vww/vww.tflite", "ESP32-S3 240 MHz", "esp32s3", 240, 2300,
           "TFLM reference kernels (C)", ESP_TFLM),
    Figure("person detection", "models/vww/vww.tflite", "ESP32-S3 240 MHz", "esp32s3", 240, 54,
           "TFLM + ESP-NN (SIMD assembly)", ESP_TFLM),
    Figure("KWS (DS-CNN)", "mlperf:kws_ref_model.tflite", "STM32L4R5ZI Cortex-M4 120 MHz", "nano33ble", 120, 43.4,
           "X-CUBE-AI (optimised C)", MLPERF_13),
    Figure("VWW", "models/vww/vww.tflite", "STM32L4R5ZI Cortex-M4 120 MHz", "nano33ble", 120, 89.4,
           "X-CUBE-AI (optimised C)", MLPERF_13),
    Figure("IC (ResNet-8)", "mlperf:pretrainedResnet_quant.tflite", "STM32L4R5ZI Cortex-M4 120 MHz", "nano33ble",
           120, 165.7, "X-CUBE-AI (optimised C)", MLPERF_13),
    Figure("AD (autoencoder)", "mlperf:ad01_int8.tflite", "STM32L4R5ZI Cortex-M4 120 MHz", "nano33ble", 120, 4.79,
           "X-CUBE-AI (optimised C)", MLPERF_13),
    Figure("KWS (DS-CNN)", "mlperf:kws_ref_model.tflite", "CY8CPROTO-062 PSoC6 Cortex-M4 150 MHz", "nano33ble", 150,
           54.2, "TFLM-class int8 (C)", MLPERF_12),
]


def _path(name):
    return MLPERF / name[len("mlperf:"):] if name.startswith("mlperf:") else ROOT / name


def rows():
    """(figure, model ms at the public figure's clock, model cycles per MAC, public cycles per MAC) per figure
    whose model file is here; figures whose model is absent are returned with None."""
    reports = {}
    out = []
    for f in FIGURES:
        path = _path(f.model)
        if not path.is_file():
            out.append((f, None, None, None))
            continue
        if path not in reports:
            reports[path] = inspect(path, tflm=False)
        report = reports[path]
        profile = boards.load(f.board)
        fit = next(x for x in report.fits if x.board == f.board)
        bt = boardtime.estimate(report, profile, "viper", fit.weights)
        # the same cycles at the public figure's clock (the profile's core, another clock)
        model_ms = bt.total_ns * profile.board_time_clock_mhz / f.clock_mhz / 1e6
        cycles = bt.total_ns * profile.board_time_clock_mhz / 1000
        out.append((f, model_ms, cycles / report.macs, f.public_ms * 1000 * f.clock_mhz / report.macs))
    return out


def table():
    lines = [
        f"Board-time model {boardtime.BOARD_TIME_MODEL}, viper backend, weights where `model inspect` places them. "
        "\"model\" is our firmware's estimated time on that chip at the figure's clock (for the STM32 and PSoC6 "
        "rows: the nano33ble's Cortex-M4 coefficients at that clock). The public figures are compiled C, not "
        "MicroPython: **none is comparable to our firmware's time**, so the ratio is shown as context, not as "
        "an error (see \"Validation\" above).",
        "",
        "| public figure | chip | software | public ms | model ms (ours, viper) | model / public | public cycles/MAC | model cycles/MAC | comparable? | source |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for f, model_ms, model_cpm, public_cpm in rows():
        if model_ms is None:
            lines.append(f"| {f.what} | {f.chip} | {f.software} | {f.public_ms:g} | (model file {f.model} absent) "
                         f"| | | | no | {f.source} |")
            continue
        lines.append(f"| {f.what} | {f.chip} | {f.software} | {f.public_ms:g} | {model_ms:,.1f} | "
                     f"{model_ms / f.public_ms:.2f}x | {public_cpm:.1f} | {model_cpm:.1f} | no: compiled C, "
                     f"not MicroPython viper | {f.source} |")
    return "\n".join(lines) + "\n"


def write(doc=DOC):
    text = doc.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    doc.write_text(text[:start] + "\n" + table() + text[end:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"replace the table in {DOC.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    print(table())
    if args.write:
        write()


if __name__ == "__main__":
    main()
