"""``tinyhost bench``: MLPerf-Tiny-style performance, accuracy, memory and energy, streamed live.

Parses options, shows the runner's events as they arrive (progress bars on a terminal), prints the BenchResult
as tables and writes --json/--csv/--report.
"""

import click
from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn

from .. import console
from ..bench import runner, session
from ..bench.results import write_csv
from .common import board_options, json_option, write_json


class LivePrinter(runner.Listener):
    """Progress bars with ETA on stderr (a terminal only): the performance windows by device time, the accuracy
    samples with the running accuracy, the offload passes. Messages, and with --verbose each timing and
    prediction, as lines on stderr. Use it as a context manager around the run."""

    def __init__(self, inputs, window_s, verbose=False):
        self.verbose = verbose
        self.inputs, self.window_s = inputs, window_s
        self._progress = console.progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"))
        self._tasks = {}
        self._window_count = 0
        self._window_us = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._progress.stop()

    def _task(self, name, total):
        if name not in self._tasks:
            self._progress.start()              # drawn from the first bar on (idempotent)
            self._tasks[name] = self._progress.add_task(name, total=total, status="")
        return self._tasks[name]

    def _line(self, text):
        self._progress.console.print(console.printable(text))

    def message(self, text):
        self._line(text)

    def timing(self, input_index, seq, time_us):
        if seq == 0:
            self._window_count, self._window_us = 0, 0
        self._window_count += 1
        self._window_us += time_us
        if self.verbose:
            self._line(f"  input {input_index + 1} inference {seq + 1}: {time_us / 1000:.3f} ms")
        # the bar runs on device time: each input's window lasts at least --window-s
        task = self._task("performance", self.inputs * self.window_s)
        done = input_index * self.window_s + min(self._window_us / 1e6, self.window_s)
        self._progress.update(task, completed=done, status=f"input {input_index + 1}/{self.inputs}: "
                                                           f"{self._window_count} inferences")

    def window(self, w):
        task = self._task("performance", self.inputs * self.window_s)
        self._progress.update(task, completed=(w.input_index + 1) * self.window_s)
        self._line(f"  window {w.input_index + 1}: {w.inferences} inferences in {w.elapsed_us / 1e6:.3f} s -> "
                   f"{w.inferences_per_s:.2f} inferences/s")

    def sample(self, s, done, total, running):
        if self.verbose:
            mark = "" if s.predicted < 0 else (" ok" if s.predicted == s.label else " MISS")
            what = f"score {s.score:.5f}" if s.predicted < 0 else f"pred {s.predicted} ({s.score:.3f})"
            self._line(f"  #{s.index} {s.file}{'' if not s.window else f'[{s.window}]'} label {s.label} {what} "
                       f"{s.time_us / 1000:.2f} ms{mark}")
        value = running.get("value")
        shown = "n/a" if value is None else (f"{value:.4f}" if running["metric"] == "auc" else f"{100 * value:.2f} %")
        self._progress.update(self._task("accuracy", total), completed=done, total=total,
                              status=f"{done}/{total}, {running['metric']} {shown}")

    def offload_sample(self, pass_name, done, total, sample):
        if self.verbose:
            how = sample["source"] + (" (fallback)" if sample["fallback"] else "")
            self._line(f"  {pass_name} #{sample['index']}: pred {sample['predicted']} from {how}, "
                       f"{sample['total_us'] / 1000:.3f} ms")
        self._progress.update(self._task(f"{pass_name} pass", total), completed=done, total=total,
                              status=f"{done}/{total}")


