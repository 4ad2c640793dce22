"""The board-time model held against public timings: regenerates the validation table of docs/board-time.md.

Every public figure the model can be held against, the model's figure for the same model on the same chip, and
their ratio. Each row says whether the public figure is comparable to what our firmware does: the published
timings are TensorFlow Lite Micro in C (reference or optimised kernels), not MicroPython viper kernels, so they
bound what compiled C does on the chip and show where our firmware stands; they are not its time. The model is
fitted to none of them.

    python -m benchmarks.board_time_validation            # print the table (Markdown)
    python -m benchmarks.board_time_validation --write     # and replace the table in docs/board-time.md
    python -m benchmarks.board_time_validation --virtual [--write]   # + the structure check (about 3 minutes)

--virtual adds the one check against times measured here: `tinyhost calibrate` on the virtual board (the
micro-benchmark models only), then the estimate of models that are not among them against the virtual board's
measured invoke time. It tests the model's work counts and terms on a processor we can time (the host's, through
MicroPython's VM), not the boards' coefficients; its figures are this host's and vary from run to run.

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
        "| public figure | chip | software | public ms | model ms (ours, viper) | model / public "
        "| public cycles/MAC | model cycles/MAC | comparable? | source |",
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


VIRTUAL_BEGIN = "<!-- board-time-structure: begin (python -m benchmarks.board_time_validation --virtual --write) -->"
VIRTUAL_END = "<!-- board-time-structure: end -->"
HELD_OUT = ["models/kws/kws.tflite", "models/vww/vww.tflite", "mlperf:ad01_int8.tflite"]


def virtual_table(board_spec="sim", repeats=30):
    """Calibrate on the virtual board, then estimate vs measure the held-out models there (Markdown)."""
    import platform
    import tempfile

    from tinyhost import board, calibrate

    rows = []
    with tempfile.TemporaryDirectory(prefix="board-time-structure-") as tmp, \
            board.connect(board_spec, state_dir=tmp) as b:
        b.sync_firmware()
        cal = calibrate.calibrate(b, repeats=repeats)
        profile = cal.profile(b.profile)
        for name in HELD_OUT:
            path = _path(name)
            if not path.is_file():
                continue
            b.dev.unload_model()        # the next model's files go on while the heap is free
            info = b.load(path, backend="viper")
            weights = calibrate._WEIGHTS.get(str(info.raw.get("weights_mode", "")), "ram")
            measured = calibrate.interquartile_mean(b.dev.invoke(n=repeats, warmup=3).times_us)
            est = boardtime.estimate(inspect(path, tflm=False), profile, "viper", weights).total_us
            rows.append((path.name, weights, measured, est))
    lines = [f"Measured once on {platform.machine()} ({platform.python_implementation()} host, MicroPython unix VM "
             f"on `{board_spec}`), {cal.date}; calibration on {len(cal.samples)} micro-benchmark models, largest "
             f"fit error {cal.max_error_pct:.0f} % (the smallest models are a few ticks of ticks_us). Held out:",
             "",
             "| model (not in the calibration set) | weights | measured on the virtual board, us "
             "| estimate (calibrated), us | error |",
             "|---|---|---:|---:|---:|"]
    for name, weights, measured, est in rows:
        error_pct = (est - measured) / measured * 100
        lines.append(f"| {name} | {weights} | {measured:,.0f} | {est:,.0f} | {error_pct:+.0f} % |")
    return "\n".join(lines) + "\n"


def _replace(text, begin, end, body):
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + "\n" + body + text[stop:]


def write(doc=DOC, virtual=None):
    text = _replace(doc.read_text(), BEGIN, END, table())
    if virtual is not None:
        text = _replace(text, VIRTUAL_BEGIN, VIRTUAL_END, virtual)
    doc.write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"replace the table(s) in {DOC.relative_to(ROOT)}")
    ap.add_argument("--virtual", action="store_true",
                    help="also calibrate on the virtual board and check the estimate of held-out models there")
    args = ap.parse_args(argv)
    print(table())
    virtual = virtual_table() if args.virtual else None
    if virtual:
        print(virtual)
    if args.write:
        write(virtual=virtual)


if __name__ == "__main__":
    main()
