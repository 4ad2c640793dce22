"""Write the measured numbers into a model card between ``<!-- numbers:begin -->`` and ``<!-- numbers:end -->``."""

from pathlib import Path

from models.pipeline.common import write_atomic

BEGIN, END = "<!-- numbers:begin -->", "<!-- numbers:end -->"
#: MLPerf Tiny quality targets (top-1) of the tasks the shipped models stand in for.
TARGETS = {"kws": 0.90, "vww": 0.80}


def _pct(x):
    return "n/a" if x is None else f"{100.0 * x:.1f} %"


def numbers_markdown(m):
    lines = [
        BEGIN,
        "| measured by `make models` | value |",
        "|---|---|",
        f"| held-out test samples | {m['counts']['test']} |",
        f"| top-1, float (Keras) | {_pct(m['accuracy_float'])} |",
        f"| top-1, int8 (TFLM interpreter) | {_pct(m['accuracy_int8'])} |",
        f"| top-1, int8, the shipped testset/ ({m.get('shipped_count', 200)} samples) | "
        f"{_pct(m['accuracy_int8_shipped_testset'])} |",
        f"| training / validation samples | {m['counts']['train']} / {m['counts']['val']} |",
        f"| parameters | {m['parameters']:,} |",
        f"| MACs per inference | {m['macs']:,} |",
        f"| .tflite size | {m['tflite_bytes']:,} bytes |",
        f"| TFLM tensor arena (smallest that runs) | {m['tflm_arena_bytes']:,} bytes |",
        f"| input quantisation | scale {m['input']['scale']:.6g}, zero point {m['input']['zero_point']} |",
        f"| operators | {', '.join(m['operators'])} |",
        f"| sha256 | `{m['sha256']}` |",
        f"| seed, epochs, TensorFlow | {m['seed']}, {m['epochs']}, {m['tensorflow']} |",
        f"| pipeline time (data / train / total) | {m['seconds']['data']} s / {m['seconds']['train']} s / "
        f"{m['seconds']['total']} s (1 thread, niced) |",
    ]
    for key, label in (("official_kws01_on_this_testset", "MLPerf Tiny's own kws01 model on this test set"),
                       ("official_vww01_on_this_testset", "MLPerf Tiny's own vww01 model on this test set")):
        if key in m:
            lines.append(f"| {label} | {_pct(m[key])} |")
    target = TARGETS.get(m["model"])
    if target is not None:
        verdict = ("meets the MLPerf Tiny target" if m["accuracy_int8"] >= target
                   else "is **below the MLPerf Tiny target**")
        lines.append("")
        lines.append(f"The int8 model {verdict} of {_pct(target)} top-1 on this held-out set "
                     f"({_pct(m['accuracy_int8'])}); int8 minus float: "
                     f"{100 * (m['accuracy_int8'] - m['accuracy_float']):+.1f} points.")
    per_class = m.get("accuracy_int8_per_class", {})
    if per_class:
        lines.append("")
        lines.append("Per-class top-1 (int8): " + ", ".join(f"{k} {_pct(v)}" for k, v in per_class.items()) + ".")
    lines.append(END)
    return "\n".join(lines)


def update(path, metrics):
    """Replace the numbers section of the card at ``path`` (appended when the markers are missing)."""
    path = Path(path)
    labels_csv = path.parent / "testset" / "y_labels.csv"
    if "shipped_count" not in metrics and labels_csv.is_file():
        metrics = dict(metrics, shipped_count=len(labels_csv.read_text().splitlines()))
    text = path.read_text() if path.is_file() else f"# {metrics['model']}\n\n## Numbers\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n## Numbers\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    write_atomic(path, (head + numbers_markdown(metrics) + tail).encode())
