"""An experiment's report from its stored runs: the cells side by side, a table per metric (models and modes by
board), Pareto fronts (accuracy vs latency, vs energy, vs RAM) with every point labelled, and the budget verdict.

Written as report.html (plots embedded as data: URIs, one file to mail: :func:`tinyhost.bench.report.to_html`),
report.md beside the PNG plots, and the PNGs, each titled with what it shows, the experiment, the date of its runs
and the kind of boards.
"""

from pathlib import Path

from ..bench.report import _fmt, _png, to_html, to_markdown
from ..bench.results import write_atomic
from . import budget as budget_mod
from . import pareto

METRICS = (("accuracy", "accuracy (top-1 or AUC)", "max"), ("board_ms", "latency, board_ms", "min"),
           ("energy_uj", "energy per inference, µJ", "min"), ("ram_bytes", "RAM in use, bytes", "min"),
           ("inferences_per_s", "throughput, inferences/s", "max"))
AXIS = {"board_ms": "latency per inference (board_ms)", "energy_uj": "energy per inference (µJ)",
        "ram_bytes": "RAM in use (bytes)", "accuracy": "accuracy"}


def cell_rows(rows):
    """One row per cell (model, board, mode, backend) from a session's run rows: figures averaged over its ok
    repeats; a cell with none ok keeps its status and reason."""
    cells = {}
    for r in rows:
        key = (r["model"], r["board_name"], r["mode"], r["backend_asked"])
        cells.setdefault(key, []).append(r)
    out = []
    for (model, board, mode, backend), runs in cells.items():
        ok = [r for r in runs if r["status"] == "ok"]
        base = dict(ok[-1] if ok else runs[-1])
        label = f"{model} / {board} / {mode}" + (f" / {backend}" if backend != "auto" else "")
        base.update(label=label, repeats=len(ok))
        for name, *_ in METRICS + (("latency_ms", "", ""), ("offloaded_fraction", "", "")):
            values = [r[name] for r in ok if r.get(name) is not None]
            base[name] = sum(values) / len(values) if values else None
        out.append(base)
    return out


def board_kind(rows):
    kinds = {bool(r.get("virtual")) for r in rows if r.get("status") == "ok"}
    return {frozenset({True}): "virtual boards", frozenset({False}): "real boards"}.get(frozenset(kinds),
                                                                                      "virtual and real boards")


def _date(rows):
    dates = sorted(str(r["finished"])[:16] for r in rows if r.get("finished") is not None)
    return f"{dates[0]} to {dates[-1]} UTC" if dates and dates[0][:10] != dates[-1][:10] else \
        (f"{dates[0][:10]} UTC" if dates else "no runs")


OFFSETS = ((4, 3), (4, -9), (-12, 3), (-12, -9), (4, 11), (-12, 11), (4, -17), (-12, -17))


def plot_front(cells, x, y, title, subtitle):
    """PNG bytes of one Pareto plot (None when no cell has both figures). Each point carries its cell's number,
    and the key beside the plot names every cell; points close together get their numbers spread around them."""
    import math

    pts = pareto.points(cells, x, y)
    if not pts:
        return None
    best = pareto.front(pts)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 5.0), dpi=100)
    ax = fig.add_axes((0.08, 0.12, 0.5, 0.72))
    xs = [p.x for p in pts]
    log_x = min(xs) > 0 and max(xs) / min(xs) > 30
    if log_x:
        ax.set_xscale("log")
    ax.scatter([p.x for p in pts if not p.on_front], [p.y for p in pts if not p.on_front], color="0.6",
               label="dominated")
    ax.scatter([p.x for p in best], [p.y for p in best], color="C3", label="Pareto front")
    ax.step([p.x for p in best], [p.y for p in best], where="post", color="C3", linewidth=1)
    span_x = (math.log10(max(xs)) - math.log10(min(xs))) if log_x else (max(xs) - min(xs))
    span_y = max(p.y for p in pts) - min(p.y for p in pts)
    crowd = {}
    for number, p in enumerate(pts, 1):
        px = math.log10(p.x) if log_x else p.x
        spot = (round(px / (span_x or 1) * 25), round(p.y / (span_y or 1) * 25))
        k = crowd.get(spot, 0)
        crowd[spot] = k + 1
        ax.annotate(str(number), (p.x, p.y), fontsize=8, xytext=OFFSETS[k % len(OFFSETS)],
                    textcoords="offset points", color="C3" if p.on_front else "0.2")
    key = "\n".join(f"{n:>2}  {p.label}{'  *' if p.on_front else ''}" for n, p in enumerate(pts, 1))
    fig.text(0.61, 0.84, key + "\n\n* on the Pareto front", fontsize=7, family="monospace", va="top")
    ax.set_xlabel(AXIS[x] + (", log scale" if log_x else "") + " (lower is better)")
    ax.set_ylabel(AXIS[y] + " (higher is better)")
    ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)
    return _png(fig)


