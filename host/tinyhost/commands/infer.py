"""``tinyhost infer`` and ``tinyhost verify``: run a model on a board (inputs from .npy) and check it against TFLM.

Parses options, calls tinyhost.inference_host, formats its dataclasses.
"""

import click

from .. import console
from .. import inference_host as ih
from .common import board_options, json_option, write_json

VIRTUAL_NOTE = "virtual board: MicroPython VM timings on this host, not the chip's"


def format_provenance(p):
    where = f"virtual {p.board}" if p.virtual else p.board
    return (f"board {where} on {p.port}, firmware {p.firmware_version or '?'} ({p.firmware_hash or '?'}), "
            f"backend {p.backend or 'n/a'}, model {p.model_path} sha256 {p.model_sha256[:12]}")


def format_latency(latency, virtual):
    text = (f"on-device latency over {latency.count} inferences: min {latency.min_us} µs, "
            f"median {latency.median_us:.0f} µs, max {latency.max_us} µs")
    return f"{text} [{VIRTUAL_NOTE}]" if virtual else text


def format_board_time(board_time, board):
    return (f"board time on the {board} (ESTIMATE of board-time model {board_time.model}, {board_time.backend}, "
            f"weights {board_time.weights}): {board_time.total_us / 1000:.3f} ms per inference")


def format_run(run):
    lines = [format_provenance(run.provenance)]
    if run.board_time is not None:
        lines.append(format_board_time(run.board_time, run.provenance.board))
    lines.append(format_latency(run.latency, run.provenance.virtual))
    shapes = ", ".join(f"{tuple(o.shape)} {o.dtype}" for o in run.outputs)
    lines.append(f"wrote {run.output_path}: {shapes}")
    return "\n".join(lines)


def samples_table(samples):
    """verify: one row per input, how its outputs compare with TFLM's."""
    table = console.table("#", "input", "elements differ", "of", "max |diff|", "time µs", "result",
                          right={"#", "elements differ", "of", "max |diff|", "time µs"})
    for s in samples:
        table.add_row(str(s.index), s.kind, str(s.mismatches), str(s.elements), f"{s.max_abs_diff:g}",
                      str(s.time_us), "ok" if s.ok else "MISMATCH")
    return table


def format_verify(result):
    lines = [format_provenance(result.provenance),
             format_latency(result.latency, result.provenance.virtual)]
    verdict = ("bit-exact with TFLM" if result.ok else
               f"NOT bit-exact: {sum(not s.ok for s in result.samples)} inputs differ")
    lines.append(f"verify: {len(result.samples)} inputs (seed {result.seed}), {result.mismatches} mismatching "
                 f"elements, largest difference {result.max_abs_diff:g} — {verdict}")
    return "\n".join(lines)


class _Progress:
    """The files flashed first (one bar for them all), then a bar for the inferences: on a terminal's stderr."""

    def __init__(self):
        self.files = console.TransferProgress()
        self._rows = None

    def __enter__(self):
        self.files.__enter__()
        return self

    def row(self, i, n, time_us):
        """``on_row(i, n, time_us)`` of tinyhost.inference_host (and ``on_sample`` of verify)."""
        if self._rows is None:
            self.files.__exit__(None, None, None)           # the files are on the board: their bar stays as it is
            self._rows = console.progress()
            self._rows.__enter__()
            self._task = self._rows.add_task("inferences", total=n, status="")
        self._rows.update(self._task, completed=i + 1, status=f"{time_us} µs")

    def __exit__(self, *exc):
        (self._rows or self.files).__exit__(*exc)


@click.command()
@board_options
@click.option("--model", required=True, help="Model: a .tflite file or a name (kws, vww, ad01 ...).")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="A .npy array: one input of the model's input shape, or N of them stacked (N, ...). "
                   "Its dtype must be the model's input type (int8, uint8 or float32).")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False),
              help="Where the outputs go (.npy; .npz for a model with several outputs), in the input's layout.")
@click.option("--backend", default="auto", show_default=True, help="Engine backend on the board.")
@json_option("Write latencies and provenance (board, model sha256, backend ...) as JSON.")
def infer(board_name, port, baud, state_dir, model, input_path, output_path, backend, json_path):
    """Run a model on the board for every input in a .npy file and save the outputs."""
    checked = ih.check_model(model)
    with _Progress() as progress:
        run = ih.infer(checked, input_path, output_path, board_name=board_name, port=port, baud=baud,
                       state_dir=state_dir, backend=backend, on_row=progress.row, progress=progress.files)
    click.echo(format_run(run))
    if json_path and write_json(json_path, ih.to_json(run)):
        click.echo(f"wrote {json_path}")


@click.command()
@board_options
@click.option("--model", required=True, help="Model: a .tflite file or a name (kws, vww, ad01 ...).")
@click.option("--samples", type=int, default=ih.DEFAULT_SAMPLES, show_default=True,
              help="Random inputs, besides the structured ones (all minimum, all maximum, zeros).")
@click.option("--seed", type=int, default=ih.DEFAULT_SEED, show_default=True, help="Seed of the random inputs.")
@click.option("--backend", default="auto", show_default=True, help="Engine backend on the board.")
@json_option("Write every input's comparison and the provenance as JSON.")
def verify(board_name, port, baud, state_dir, model, samples, seed, backend, json_path):
    """Check the board's outputs against TensorFlow Lite Micro's, element by element (exit code 12 on any
    difference)."""
    checked = ih.check_model(model)
    with _Progress() as progress:
        result = ih.verify(checked, samples=samples, seed=seed, board_name=board_name, port=port, baud=baud,
                           state_dir=state_dir, backend=backend, progress=progress.files,
                           on_sample=lambda s, n: progress.row(s.index, n, s.time_us))
    console.print_table(samples_table(result.samples))
    click.echo(format_verify(result))
    if json_path and write_json(json_path, ih.to_json(result)):
        click.echo(f"wrote {json_path}")
    ih.raise_on_mismatch(result)
