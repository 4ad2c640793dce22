"""``--report DIR``: a Markdown and an HTML report of a BenchResult, with PNG plots (matplotlib, Agg backend).

Plots: latency histogram, throughput per window, confusion matrix, each titled with the model, the board and the
date of the run. The HTML page embeds its plots (one file to mail); report.md links the PNG files beside it. A
result from the virtual board says so in the title, in every plot and next to every figure.
"""

import base64
import html
import math
from pathlib import Path

from .results import write_atomic

VIRTUAL_MARK = "virtual board"


def _fmt(value, digits=3):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def _pct(value):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f} %"


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    return fig, fig.add_subplot(1, 1, 1)


def plot_subtitle(prov):
    """What a plot shows figures of: model, board (virtual or not) and when the run was."""
    model = Path(prov.model_path).name if prov.model_path else (prov.benchmark or "model")
    board = f"{prov.board} ({VIRTUAL_MARK})" if prov.virtual else prov.board
    when = prov.date.replace("T", " ").replace("Z", " UTC") if prov.date else "date unknown"
    return f"{model} on {board}, {when}"


def _title(ax, text, prov):
    ax.set_title(f"{text}\n{plot_subtitle(prov)}", fontsize=10)


def _png(fig):
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


OUTLIER_FENCE_IQR = 3.0      # beyond Q3 + 3 IQR a latency is an outlier (Tukey's "far out")


def histogram_range(times):
    """``(low, high)`` of the latency histogram's axis: the bulk of the data, up to the far-out fence
    Q3 + 3 IQR or the 99th percentile, whichever is further (a long tail stays on the axis), or the slowest time
    when none is beyond. A few slow outliers (a garbage collection, a host hiccup on the virtual board) would
    otherwise stretch the axis and squash the rest into one bar."""
    from .metrics import percentile

    low, slowest = min(times), max(times)
    q1, q3 = percentile(times, 25), percentile(times, 75)
    fence = q3 + OUTLIER_FENCE_IQR * max(q3 - q1, 0.01 * q3)    # identical times: 1 % of them wide
    high = min(slowest, max(fence, percentile(times, 99)))
    if high <= low:
        high = low * 1.01 if low > 0 else 1.0
    return low, high