def _metric_table(cells, metric):
    boards = list(dict.fromkeys(c["board_name"] for c in cells))
    rows = {}
    for c in cells:
        rows.setdefault(f"{c['model']} / {c['mode']}" + (f" / {c['backend_asked']}" if c["backend_asked"] != "auto"
                                                          else ""), {})[c["board_name"]] = c
    out = []
    for name, by_board in rows.items():
        out.append([name] + [cell_value(by_board.get(b), metric) for b in boards])
    return ["model / mode"] + boards, out


def _mode_rows(cells, modes):
    by_pair = {}
    for c in cells:
        pair = f"{c['model']} / {c['board_name']}" + (f" / {c['backend_asked']}" if c["backend_asked"] != "auto"
                                                      else "")
        by_pair.setdefault(pair, {})[c["mode"]] = c
    rows = []
    for pair, by_mode in by_pair.items():
        row = [pair]
        for mode in modes:
            c = by_mode.get(mode)
            if c is None or c["status"] != "ok":
                row.append(cell_value(c, "accuracy"))
                continue
            share = c.get("offloaded_fraction")
            row.append(" · ".join([cell_value(c, "accuracy"), cell_value(c, "board_ms"), cell_value(c, "energy_uj")]
                                  + ([f"{100 * share:.0f} % offloaded"] if share is not None else [])))
        rows.append(row)
    return rows


def cell_value(c, metric):
    """A cell's figure as the tables show it (its status when it has no figures)."""
    if c is None:
        return "-"
    if c["status"] != "ok":
        return c["status"]
    v = c.get(metric)
    if v is None:
        return "n/a"
    if metric == "accuracy":
        return f"{v:.4f}" if c.get("accuracy_metric") == "auc" else f"{100 * v:.1f} %"
    if metric == "ram_bytes":
        return f"{v / 1024:.1f} KB"
    return _fmt(float(v), 3 if metric != "energy_uj" else 2)


def build(exp, rows, budget_data=None):
    """(blocks, images) of the report: blocks as tinyhost.bench.report renders them, images {file: PNG bytes}."""
    cells = cell_rows(rows)
    kind, date = board_kind(rows), _date(rows)
    subtitle = f"experiment {exp.name}, {date}, {kind}"
    blocks = [("h1", f"Experiment {exp.name}"),
              ("p", f"{len(cells)} cells from {exp.path}: {sum(c['status'] == 'ok' for c in cells)} measured, "
                    f"{sum(c['status'] == 'failed' for c in cells)} failed, "
                    f"{sum(c['status'] == 'skipped' for c in cells)} skipped; {kind}, {date}.")]
    if kind != "real boards":
        blocks.append(("p", "**Virtual board figures** come from the MicroPython VM on the host's CPU: latency and "
                            "energy are the host's unless board_ms_source names a board-time estimate."))
    blocks.append(("h2", "Cells"))
    blocks.append(("table", ["cell", "status", "accuracy", "board_ms", "board_ms source", "energy µJ", "RAM",
                             "runs"],
                   [[c["label"], c["status"] + (f": {c['reason']}" if c["status"] != "ok" and c.get("reason")
                                                else ""),
                     cell_value(c, "accuracy"), cell_value(c, "board_ms"), c.get("board_ms_source") or "",
                     cell_value(c, "energy_uj"), cell_value(c, "ram_bytes"), str(c["repeats"])]
                    for c in cells]))
    modes = list(dict.fromkeys(c["mode"] for c in cells))
    if len(modes) > 1:
        blocks += [("h2", "Modes side by side: accuracy, board_ms, energy µJ, offloaded"),
                   ("table", ["model / board"] + modes, _mode_rows(cells, modes))]
    for metric, title, better in METRICS:
        if any(c.get(metric) is not None for c in cells):
            header, table_rows = _metric_table(cells, metric)
            blocks += [("h2", f"{title} ({'higher' if better == 'max' else 'lower'} is better), by board"),
                       ("table", header, table_rows)]
    images = {}
    for x, y, title in pareto.FRONTS:
        png = plot_front(cells, x, y, f"Pareto front: {title}", subtitle)
        if png is None:
            continue
        name = f"pareto_{x}.png"
        images[name] = png
        front = pareto.front(pareto.points(cells, x, y))
        blocks += [("h2", f"Pareto front: {title}"), ("img", name, f"{title}, {subtitle}"),
                   ("p", "On the front: " + "; ".join(f"{p.label} ({_fmt(p.x)}, {_fmt(p.y)})" for p in front))]
    blocks += split_blocks(rows, images)
    if budget_data is not None:
        blocks += budget_blocks(budget_mod.evaluate(budget_data,
                                                    budget_mod.configurations_from_cells(
                                                        [c for c in cells if c["status"] == "ok"], budget_data)))
    return blocks, images