def result_table(result):
    """The bench figures as one figure/value table; the value column says when they come from the virtual board."""
    p = result.provenance
    table = console.table("figure", "value [virtual board]" if p.virtual else "value")
    perf = result.performance
    if perf and perf.board_time_us is not None:       # a virtual board: the board's own time comes first
        table.add_row(f"board time per inference on the {p.board}",
                      f"{perf.board_time_us / 1000:.3f} ms, {perf.board_inferences_per_s:.3f} inferences/s "
                      f"(ESTIMATE, board-time model {perf.board_time_model}; docs/board-time.md)")
    if perf:
        host = " (host CPU)" if p.virtual else ""        # a virtual board's clock is the host's
        table.add_row(f"performance (score){host}", f"{perf.median_inferences_per_s:.3f} inferences/s, median of "
                                                   f"{len(perf.windows)} windows")
        table.add_row(f"latency at that throughput{host}", f"{perf.median_latency_us / 1000:.3f} ms")
        table.add_row("spread between windows", f"{perf.spread_pct:.2f} %")
        if perf.latency:
            lat = perf.latency
            for q in ("p50", "p90", "p99"):
                table.add_row(f"single inference {q}{host}", f"{lat[q + '_us'] / 1000:.3f} ms")
            table.add_row("single inferences timed", str(lat["count"]))
    acc = result.accuracy
    if acc:
        value = f"{acc.value:.4f}" if acc.metric == "auc" else f"{100 * acc.value:.2f} %"
        table.add_row("accuracy", f"{acc.metric} {value} over {acc.n_items} inferences")
        if acc.target is not None:
            t = f"{acc.target:.2f}" if acc.metric == "auc" else f"{100 * acc.target:.0f} %"
            table.add_row("MLPerf Tiny target", f"{t}: {'met' if acc.meets_target else 'NOT met'}")
        for k, v in acc.top_k.items():
            if k != "1":
                table.add_row(f"top-{k}", f"{100 * v:.2f} %")
        if acc.board_resets:
            table.add_row("board resets / link breaks recovered", str(acc.board_resets))
    mem = result.memory
    if mem:
        for name, v in (("model", mem.model_bytes), ("tensor arena", mem.arena_bytes),
                        ("peak heap", mem.heap_peak_bytes), ("free heap", mem.heap_free_bytes)):
            table.add_row(f"memory: {name}", "n/a" if v is None else f"{v / 1024:.1f} KB")
    en = result.energy
    if en:
        label = "ESTIMATE" if en.kind == "estimate" else "measured"
        latency = en.inputs.get("latency", "latency")
        table.add_row(f"energy ({label})", f"{en.uj_per_inference:.2f} uJ per inference, with the {latency} "
                                           f"{en.inputs['latency_us'] / 1000:.3f} ms")
    return table


def print_result(result):
    p = result.provenance
    click.echo(f"board {p.label}, {p.dut} DUT {p.dut_name}, firmware {p.firmware_version} ({p.firmware_hash}), "
               f"backend {p.backend or 'n/a'}, model {p.model_path or p.benchmark} {p.model_sha256[:12]}")
    if result.performance or result.accuracy or result.memory or result.energy:
        console.print_table(result_table(result))
    en = result.energy
    if en:
        click.echo(f"energy: {en.note}")
        click.echo("  inputs: " + ", ".join(f"{k}={v}" for k, v in en.inputs.items()))
    if result.offload:
        print_offload(result.offload, " [virtual board]" if p.virtual else "")


STAGES = ("total", "local", "serialise", "send", "network", "server_queue", "server_compute", "receive", "parse",
          "overhead")


def pass_label(p):
    """A column head for an offload pass: local, offload (on|auto), split (at k)."""
    if p.name == "split" and p.split_at is not None:
        return f"split (k={p.split_at})"
    return "local" if p.name == "local" else f"{p.name} ({p.mode})"


def offload_tables(off, mark=""):
    """``bench --offload``: the local, offloaded and split passes side by side, then their latency by stage (board
    clock; the virtual board's is the host CPU's), one column per percentile."""
    passes = off.passes
    local = passes[0]
    heads = [pass_label(p) for p in passes]
    figures = console.table("figure", *heads, right=set(heads))

    def row(label, fn, when=all):
        cells = [fn(p) for p in passes]
        if when(c is not None for c in cells):
            figures.add_row(label, *("" if c is None else c for c in cells))

    row("answers local / server", lambda p: f"{p.sources.get('local', 0)} / {p.offloaded}")
    row("fallbacks / retries", lambda p: f"{p.fallbacks} / {p.retries}")
    row("identical to the local answers", lambda p: "-" if p is local else
        None if p.identical_to_local is None else f"{p.identical_to_local} / {p.requests}", when=any)
    if local.accuracy is not None:
        row("accuracy (ground truth)", lambda p: f"{100 * p.accuracy:.2f} %")
        row("correct predictions / s (board)", lambda p: f"{p.correct_per_s or 0:.2f}")
    if local.agreement:
        for k, label in (("top1", "top-1 agreement with reference"), ("top3", "top-3 agreement with reference")):
            row(label, lambda p, k=k: f"{100 * p.agreement[k]:.1f} %")
        row("mean |confidence diff| vs reference", lambda p: f"{p.agreement['mean_abs_confidence_diff']:.4f}")
    row("top-1 agreement with local", lambda p: "100.0 %" if p is local else
        None if not p.agreement_with_local else f"{100 * p.agreement_with_local['top1']:.1f} %", when=any)
    row("energy uJ/inference (ESTIMATE)", lambda p: f"{p.energy['uj_per_inference']:.2f}" if p.energy else None)
    bt = passes[-1].board_time
    if bt:
        row(f"board time ms (ESTIMATE, {bt['board_time_model']}+{bt['link_model']}, {bt['link']})",
            lambda p: f"{p.board_time['mean_us'] / 1000:.3f}" if p.board_time else None)
        row("board energy uJ/inference (ESTIMATE)",
            lambda p: f"{p.board_time['energy_uj']:.2f}" if p.board_time else None)
    quantiles = ("p50", "p90", "p99")
    cols = [f"{p.name}\n{q}" for p in passes for q in quantiles]
    stages = console.table("stage", *cols, right=set(cols))
    for stage in STAGES:
        got = [p.latency.get(stage) for p in passes]
        if any(got):
            stages.add_row(stage, *(_ms(a, q) for a in got for q in quantiles))
    return figures, stages