def latency_figure(perf, prov):
    """The latency histogram over :func:`histogram_range`; the outliers beyond it, when there are any, as a
    strip of points on a compressed axis at the right, with their count."""
    times_ms = [t / 1000 for w in perf.windows for t in w.times_us]
    if not times_ms:
        return None
    from matplotlib.figure import Figure

    low, high = histogram_range(times_ms)
    shown = [t for t in times_ms if t <= high]
    outliers = sorted(t for t in times_ms if t > high)
    fig = Figure(figsize=(7.2 if outliers else 6.4, 4.4), dpi=100)
    if outliers:
        ax, strip = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [5, 1], "wspace": 0.06})
    else:
        ax, strip = fig.add_subplot(1, 1, 1), None
    bins = min(50, max(5, len(shown) // 10))
    counts, _, _ = ax.hist(shown, bins=bins, range=(low, high), color="#4477aa")
    ax.set_xlim(low - 0.02 * (high - low), high + 0.02 * (high - low))
    beyond = []
    for name, style in (("p50_us", "-"), ("p90_us", "--"), ("p99_us", ":")):
        if perf.latency and name in perf.latency:
            value = perf.latency[name] / 1000
            label = f"{name[:-3]} {value:.3f} ms"
            if value <= high:
                ax.axvline(value, color="black", linestyle=style, label=label)
            else:
                beyond.append((value, style, label))
    ax.set_xlabel("latency of one inference (ms, device clock)")
    ax.set_ylabel("inferences")
    if strip is not None:
        import random

        rng = random.Random(0)                  # the same jitter every time: the same picture for the same data
        top = max(counts) if len(counts) else 1
        strip.scatter(outliers, [rng.uniform(0.1, 0.9) * top for _ in outliers], s=12, color="#cc3311")
        if outliers[-1] > 10 * outliers[0]:
            strip.set_xscale("log")             # 30 ms and 900 ms apart, not both squeezed at one end
            strip.set_xlim(outliers[0] / 1.5, outliers[-1] * 1.5)
        else:
            span = outliers[-1] - outliers[0]
            pad = 0.1 * span if span else 0.05 * outliers[0]
            strip.set_xlim(outliers[0] - pad, outliers[-1] + pad)
        from matplotlib.ticker import FuncFormatter

        strip.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        strip.set_xlabel("ms")
        for value, style, label in beyond:
            strip.axvline(value, color="black", linestyle=style, label=label)
        strip.set_title(f"{len(outliers)} slower\n(> {high:.3f} ms)", fontsize=9, color="#cc3311")
        strip.tick_params(axis="x", labelrotation=45, labelsize=8)
        strip.tick_params(axis="y", left=False)
        ax.spines["right"].set_visible(False)
        strip.spines["left"].set_linestyle((0, (2, 2)))   # a broken axis: the strip's scale is not the histogram's
        handles, labels = ax.get_legend_handles_labels()
        more_handles, more_labels = strip.get_legend_handles_labels()
        ax.legend(handles + more_handles, labels + more_labels, fontsize=8)
    else:
        ax.legend(fontsize=8)
    _title(ax, "Latency distribution", prov)
    fig.subplots_adjust(top=0.86, bottom=0.16 if outliers else 0.12)
    return fig


def plot_latency_histogram(perf, prov):
    """PNG bytes of :func:`latency_figure`, or None without single-inference timings."""
    fig = latency_figure(perf, prov)
    return None if fig is None else _png(fig)


def plot_window_throughput(perf, prov):
    fig, ax = _figure()
    xs = list(range(1, len(perf.windows) + 1))
    ax.bar(xs, [w.inferences_per_s for w in perf.windows], color="#66aa55")
    ax.axhline(perf.median_inferences_per_s, color="black", linestyle="--", label="median (score)")
    ax.set_xticks(xs)
    ax.set_xlabel("window (input)")
    ax.set_ylabel("inferences / s")
    _title(ax, "Throughput per window", prov)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def plot_confusion(acc, prov):
    if not acc.confusion:
        return None
    n = len(acc.confusion)
    fig, ax = _figure()
    fig.set_size_inches(max(5.6, 0.5 * n + 2.5), max(4.4, 0.5 * n + 2.0))
    image = ax.imshow(acc.confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)   # as tall as the matrix
    names = acc.class_names[:n] if len(acc.class_names) >= n else [str(i) for i in range(n)]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 12:
        darkest = max(max(row) for row in acc.confusion) or 1
        for i in range(n):
            for j in range(n):
                if acc.confusion[i][j]:
                    ax.text(j, i, str(acc.confusion[i][j]), ha="center", va="center", fontsize=8,
                            color="white" if acc.confusion[i][j] > darkest / 2 else "black")
    _title(ax, "Confusion matrix", prov)
    fig.tight_layout()
    return _png(fig)


def build(result, plots):
    """The report as blocks: ("h1"|"h2"|"p", text), ("table", header, rows), ("img", file, alt)."""
    prov = result.provenance
    virtual = prov.virtual
    mark = f" ({VIRTUAL_MARK})" if virtual else ""
    blocks = [("h1", f"tinyhost bench: {Path(prov.model_path).name or 'model'} on {prov.label}")]
    if virtual:
        blocks.append(("p", "Every figure below comes from the virtual board: MicroPython's VM on the host CPU "
                            f"with the RAM, flash and line rate of a {prov.board}. Timings are the host's, not the "
                            "board's; they compare runs on this machine, not boards. The board time is the "
                            "board-time model's estimate of the board's own (docs/board-time.md)."))
    blocks.append(("h2", "Provenance"))
    blocks.append(("table", ["field", "value"], [
        ["board", prov.label], ["virtual", str(prov.virtual)], ["port", prov.port], ["baud", str(prov.baud)],
        ["DUT protocol", prov.dut], ["DUT name", prov.dut_name], ["firmware", prov.firmware_version],
        ["firmware hash", prov.firmware_hash], ["MicroPython", prov.micropython_version],
        ["machine", prov.machine], ["engine backend", prov.backend], ["model", prov.model_path],
        ["model sha256", prov.model_sha256], ["model bytes", str(prov.model_bytes)],
        ["benchmark", prov.benchmark], ["dataset", prov.dataset_path], ["dataset sha256", prov.dataset_sha256],
        ["tinyhost", prov.tinyhost_version], ["date", prov.date], ["host", prov.host]]))
    perf = result.performance
    if perf:
        blocks.append(("h2", "Performance" + mark))
        blocks.append(("p", f"MLPerf Tiny rules: {len(perf.windows)} inputs; per input, warm-up then a window of "
                            f">= {perf.window_s:g} s and >= {perf.min_inferences} inferences, timed by the device "
                            "clock. Score: median throughput over the windows."))
        rows = []
        if perf.board_time_us is not None:     # the board's own time, estimated: first, as in the console
            estimate = f" (ESTIMATE, board-time model {perf.board_time_model})"
            rows += [[f"board time per inference on the {prov.board}",
                      f"{perf.board_time_us / 1000:.3f} ms" + estimate],
                     [f"board throughput on the {prov.board}",
                      f"{perf.board_inferences_per_s:.3f} inferences/s" + estimate]]
        rows += [["median throughput (score)", f"{perf.median_inferences_per_s:.3f} inferences/s" + mark],
                ["latency at the median", f"{perf.median_latency_us / 1000:.3f} ms" + mark],
                ["spread between windows", f"{perf.spread_pct:.2f} % (min {perf.min_inferences_per_s:.3f}, "
                                           f"max {perf.max_inferences_per_s:.3f} inferences/s)"]]
        if perf.latency:
            for name in ("p50_us", "p90_us", "p99_us", "min_us", "max_us"):
                rows.append([f"single inference {name[:-3]}", f"{perf.latency[name] / 1000:.3f} ms" + mark])
            rows.append(["single-inference latencies from", perf.latency_source])
        blocks.append(("table", ["figure", "value"], rows))
        blocks.append(("table", ["window", "input", "warm-ups", "inferences", "elapsed (ms)", "inferences/s"],
                       [[str(i + 1), str(w.input_index), str(w.warmups), str(w.inferences),
                         f"{w.elapsed_us / 1000:.1f}", f"{w.inferences_per_s:.3f}"]
                        for i, w in enumerate(perf.windows)]))
        for name, alt in (("latency_histogram.png", "latency histogram"),
                          ("window_throughput.png", "throughput per window")):
            if name in plots:
                blocks.append(("img", name, alt + mark))
    acc = result.accuracy
    if acc:
        blocks.append(("h2", "Accuracy" + mark))
        metric = "ROC AUC" if acc.metric == "auc" else "top-1 accuracy"
        value = f"{acc.value:.4f}" if acc.metric == "auc" else _pct(acc.value)
        if acc.target is not None:
            target = f"{acc.target:.2f}" if acc.metric == "auc" else _pct(acc.target)
            verdict = "meets" if acc.meets_target else "does NOT meet"
            blocks.append(("p", f"{metric}: **{value}** over {acc.n_items} inferences ({acc.n_files} files); "
                                f"MLPerf Tiny quality target {target}: {verdict} it."))
        else:
            blocks.append(("p", f"{metric}: **{value}** over {acc.n_items} inferences (no MLPerf Tiny target for "
                                "this model)."))
        rows = [[f"top-{k}", _pct(v)] for k, v in acc.top_k.items()]
        rows += [["board resets / link breaks recovered", str(acc.board_resets)],
                 ["samples taken from an earlier run's journal", str(acc.resumed_items)],
                 ["wall time", f"{acc.wall_s:.1f} s"], ["device inference time", f"{acc.device_time_s:.1f} s" + mark],
                 ["input bytes sent", str(acc.input_bytes)]]
        blocks.append(("table", ["figure", "value"], rows))
        if acc.per_class:
            blocks.append(("table", ["class", "support", "precision", "recall"],
                           [[c["name"], str(c["support"]), _pct(c["precision"]), _pct(c["recall"])]
                            for c in acc.per_class]))
        if "confusion_matrix.png" in plots:
            blocks.append(("img", "confusion_matrix.png", "confusion matrix" + mark))
    mem = result.memory
    if mem:
        blocks.append(("h2", "Memory" + mark))
        blocks.append(("table", ["figure", "bytes"], [
            ["model file", _fmt(mem.model_bytes)], ["tensor arena", _fmt(mem.arena_bytes)],
            ["weights copied to RAM", _fmt(mem.weights_ram_bytes)], ["heap total", _fmt(mem.heap_total_bytes)],
            ["heap free with the model loaded", _fmt(mem.heap_free_bytes)],
            ["peak heap use during inference", _fmt(mem.heap_peak_bytes)]]))
        blocks.append(("p", f"Source: {mem.source}"))
    en = result.energy
    if en:
        label = "ESTIMATE" if en.kind == "estimate" else "measured"
        blocks.append(("h2", f"Energy ({label})" + mark))
        blocks.append(("p", f"**{en.uj_per_inference:.2f} uJ per inference ({label})**. {en.note}"))
        blocks.append(("table", ["input", "value"], [[k, _fmt(v, 4)] for k, v in en.inputs.items()]))
        blocks.append(("p", "Sources: " + "; ".join(en.sources)))
    if result.offload:
        blocks.extend(offload_blocks(result.offload, mark, plots))
    return blocks


def _stage_cell(stats):
    if not stats:
        return "-"
    return " / ".join(f"{stats[q] / 1000:.3f}" for q in ("p50_us", "p90_us", "p99_us"))


def _label(p):
    if p.name == "split" and p.split_at is not None:
        return f"split (k = {p.split_at})"
    return "local" if p.name == "local" else f"{'offloaded' if p.name == 'offload' else p.name} ({p.mode})"


def offload_blocks(off, mark="", plots=()):
    """``bench --offload``: the local, offloaded and split passes side by side; with a split pass its plan and
    (``split_plan.png`` in ``plots``) latency and energy against the split point."""
    passes = off.passes
    local = passes[0]
    head = ["figure"] + [_label(p) for p in passes]
    title = "Offload: local vs offloaded" + (" vs split" if any(p.name == "split" for p in passes) else "")
    started = " It was started in-process for this run (no --server given)." if off.server_started else ""
    blocks = [("h2", title + mark),
              ("p", f"Server {off.server}, model id {off.model_id}, transport {off.transport}.{started} Inputs: "
                    f"{off.inputs_source}. Every pass uses the board's INFER; {off.note}")]

    def cells(fn):
        return [fn(p) for p in passes]

    rows = [["answers from the board / the server"] + cells(lambda p: f"{p.sources.get('local', 0)} / {p.offloaded}"),
            ["fallbacks to local"] + cells(lambda p: str(p.fallbacks)),
            ["retries"] + cells(lambda p: str(p.retries)),
            ["errors (code: count)"] + cells(lambda p: ", ".join(f"{k}: {v}" for k, v in p.errors.items()) or "none"),
            ["board time, all predictions"] + cells(lambda p: f"{p.board_time_s:.3f} s" + mark),
            ["host wall time (serial link included)"] + cells(lambda p: f"{p.host_wall_s:.2f} s")]
    if any(p.identical_to_local is not None for p in passes):
        rows.append(["answers identical to the local ones"]
                    + cells(lambda p: "-" if p is local else f"{p.identical_to_local} / {p.requests}"))
    if local.accuracy is not None:
        rows += [["accuracy vs ground truth"] + cells(lambda p: _pct(p.accuracy)),
                 ["correct predictions per second (board time)"] + cells(lambda p: _fmt(p.correct_per_s, 2) + mark)]
    if local.agreement:
        rows += [["top-1 agreement with the reference model"] + cells(lambda p: _pct(p.agreement["top1"])),
                 ["top-3 agreement with the reference model"] + cells(lambda p: _pct(p.agreement["top3"])),
                 ["mean abs confidence difference vs reference"]
                 + cells(lambda p: _fmt(p.agreement["mean_abs_confidence_diff"], 4))]
    if any(p.agreement_with_local for p in passes[1:]):
        rows.append(["top-1 agreement with the local answers"]
                    + cells(lambda p: "100.00 %" if p is local else _pct(p.agreement_with_local["top1"])))
    if all(p.energy for p in passes):
        rows.append(["energy per inference (ESTIMATE)"] + cells(lambda p: f"{p.energy['uj_per_inference']:.2f} uJ"))
    if all(p.board_time for p in passes):
        bt = passes[-1].board_time
        rows += [[f"board time per inference (ESTIMATE, {bt['board_time_model']} + {bt['link_model']} {bt['link']})"]
                 + cells(lambda p: f"{p.board_time['mean_us'] / 1000:.3f} ms"),
                 ["board energy per inference (ESTIMATE)"] + cells(lambda p: f"{p.board_time['energy_uj']:.2f} uJ")]
    blocks.append(("table", head, rows))
    stages = ("total", "local", "serialise", "send", "network", "server_queue", "server_compute", "receive", "parse",
              "overhead")
    blocks.append(("p", "End-to-end latency by stage, p50 / p90 / p99 in ms (board clock" + mark + "); remote stages "
                        "over the answers that came from the server, `network` = waiting for the reply minus the "
                        "server's queue and compute time, `overhead` = total minus server compute and local "
                        "inference."))
    blocks.append(("table", ["stage"] + [_label(p) for p in passes],
                   [[st] + [_stage_cell(p.latency.get(st)) for p in passes] for st in stages
                    if any(p.latency.get(st) for p in passes)]))
    for p in passes[1:]:
        if p.energy:
            blocks.append(("p", f"Energy: {p.energy['note']}."))
            break
    plan = off.split_plan
    if plan:
        blocks.append(("h2", f"Split plan: {Path(plan['model']).name} on {plan['board']} over {plan['link']}"))
        blocks.append(("p", f"Per split point k the board runs operators [0, k) and the server the rest; k = 0 is "
                            f"full offload, k = {len(plan['rows']) - 1} local. Best for {plan['objective']}: "
                            f"**k = {plan['best_k']}**. ESTIMATES: board ms ({plan['board_time_model']}: the head and "
                            f"serialising), link ms ({plan['link_model']}: {plan['link_source']}); server ms: "
                            f"{plan['server']}. {plan['note']}."))
        if "split_plan.png" in plots:
            blocks.append(("img", "split_plan.png", "latency and energy against the split point"))
        blocks.append(("table", ["k", "after", "board ms", "sent B", "link ms", "server ms", "total ms",
                                 "energy mJ"],
                       [[str(r["k"]) + (" (best)" if r["best"] else ""), r["after"] or "(full offload)",
                         f"{r['board_ms'] + r['serialise_ms']:.2f}", str(r["request_bytes"]), f"{r['link_ms']:.2f}",
                         f"{r['server_ms']:.2f}", f"{r['total_ms']:.2f}", f"{r['energy_mj']:.3f}"]
                        for r in plan["rows"]]))
    return blocks


def plot_split_plan(plan, prov):
    """Latency and the board's energy against the split point (the Neurosurgeon picture): stacked board, link
    and server time, energy on the second axis, the best k marked."""
    fig, ax = _figure()
    rows = plan["rows"]
    ks = [r["k"] for r in rows]
    board = [r["board_ms"] + r["serialise_ms"] for r in rows]
    link = [r["link_ms"] for r in rows]
    server = [r["server_ms"] for r in rows]
    ax.bar(ks, board, color="#4477aa", label="board (head, serialising)")
    ax.bar(ks, link, bottom=board, color="#ee7733", label=f"link ({plan['link']})")
    ax.bar(ks, server, bottom=[b + c for b, c in zip(board, link)], color="#66aa55", label="server (tail)")
    ax.set_xlabel("split point k (operators on the board; 0: full offload)")
    ax.set_ylabel("latency, ms (estimate)")
    ax2 = ax.twinx()
    ax2.plot(ks, [r["energy_mj"] for r in rows], color="black", marker=".", label="board energy")
    ax2.set_ylabel("board energy, mJ (estimate)")
    ax.axvline(plan["best_k"], color="red", linestyle="--", label=f"best for {plan['objective']}: k = {plan['best_k']}")
    _title(ax, f"Latency and energy vs split point, {plan['board']} over {plan['link']}", prov)
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(handles + h2, labels + l2, fontsize=7, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def to_markdown(blocks):
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "p":
            out.append(block[1] + "\n")
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            for row in rows:
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
            out.append("")
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n")
    return "\n".join(out)


def to_html(blocks, title, images):
    """One self-contained page: ``images`` maps each image block's file name to its PNG bytes, embedded as a
    data: URI, so the page can be mailed or archived alone."""
    def inline(text):
        escaped = html.escape(text)
        parts = escaped.split("**")
        return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{inline(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{inline(block[1])}</p>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block[1]) + "</tr>")
            for row in block[2]:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            out.append("</table>")
        elif kind == "img":
            data = base64.b64encode(images[block[1]]).decode("ascii")
            out.append(f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(block[2])}"></p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(result, directory):
    """Write report.md (beside its PNG plots), report.html (the plots embedded in it) and the PNG plots into
    ``directory``; returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prov = result.provenance
    images = {}
    if result.performance:
        images["latency_histogram.png"] = plot_latency_histogram(result.performance, prov)
        images["window_throughput.png"] = plot_window_throughput(result.performance, prov)
    if result.accuracy:
        images["confusion_matrix.png"] = plot_confusion(result.accuracy, prov)
    if result.offload and result.offload.split_plan:
        images["split_plan.png"] = plot_split_plan(result.offload.split_plan, prov)
    images = {name: png for name, png in images.items() if png is not None}
    for name, png in images.items():
        write_atomic(directory / name, png)
    blocks = build(result, set(images))
    write_atomic(directory / "report.md", to_markdown(blocks))
    write_atomic(directory / "report.html", to_html(blocks, blocks[0][1], images))
    return [directory / "report.md", directory / "report.html"] + [directory / p for p in sorted(images)]