def split_blocks(rows, images):
    """Split cells: per model and board, the split plan the first measured run ran from, as a plot of latency and
    energy against the split point (added to ``images``)."""
    from ..bench.report import plot_split_plan
    from .store import result_of

    blocks, seen = [], set()
    for r in rows:
        key = (r["model"], r["board_name"])
        if r["status"] != "ok" or not str(r["mode"]).startswith("split@") or key in seen:
            continue
        result = result_of(r)
        plan = result.offload.split_plan if result is not None and result.offload else None
        if not plan:
            continue
        seen.add(key)
        name = f"split_plan_{len(seen)}.png"
        images[name] = plot_split_plan(plan, result.provenance)
        blocks += [("h2", f"Split plan: {r['model']} on {r['board_name']} over {plan['link']}"),
                   ("img", name, f"latency and energy against the split point, {r['model']} on {r['board_name']}"),
                   ("p", f"Best for {plan['objective']}: k = {plan['best_k']} of {len(plan['rows']) - 1}. ESTIMATES: "
                         f"board time {plan['board_time_model']}, link {plan['link_model']}; the server's time "
                         "measured (docs/split.md).")]
    return blocks


def budget_blocks(res):
    """The budget verdict as report blocks."""
    header = ["configuration", "events sent/day", "downlinked/day", "useful downlinked/day", "inferences/day possible",
              "energy kJ/day", "average W", "peak W", "limits", "verdict"]
    rows = []
    for v in res.verdicts:
        failed = [k for k, ok in v.limits.items() if not ok]
        rows.append([v.name, f"{v.events_sent_per_day:.1f}", f"{v.events_downlinked_per_day:.1f}",
                     f"{v.useful_downlinked_per_day:.1f}",
                     "no filter" if v.inferences_per_day_possible == float("inf")
                     else f"{v.inferences_per_day_possible:.0f}",
                     f"{v.energy_j_per_day / 1000:.1f}", f"{v.average_w:.3f}", f"{v.peak_w:.2f}",
                     "all hold" if not failed else "exceeds: " + ", ".join(failed),
                     "best" if v.name == res.best else ("ok" if v.ok else "over budget")])
    return [("h2", "Budget"),
            ("p", f"The link carries {res.link_bytes_per_day / 1e9:.3f} GB a day: at most "
                  f"{res.max_events_downlinked_per_day:.1f} events a day."),
            ("table", header, rows),
            ("p", f"**Best under the budget: {res.best}**" if res.best else "**No configuration meets every "
                                                                          "limit.**")]


def write(exp, rows, directory, budget_data=None):
    """report.md, report.html and the PNG plots into ``directory``; returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blocks, images = build(exp, rows, budget_data)
    for name, png in images.items():
        write_atomic(directory / name, png)
    write_atomic(directory / "report.md", to_markdown(blocks))
    write_atomic(directory / "report.html", to_html(blocks, blocks[0][1], images))
    return [directory / "report.html", directory / "report.md"] + [directory / n for n in sorted(images)]