def _ms(stats, q):
    return f"{stats[q + '_us'] / 1000:.3f}" if stats else "-"


def split_plan_table(plan):
    """The split plan a split pass ran from: per split point k the board's, the link's and the server's share."""
    t = console.table("k", "after", "board ms", "sent B", "link ms", "server ms", "total ms", "energy mJ", "",
                      right={"k", "board ms", "sent B", "link ms", "server ms", "total ms", "energy mJ"})
    for r in plan["rows"]:
        t.add_row(str(r["k"]), r["after"] or "(full offload)", f"{r['board_ms'] + r['serialise_ms']:,.2f}",
                  str(r["request_bytes"]), f"{r['link_ms']:,.2f}", f"{r['server_ms']:,.2f}", f"{r['total_ms']:,.2f}",
                  f"{r['energy_mj']:,.3f}", "<- best" if r["best"] else "")
    return t


def print_offload(off, mark=""):
    started = " (started in-process for this run)" if off.server_started else ""
    click.echo(f"offload{mark}: server {off.server}{started}, model id {off.model_id}, transport {off.transport}, "
               f"inputs: {off.inputs_source}")
    figures, stages = offload_tables(off, mark)
    console.print_table(figures)
    console.print_table(stages, f"latency by stage in ms, board clock{mark}")
    for p in off.passes[1:]:
        if p.errors:
            click.echo(f"{p.name} errors (code: count): " + ", ".join(f"{k}: {v}" for k, v in p.errors.items()))
    plan = off.split_plan
    if plan:
        console.print_table(split_plan_table(plan),
                            f"split plan: {plan['board']} over {plan['link']}, best for {plan['objective']}: "
                            f"k = {plan['best_k']} (ESTIMATES: {plan['board_time_model']}, {plan['link_model']}; "
                            "server measured)")


@click.command()
@board_options
@click.option("--model", required=True, help="Model: a .tflite file or a name (kws, vww, kws01 ...).")
@click.option("--mode", type=click.Choice(session.MODES + ("streaming",)), default=None,
              help="What to measure [default: performance; with --offload only the offload passes].")
@click.option("--dataset", type=click.Path(file_okay=False), default=None,
              help="Test set: MLPerf Tiny layout (y_labels.csv + .bin), or class folders of .wav / images.")
@click.option("--dut", type=click.Choice(["tinyhost", "eembc"]), default="tinyhost", show_default=True,
              help="tinyhost: our firmware and protocol; eembc: any firmware speaking the MLPerf Tiny protocol.")
@click.option("--backend", default="auto", show_default=True, help="Engine backend on the board.")
@click.option("--window-s", type=float, default=runner.MLPERF_WINDOW_S, show_default=True,
              help="Minimum length of each timed window (MLPerf Tiny: 10 s).")
@click.option("--min-inferences", type=int, default=runner.MLPERF_MIN_INFERENCES, show_default=True)
@click.option("--warmups", type=int, default=1, show_default=True)
@click.option("--inputs", "n_inputs", type=int, default=runner.MLPERF_INPUTS, show_default=True,
              help="Different inputs, one window each (MLPerf Tiny: 5).")
