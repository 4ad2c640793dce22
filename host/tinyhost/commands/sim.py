"""``tinyhost sim``: run a virtual board until Ctrl-C / SIGTERM; the first line of stdout is its port path."""

import click

from .. import boards
from ..errors import TransportError
from ..sim.relay import BootFailed, make_config, serve
from ..sim.state import board_state_dir
from .common import state_dir_option


@click.command()
@click.option("--board", "board_name", default="esp32", show_default=True,
              help="Board profile to emulate (its heap, flash size and baud): esp32 (or sim), esp32s3, nano33ble, "
                   "esp32-romfs; as the other commands spell it too (sim:esp32s3).")
@click.option("--baud", "-b", type=click.IntRange(min=1), help="Emulated line rate in bit/s [default: the profile's].")
@state_dir_option
@click.option("--drop-rate", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Probability that a byte is lost on the line (both directions).")
@click.option("--corrupt-rate", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Probability that a byte is changed on the line (both directions).")
@click.option("--seed", type=int, help="Seed for the fault injection, for reproducible faults.")
@click.option("--fresh", is_flag=True, help="Erase the flash first (an empty filesystem with a default boot.py).")
def sim(board_name, baud, state_dir, drop_rate, corrupt_rate, seed, fresh):
    """Start a virtual board: MicroPython's VM on a pseudo-terminal that mpremote, pyserial and tinyhost open
    like /dev/ttyUSB0. Prints the port path first, then what it emulates; serves until Ctrl-C or SIGTERM."""
    profile = boards.emulated(boards.from_spec(board_name)[0])
    config = make_config(profile.name, baud, board_state_dir(profile.name, state_dir), drop_rate, corrupt_rate, seed,
                         fresh)
    try:
        serve(config)
    except BootFailed as e:
        image = config.state_dir / "flash.img"
        raise TransportError(str(e), hint=f"its flash ({image}) is kept: start it again; if boot.py or main.py on "
                             f"it ends the VM at every start, add --fresh to start from an empty flash (it erases "
                             f"{image})") from None
