"""Options shared by the commands that talk to a board."""

import click

board_option = click.option(
    "--board", "board_name", default=None,
    help="Board profile (esp32, esp32s3, nano33ble); its port is found by USB VID:PID. "
         "'sim' starts a virtual ESP32 for the command's duration, 'sim:esp32s3' a virtual board with another "
         "profile's heap, flash and line rate.")
port_option = click.option("--port", default=None, help="Serial port of the board, e.g. /dev/ttyUSB0.")
baud_option = click.option("--baud", type=int, default=None, help="Line rate (default: the board profile's).")
state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None, envvar="TINYHOST_STATE_DIR",
    help="Where a virtual board keeps its flash image (default ~/.cache/tinyhost/sim/<board>).")


def board_options(f):
    for option in reversed((board_option, port_option, baud_option, state_dir_option)):
        f = option(f)
    return f


def human_bytes(n):
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1024 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
