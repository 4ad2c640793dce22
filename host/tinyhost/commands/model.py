"""``tinyhost model inspect FILE``: what a .tflite model contains and whether it fits each board."""

import json

import click

from .. import console
from .common import json_option, write_json


@click.group()
def model():
    """Inspect models before flashing them."""


@model.command("inspect")
@click.argument("file")
@click.option("--board", default=None,
              help="Only this board: a profile (esp32, esp32-romfs, ...), sim, or sim:PROFILE (default: all).")
@json_option("Also write the full report as JSON to this file.")
def inspect_cmd(file, board, json_path):
    """Operators, tensors, MACs, arena bytes (ours and TFLM's), peak RAM and fit per board.

    FILE is a .tflite file or a model name (kws, vww, kws01 ...), as --model takes elsewhere."""
    from .. import zoo
    from ..model import inspect

    r = inspect(zoo.resolve(file), board=board)
    click.echo(f"{console.printable(r.path)}: {r.model_bytes} bytes, {len(r.operators)} operators, {r.macs:,} MACs")
    ops = console.table("#", "operator", "MACs", "weights", "parameters", right={"#", "MACs", "weights"})
    for op in r.operators:
        ops.add_row(str(op.index), op.op, f"{op.macs:,}", str(op.weight_bytes),
                    ", ".join(f"{k}={v}" for k, v in op.params.items()))
    console.print_table(ops)
    for label, idx in (("input", r.inputs), ("output", r.outputs)):
        for i in idx:
            t = r.tensors[i]
            click.echo(f"{label}: '{t.name}' {t.dtype}{list(t.shape)} scale={t.scale:.6g} zero_point={t.zero_point}")
    tflm = f"{r.tflm_arena_bytes} B" if r.tflm_arena_bytes is not None else "n/a (install tinyhost[oracle])"
    click.echo(f"arena: {r.arena_bytes} B (TFLM non-persistent arena: {tflm}); weights {r.weight_bytes} B")
    banded = sum(1 for op in r.operators if "row_band" in op.params)
    if banded:
        click.echo(f"  {banded} convolution(s) write over their dying input in bands of output rows (row_band): "
                   "their input and output share arena bytes (docs/engine.md, \"Row bands\")")
    click.echo(f"peak RAM: {r.peak_ram_weights_in_ram_bytes} B with weights in RAM, "
               f"{r.peak_ram_weights_streamed_bytes} B with weights streamed from flash")
    where = {"ram": "weights in RAM", "streamed": "weights streamed from flash",
             "mapped": "weights read in place from ROMFS"}
    for virtual in (False, True):
        fits = [fit for fit in r.fits if fit.board.startswith("sim") == virtual]
        if not fits:
            continue
        title = ("virtual boards (MicroPython's 64-bit unix VM with the named board's heap and flash; sim: esp32's)"
                 if virtual else None)
        table = console.table("board", "fits", "weights", "peak RAM", "latency (est.)", "energy (est.)", "why not",
                              right={"peak RAM", "latency (est.)", "energy (est.)"})
        for fit in fits:
            timed = fit.fits and fit.board_time is not None
            table.add_row(fit.board, "yes" if fit.fits else "no", where[fit.weights] if fit.fits else "",
                          f"~{fit.peak_ram_bytes} B" if fit.fits else "",
                          f"{fit.board_time.total_us / 1000:,.1f} ms" if timed else "",
                          f"{fit.energy_uj / 1000:,.2f} mJ" if timed else "", "; ".join(fit.reasons))
        console.print_table(table, title)
    if any(fit.board_time for fit in r.fits):
        click.echo(f"latency and energy: estimates of the board-time model {r.fits[0].board_time.model} (viper "
                   "kernels, the board's clock and coefficients; energy = active current x supply voltage x "
                   "latency), not measurements: docs/board-time.md")
    timed_fe = [fit for fit in r.fits if fit.front_end_time is not None]
    real_fe = [fit for fit in timed_fe if not fit.board.startswith("sim")]
    if r.front_end and timed_fe:
        c = r.front_end["mfcc"]
        t0 = timed_fe[0].front_end_time
        click.echo(f"front end on the board (tinyfw.mfcc: {r.front_end['model']}'s MFCC, {c['window_samples']}-sample "
                   f"window, {c['fft_size']}-point FFT, {c['mel_bins']} mel bands, {c['mfcc_count']} coefficients): "
                   f"{r.front_end['ram_bytes']:,} B of RAM; per {t0.hop_ms:g} ms hop ({t0.label}, docs/frontend.md):")
        click.echo("  " + ", ".join(f"{fit.board} {fit.front_end_time.per_frame_us / 1000:,.1f} ms"
                                    + (" (cannot keep up)" if fit.front_end_time.hop_fraction > 1 else "")
                                    for fit in real_fe or timed_fe))
    if json_path:
        write_json(json_path, json.dumps(r.to_dict(), indent=2, default=list))
