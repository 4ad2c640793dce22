"""Options shared by the commands: the board a command talks to, and ``--json``."""

import contextlib
import functools
import os
import sys

import click

PORT_ENV = "TINYHOST_PORT"

board_option = click.option(
    "--board", "board_name", default=None,
    help="Board profile (esp32, esp32s3, nano33ble); its port is found by USB VID:PID. "
         "'sim' starts a virtual ESP32 for the command's duration, 'sim:esp32s3' a virtual board with another "
         "profile's heap, flash and line rate. With neither --board nor --port: the one board attached.")
port_option = click.option("--port", "-p", default=None,
                           help=f"Serial port of the board, e.g. /dev/ttyUSB0 [env {PORT_ENV}, for real boards].")
baud_option = click.option("--baud", "-b", type=int, default=None, help="Line rate (default: the board profile's).")
STATE_DIR_HELP = ("Where virtual boards keep their flash, each board in its own folder DIR/<board> "
                  "[env TINYHOST_STATE_DIR; default: ~/.cache/tinyhost/sim].")
state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None, envvar="TINYHOST_STATE_DIR", help=STATE_DIR_HELP)


def resolve_board(board_name, port):
    """``(board_name, port)`` as a command uses them: as given; else the port from $TINYHOST_PORT (not for a virtual
    board); else, with neither, the one attached board (:func:`tinyhost.ports.find_board`)."""
    from .. import boards
    from ..ports import find_board

    if port is None and not (board_name and boards.from_spec(board_name)[1]):
        port = os.environ.get(PORT_ENV) or None
    if board_name is None and port is None:
        port, board_name = find_board()
    return board_name, port


def board_options(f):
    """``--board``, ``--port``, ``--baud``, ``--state-dir``; the command receives the board and port resolved by
    :func:`resolve_board`."""
    @functools.wraps(f)
    def resolved(*args, board_name, port, **kwargs):
        board_name, port = resolve_board(board_name, port)
        return f(*args, board_name=board_name, port=port, **kwargs)

    for option in reversed((board_option, port_option, baud_option, state_dir_option)):
        resolved = option(resolved)
    return resolved


_JSON_STDOUT = "tinyhost.json_stdout"      # click context meta key: the stdout that `--json -` writes to


def json_option(help):
    """``--json PATH``: the command writes its JSON document with :func:`write_json`. ``--json -`` puts it on
    stdout, alone: everything else the command prints goes to stderr while it runs."""
    def decorate(f):
        @functools.wraps(f)
        def wrapped(*args, json_path, **kwargs):
            if json_path != "-":
                return f(*args, json_path=json_path, **kwargs)
            click.get_current_context().meta[_JSON_STDOUT] = sys.stdout
            with contextlib.redirect_stdout(sys.stderr):
                return f(*args, json_path=json_path, **kwargs)

        return click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
                            help=help + " '-': on stdout, the rest of the output on stderr.")(wrapped)
    return decorate


def write_json(json_path, text):
    """Write the JSON document ``text`` for ``--json json_path`` (atomically; ``-``: stdout); True when it went
    to a file (the command may say so)."""
    if json_path == "-":
        stdout = click.get_current_context().meta[_JSON_STDOUT]
        stdout.write(text.rstrip("\n") + "\n")
        stdout.flush()
        return False
    from ..atomic import write_text_atomic

    write_text_atomic(json_path, text.rstrip("\n") + "\n")
    return True


def human_bytes(n):
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1024 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