@click.option("--limit", type=int, default=None, help="Accuracy: only the first N samples (a quick check).")
@json_option("Write the result as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Write every figure as CSV.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Write report.md, report.html and PNG plots into this folder.")
@click.option("--resume", is_flag=True, help="Continue an interrupted accuracy run from its journal.")
@click.option("--journal", type=click.Path(dir_okay=False), default=None,
              help="Accuracy journal file (default .tinyhost/bench/<board>-<model>-<dataset>.jsonl).")
@click.option("--energy-meter", type=click.Choice(["none", "joulescope"]), default="none", show_default=True,
              help="joulescope: measure energy (needs `pip install joulescope`); none: estimate it.")
@click.option("--verbose", "verbose_lines", is_flag=True, help="Print each timing and prediction as it arrives.")
@click.option("--offload", "offload_on", is_flag=True,
              help="Also run the inputs (the dataset when given) locally and offloaded, side by side.")
@click.option("--server", default=None,
              help="--offload: HOST:PORT of `tinyhost serve` (default: start one on 127.0.0.1 for this run).")
@click.option("--offload-mode", type=click.Choice(["on", "auto"]), default="on", show_default=True,
              help="--offload: the offloaded pass always offloads (on) or only when unsure (auto).")
@click.option("--split", "split_at", default=None,
              help="--offload: a split pass too (docs/split.md): the board runs operators [0, K), the server the "
                   "rest; auto: the split plan's best K for the board's link.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="--offload-mode auto: offload when the local top-1 confidence is below this (default 0.8); "
                   "--mode streaming: the smoothed posterior a detection needs (default 0.5).")
@click.option("--reference-model", default=None,
              help="--offload without --server: a larger model the started server answers with (PATH or name).")
@click.option("--model-id", default=None, help="--offload: the model id on the server (default: from --model).")
@click.option("--device-id", default=None, help="--offload: the board's name towards the server.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="--offload: take (or add) the board's key from this token file (the server's).")
@click.option("--offload-inputs", type=int, default=None,
              help="--offload without --dataset: how many pseudo-random inputs [default: 20].")
@click.option("--offload-timeout-ms", type=int, default=None, help="--offload: per-request limit before falling back.")
@click.option("--link-rate-bps", type=int, default=None,
              help="--offload: radio link rate for the energy estimate's airtime [default: 1000000].")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="A virtual board's board time from this file's coefficients (`tinyhost calibrate`) instead of "
                   "its profile's.")
def bench(board_name, port, baud, state_dir, model, mode, dataset, dut, backend, window_s, min_inferences, warmups,
          n_inputs, limit, json_path, csv_path, report_dir, resume, journal, energy_meter, verbose_lines,
          offload_on, server, offload_mode, threshold, reference_model, model_id, device_id, token_file,
          offload_inputs, offload_timeout_ms, link_rate_bps, calibration, split_at):
    """Benchmark a model MLPerf-Tiny style: performance, accuracy, memory, energy; --offload: local vs offloaded;
    --mode streaming: the streaming wakeword benchmark on a folder of long WAVs."""
    if mode == "streaming":
        return bench_streaming(board_name, port, baud, state_dir, model, dataset, threshold, json_path, offload_on)
    offload_opts = None
    if offload_on:
        from ..bench.offload import DEFAULT_INPUTS, DEFAULT_LINK_RATE_BPS, OffloadOptions

        offload_opts = OffloadOptions(
            server=server, mode=offload_mode, threshold=threshold, model_id=model_id, device_id=device_id,
            token_file=token_file, reference_model=reference_model, timeout_ms=offload_timeout_ms,
            inputs=offload_inputs or DEFAULT_INPUTS, link_rate_bps=link_rate_bps or DEFAULT_LINK_RATE_BPS,
            split=_split_at(split_at))
    elif any(v is not None for v in (server, threshold, reference_model, model_id, device_id, token_file,
                                     offload_inputs, offload_timeout_ms, link_rate_bps, split_at)):
        from ..errors import UsageError

        raise UsageError("--server, --reference-model and the other offload options need --offload",
                         hint="add --offload")
    if mode is None and not offload_on:
        mode = "performance"
    opts = session.BenchOptions(
        model=model, mode=mode, board=board_name, port=port, baud=baud, state_dir=state_dir, dataset=dataset,
        dut=dut, backend=backend, window_s=window_s, min_inferences=min_inferences, warmups=warmups,
        inputs=n_inputs, resume=resume, journal=journal, limit=limit, energy_meter=energy_meter,
        offload=offload_opts, calibration=calibration)
    try:
        with LivePrinter(n_inputs, window_s, verbose=verbose_lines) as printer:
            result = session.run(opts, printer)
    except KeyboardInterrupt:
        if mode in ("accuracy", "all"):
            from ..errors import Interrupted

            raise Interrupted("interrupted", hint="the journal keeps every finished sample; run the same command "
                                                  "with --resume to continue") from None
        raise
    print_result(result)
    if json_path and write_json(json_path, result.to_json()):
        click.echo(f"wrote {json_path}")
    if csv_path:
        write_csv(result, csv_path)
        click.echo(f"wrote {csv_path}")
    if report_dir:
        from ..bench.report import write_report

        paths = write_report(result, report_dir)
        click.echo(f"wrote {paths[0]} and {len(paths) - 1} more files in {report_dir}")


