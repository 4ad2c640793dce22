"""``tinyhost model inspect FILE``: what a .tflite model contains and whether it fits each board."""

import json
from pathlib import Path

import click


@click.group()
def model():
    """Inspect models before flashing them."""


def board_time_text(fit):
    """`; ~X ms, ~Y mJ per inference (estimate)` for a fit verdict that carries a board-time estimate."""
    if fit.board_time is None or not fit.fits:
        return ""
    return f"; estimated {fit.board_time.total_us / 1000:,.1f} ms, {fit.energy_uj / 1000:,.2f} mJ per inference"


@model.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--board", "-b", default=None,
              help="Only this board: a profile (esp32, esp32-romfs, ...), sim, or sim:PROFILE (default: all).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the full report as JSON to this file.")
def inspect_cmd(file, board, json_out):
    """Operators, tensors, MACs, arena bytes (ours and TFLM's), peak RAM and fit per board."""
    from ..model import inspect

    r = inspect(file, board=board)
    click.echo(f"{r.path}: {r.model_bytes} bytes, {len(r.operators)} operators, {r.macs:,} MACs")
    click.echo(f"{'#':>3} {'operator':<18} {'MACs':>12} {'weights':>8}  parameters")
    for op in r.operators:
        params = ", ".join(f"{k}={v}" for k, v in op.params.items())
        click.echo(f"{op.index:>3} {op.op:<18} {op.macs:>12,} {op.weight_bytes:>8}  {params}")
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
    width = max((len(fit.board) for fit in r.fits), default=0)
    where = {"ram": "weights in RAM", "streamed": "weights streamed from flash",
             "mapped": "weights read in place from ROMFS"}
    for i, fit in enumerate(r.fits):
        if fit.board.startswith("sim") and (i == 0 or not r.fits[i - 1].board.startswith("sim")):
            click.echo("virtual boards (MicroPython's 64-bit unix VM with the named board's heap and flash; "
                       "sim: esp32's):")
        verdict = "fits" if fit.fits else "does not fit: " + "; ".join(fit.reasons)
        click.echo(f"  {fit.board:<{width}} {verdict}"
                   + (f" ({where[fit.weights]}, ~{fit.peak_ram_bytes} B)" if fit.fits else "")
                   + board_time_text(fit))
    if any(fit.board_time for fit in r.fits):
        click.echo(f"latency and energy: estimates of the board-time model {r.fits[0].board_time.model} (viper "
                   "kernels, the board's clock and coefficients; energy = active current x supply voltage x "
                   "latency), not measurements: docs/board-time.md")
    if json_out:
        tmp = Path(json_out).with_suffix(Path(json_out).suffix + ".part")
        tmp.write_text(json.dumps(r.to_dict(), indent=2, default=list))
        tmp.replace(json_out)
