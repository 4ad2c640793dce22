"""``tinyhost infer`` and ``tinyhost verify``: run a model on a board (inputs from .npy) and check it against TFLM.

Parses options, calls tinyhost.inference_host, formats its dataclasses.
"""

import contextlib
import sys

import click

from .. import inference_host as ih
from .common import board_options
from .flash import _Progress

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


def format_sample(s):
    state = "ok" if s.ok else "MISMATCH"
    return (f"  #{s.index:<3} {s.kind:<16} {s.mismatches:>6} of {s.elements} elements differ, "
            f"max |diff| {s.max_abs_diff:g}, {s.time_us} µs  {state}")


def format_verify(result):
    lines = [format_provenance(result.provenance),
             format_latency(result.latency, result.provenance.virtual)]
    verdict = ("bit-exact with TFLM" if result.ok else
               f"NOT bit-exact: {sum(not s.ok for s in result.samples)} inputs differ")
    lines.append(f"verify: {len(result.samples)} inputs (seed {result.seed}), {result.mismatches} mismatching "
                 f"elements, largest difference {result.max_abs_diff:g} — {verdict}")
    return "\n".join(lines)


@contextlib.contextmanager
def _flash_progress():
    """The flash command's progress bars while files go to the board, on a terminal only (logs and CI stay clean:
    the files sent are in the --json record)."""
    if not sys.stderr.isatty():
        yield None
        return
    with _Progress() as progress:
        yield progress


def _row_progress(i, n, time_us):
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\x1b[K  inference {i + 1}/{n}: {time_us} µs")
        if i + 1 == n:
            sys.stderr.write("\n")
        sys.stderr.flush()


@click.command()
@board_options
@click.option("--model", required=True, help="Model: a .tflite file or a name (kws, vww, ad01 ...).")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="A .npy array: one input of the model's input shape, or N of them stacked (N, ...). "
                   "Its dtype must be the model's input type (int8 or uint8).")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False),
              help="Where the outputs go (.npy; .npz for a model with several outputs), in the input's layout.")
@click.option("--backend", default="auto", show_default=True, help="Engine backend on the board.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write latencies and provenance (board, model sha256, backend ...) as JSON.")
def infer(board_name, port, baud, state_dir, model, input_path, output_path, backend, json_path):
    """Run a model on the board for every input in a .npy file and save the outputs."""
    checked = ih.check_model(model)
    with _flash_progress() as progress:
        run = ih.infer(checked, input_path, output_path, board_name=board_name, port=port, baud=baud,
                       state_dir=state_dir, backend=backend, on_row=_row_progress, progress=progress)
    click.echo(format_run(run))
    if json_path:
        ih.write_json(run, json_path)
        click.echo(f"wrote {json_path}")


@click.command()
@board_options
@click.option("--model", required=True, help="Model: a .tflite file or a name (kws, vww, ad01 ...).")
@click.option("--samples", type=int, default=ih.DEFAULT_SAMPLES, show_default=True,
              help="Random inputs, besides the structured ones (all minimum, all maximum, zeros).")
@click.option("--seed", type=int, default=ih.DEFAULT_SEED, show_default=True, help="Seed of the random inputs.")
@click.option("--backend", default="auto", show_default=True, help="Engine backend on the board.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write every input's comparison and the provenance as JSON.")
def verify(board_name, port, baud, state_dir, model, samples, seed, backend, json_path):
    """Check the board's outputs against TensorFlow Lite Micro's, element by element (exit code 12 on any
    difference)."""
    checked = ih.check_model(model)
    with _flash_progress() as progress:
        result = ih.verify(checked, samples=samples, seed=seed, board_name=board_name, port=port, baud=baud,
                           state_dir=state_dir, backend=backend,
                           on_sample=lambda s, n: click.echo(format_sample(s)), progress=progress)
    click.echo(format_verify(result))
    if json_path:
        ih.write_json(result, json_path)
        click.echo(f"wrote {json_path}")
    ih.raise_on_mismatch(result)