def _split_at(text):
    """--split: None, "auto" or a split point."""
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        from ..errors import UsageError

        raise UsageError(f"--split must be a split point (an integer) or auto, not {text!r}",
                         hint="`tinyhost split plan MODEL` lists the split points") from None


def streaming_table(r):
    """The streaming wakeword figures (tinyhost.bench.streaming.StreamingResult) as a figure/value table."""
    f = r.figures()
    table = console.table("figure", "value [virtual board]" if r.virtual else "value")
    table.add_row("true positives", f"{f['true_positives']} of {f['true_positives'] + f['false_negatives']} "
                                    f"keywords ({f['labels_right']} with the right label)")
    table.add_row("false negatives", str(f["false_negatives"]))
    table.add_row("false positives (debounced 1 s)", str(f["false_positives"]))
    table.add_row("false accepts per hour", f"{f['false_accepts_per_hour']:.1f} over {f['audio_s']:.1f} s of audio")
    if f["latency_mean_s"] is not None:
        table.add_row("detection latency (after the keyword's end)",
                      f"mean {f['latency_mean_s'] * 1000:.0f} ms, max {f['latency_max_s'] * 1000:.0f} ms")
    est = f" (ESTIMATE: board-time model {r.clock} and the profile's power)" if r.clock not in ("", "real") else \
        " (ESTIMATE from the profile's power)"
    table.add_row("duty cycle", f"{100 * f['duty_cycle']:.1f} %")
    table.add_row("energy, duty cycled" + est,
                  f"{f['energy_mj']:.1f} mJ, mean {f['mean_power_mw']:.1f} mW (active {r.active_mw:.0f} mW, idle "
                  f"{r.idle_mw:.1f} mW)")
    table.add_row("real time", "keeps up" if f["keeps_up"] else "does NOT keep up (inferences skipped or hops "
                                                                "dropped; see --json)")
    return table


def bench_streaming(board_name, port, baud, state_dir, model, dataset, threshold, json_path, offload_on):
    from .. import board as board_mod
    from .. import stream as st
    from ..bench import streaming
    from ..errors import UsageError
    from ..zoo import resolve

    if offload_on:
        raise UsageError("--mode streaming runs on the board alone", hint="drop --offload")
    if not dataset:
        raise UsageError("--mode streaming needs --dataset DIR (WAV files and their detection windows)",
                         hint="make one: python -m tinyhost.bench.sww DIR")
    options = st.StreamOptions(threshold=threshold if threshold is not None else st.StreamOptions.threshold).check()
    model_path = resolve(model)
    out = console.console(stderr=True)
    with board_mod.connect(board_name, port, baud, state_dir=state_dir) as b:
        result = streaming.run(b, model_path, dataset, options,
                               on_file=lambda f: out.print(f"streaming {console.printable(f.wav_path.name)} "
                                                           f"({f.length_s:g} s, {len(f.windows)} keywords)"),
                               on_detection=lambda d: out.print(f"  {d.board_s:8.2f} s  {d.label} {d.score:.2f}"))
    p = result.provenance
    click.echo(f"streaming wakeword on {p.label}: model {p.model_path} {p.model_sha256[:12]}, "
               f"detection threshold {result.threshold:g}, times: "
               + ("board time (ESTIMATE of board-time model " + result.clock + ")" if result.clock != "real"
                  else "the board's clock"))
    console.print_table(streaming_table(result))
    if json_path and write_json(json_path, result.to_json()):
        click.echo(f"wrote {json_path}")
