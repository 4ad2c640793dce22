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
        f"| pipeline time (data / train / total) | "
        f"{'cached' if m['seconds']['data'] is None else str(m['seconds']['data']) + ' s'} / "
        f"{m['seconds']['train']} s / {m['seconds']['total']} s (1 thread, niced) |",
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
    per_source = m.get("accuracy_int8_per_source", {})
    floats = m.get("accuracy_float_per_source", {})
    if per_source and all("in_training" in r for r in per_source.values()):
        lines += ["", "| held-out test scenes by emoji design source | its designs in training | samples | "
                  "top-1 float | top-1 int8 (TFLM) |", "|---|---|---|---|---|"]
        for src, r in per_source.items():
            seen = "other emoji only (base emoji split)" if r["in_training"] else "**none** (artist set left out)"
            lines.append(f"| {src} | {seen} | {r['samples']} | {_pct(floats.get(src, {}).get('accuracy'))} | "
                         f"{_pct(r['accuracy'])} |")
    elif per_source:
        test_voices = m.get("data", {}).get("test_voices", [])
        lines += ["", "| held-out test clips by source | voices (none heard in training) | samples | top-1 float | "
                  "top-1 int8 (TFLM) |", "|---|---|---|---|---|"]
        for src, r in per_source.items():
            voices = [v.split(":", 1)[1] for v in test_voices if v.split(":", 1)[0] == src]
            who = (f"{len(voices)}: " + ", ".join(voices)) if voices else "noise alone (silence)"
            lines.append(f"| {src} | {who} | {r['samples']} | {_pct(floats.get(src, {}).get('accuracy'))} | "
                         f"{_pct(r['accuracy'])} |")
    per_class = m.get("accuracy_int8_per_class", {})
    if per_class:
        lines.append("")
        lines.append("Per-class top-1 (int8): " + ", ".join(f"{k} {_pct(v)}" for k, v in per_class.items()) + ".")
    lines.append(END)
    return "\n".join(lines)


VARIANTS_BEGIN, VARIANTS_END = "<!-- variants:begin -->", "<!-- variants:end -->"


def variants_markdown(v):
    """The quantisation variants' table (``variants/metrics.json``)."""
    lines = [
        VARIANTS_BEGIN,
        f"| file (in `variants/`) | weights / activations / I/O | top-1, held-out ({v['held_out_samples']}) | "
        f"top-1, shipped testset/ ({v['shipped_count']}) | size | TFLM arena | TFLM top-1 = TF Lite's, "
        "reference / default kernels | largest output difference, reference / default |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, m in v["variants"].items():
        kind = "float32" if m["input"]["dtype"] == "float32" else "int8"
        unit = "" if m["output_dtype"] == "float32" else " steps"
        lines.append(f"| `{m['file']}` ({m['name']}) | {kind} | {_pct(m['accuracy'])} | "
                     f"{_pct(m['accuracy_shipped_testset'])} | {m['tflite_bytes']:,} bytes | "
                     f"{m['tflm_arena_bytes']:,} bytes | {_pct(m.get('tflm_agrees_with_tflite_reference_top1'))} / "
                     f"{_pct(m['tflm_agrees_with_tflite_top1'])} | "
                     f"{m.get('tflm_max_output_difference_reference', float('nan')):.3g} / "
                     f"{m['tflm_max_output_difference']:.3g}{unit} |")
    ptq, qat, f32 = (v["variants"][k]["accuracy"] for k in ("int8_ptq", "int8_qat", "float32"))
    lines += ["", f"int8 minus float32: post-training {100 * (ptq - f32):+.1f} points, quantisation-aware "
              f"{100 * (qat - f32):+.1f} points (quantisation-aware fine-tuning: {v['qat_epochs']} epochs). "
              f"Every top-1 here is TFLM's interpreter running the file.", VARIANTS_END]
    return "\n".join(lines)


def _replace(path, begin, end, markdown, heading):
    path = Path(path)
    text = path.read_text()
    if begin not in text or end not in text:
        text += f"\n## {heading}\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    write_atomic(path, (head + markdown + tail).encode())


def update_variants(path, variant_metrics):
    """Replace the quantisation variants' table of the card at ``path`` (appended when the markers are missing)."""
    _replace(path, VARIANTS_BEGIN, VARIANTS_END, variants_markdown(variant_metrics), "Quantisation variants")


LOEO_BEGIN, LOEO_END = "<!-- loeo:begin -->", "<!-- loeo:end -->"


def loeo_markdown(results):
    """The leave-one-engine-out table (``loeo/*.json``: one model per left-out synthesiser)."""
    lines = [LOEO_BEGIN,
             "| left out (never in training) | its voices | its clips scored | top-1 float | top-1 int8 (TFLM) | "
             "int8, its test-split clips only | epochs |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['engine']} | {len(r['voices'])} | {r['samples']} | {_pct(r['accuracy_float'])} | "
                     f"{_pct(r['accuracy_int8'])} | {_pct(r['accuracy_int8_test_split'])} "
                     f"({r['test_split_samples']}) | {r['epochs']} |")
    if results:
        mean = sum(r["accuracy_int8"] for r in results) / len(results)
        verdict = "meets" if mean >= LOEO_TARGET else "is **below**"
        lines += ["", f"Mean over the left-out synthesisers, int8: {_pct(mean)}; it {verdict} the "
                  f"{_pct(LOEO_TARGET)} aimed at for a synthesiser never heard in training."]
    lines.append(LOEO_END)
    return "\n".join(lines)


#: What a voice of a synthesiser never heard in training should get (leave-one-engine-out, int8).
LOEO_TARGET = 0.85


def update_loeo(path, results):
    """Replace the leave-one-engine-out table of the card at ``path`` (appended when the markers are missing)."""
    _replace(path, LOEO_BEGIN, LOEO_END, loeo_markdown(results), "Leave one synthesiser out")


def update(path, metrics):
    """Replace the numbers section of the card at ``path`` (appended when the markers are missing)."""
    path = Path(path)
    labels_csv = path.parent / "testset" / "y_labels.csv"
    if "shipped_count" not in metrics and labels_csv.is_file():
        metrics = dict(metrics, shipped_count=len(labels_csv.read_text().splitlines()))
    if not path.is_file():
        write_atomic(path, f"# {metrics['model']}\n".encode())
    _replace(path, BEGIN, END, numbers_markdown(metrics), "Numbers")
