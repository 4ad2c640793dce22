"""``tinyhost calibrate``: time micro-benchmark models on a board and write its board-time coefficients."""

import click

from .common import board_options


@click.command("calibrate")
@board_options
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True,
              help="Calibration file to write (TOML; use it with `tinyhost bench --calibration`).")
@click.option("--repeats", type=click.IntRange(3, 1000), default=50, show_default=True,
              help="Timed invokes per model (their interquartile mean is fitted).")
def calibrate(board_name, port, baud, state_dir, out_path, repeats):
    """Fit the board-time coefficients of a board (real or virtual) to invokes timed on it."""
    from .. import board as board_layer, calibrate as cal_mod
    from ..boardtime import BOARD_TIME_MODEL

    with board_layer.connect(board_name, port, baud, state_dir=state_dir) as b:
        if b.virtual:
            b.sync_firmware()
        cal = cal_mod.calibrate(b, repeats=repeats, progress=lambda line: click.echo(f"  {line}"))
    cal_mod.write(cal, out_path)
    where = "the virtual board (host CPU: these describe the host, not the chip)" if cal.virtual else cal.board
    click.echo(f"{len(cal.samples)} models timed on {where}; fitted coefficients of board-time model "
               f"{BOARD_TIME_MODEL} at {cal.clock_mhz} MHz, largest error {cal.max_error_pct:.1f} %:")
    for name in cal.fitted:
        click.echo(f"  {name:<18} {cal.coefficients[name]:>10.2f} cycles")
    for s in cal.samples:
        click.echo(f"  {s.model:<14} measured {s.measured_us:>10.1f} us, fitted {s.fitted_us:>10.1f} us")
    click.echo(f"wrote {out_path}")
