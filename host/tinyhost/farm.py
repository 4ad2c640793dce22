"""Boards in a labgrid farm: acquire a place, reach its serial port over the network, release it.

labgrid (https://labgrid.readthedocs.io) shares boards between people: an *exporter* on the machine the boards are
plugged into publishes each serial port through ser2net (a ``NetworkSerialPort``), a *coordinator* keeps the
*places* (a place is one board and what belongs to it) and who holds them. tinyhost drives labgrid's own client,
``labgrid-client`` (from $TINYHOST_LABGRID_CLIENT or PATH), so labgrid may live in a virtual environment of its
own: :func:`acquire` locks the place, reads its NetworkSerialPort (host, port, protocol) and yields the pyserial
URL of the port (``rfc2217://HOST:PORT``), which every tinyhost command opens like /dev/ttyUSB0. The place is
released when the block ends, whatever ended it.
"""

import ast
import contextlib
import logging
import os
import shutil
import subprocess
import time

from .errors import TransportError, UsageError

log = logging.getLogger(__name__)

CLIENT_ENV = "TINYHOST_LABGRID_CLIENT"
COMMAND_TIMEOUT_S = 30.0
PORT_WAIT_S = 15.0               # the exporter starts ser2net when the place is acquired


def client_command():
    """The labgrid-client to run: $TINYHOST_LABGRID_CLIENT, else labgrid-client on PATH."""
    found = os.environ.get(CLIENT_ENV) or shutil.which("labgrid-client")
    if not found:
        raise UsageError("labgrid-client not found (a board in the file is a labgrid place)",
                         hint=f"pip install labgrid (in its own venv if you like) and put its labgrid-client on PATH "
                              f"or in ${CLIENT_ENV}; docs/farm.md")
    return found


def _client(args, place, coordinator=None, check=True):
    cmd = [client_command()] + (["-x", coordinator] if coordinator else []) + ["-p", place] + list(args)
    log.info("labgrid: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TransportError(f"labgrid-client {' '.join(args)} for place {place} did not answer in "
                             f"{COMMAND_TIMEOUT_S:g} s", hint="check that the coordinator runs and its address "
                                                              "(coordinator: in the file, or $LG_COORDINATOR)") \
            from None
    if check and proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise TransportError(f"labgrid place {place}: {' '.join(args)} failed: {said[-1] if said else proc.returncode}",
                             hint="`labgrid-client who` shows who holds the places; `labgrid-client places` lists "
                                  "them")
    return proc.stdout


def acquired_resources(show_output):
    """The acquired resources' attributes (dicts with cls and params) in ``labgrid-client show``'s output, where
    each follows an ``Acquired resource`` line as a Python literal."""
    out, block = [], None
    for line in show_output.splitlines():
        if line.startswith("Acquired resource"):
            block = []
            continue
        if block is not None:
            if line.startswith("  "):
                block.append(line.strip())
                if line.rstrip().endswith("}") and _balanced("".join(block)):
                    out.append(ast.literal_eval(" ".join(block)))
                    block = None
            else:
                block = None
    return out


def _balanced(text):
    return text.count("{") == text.count("}")


def serial_url(resource):
    """The pyserial URL of a NetworkSerialPort's attributes, None while its port is not up."""
    params = resource.get("params") or {}
    if not params.get("port"):
        return None
    host, port = params["host"], params["port"]
    if params.get("protocol", "rfc2217") == "raw":
        return f"socket://{host}:{port}"
    # ser2net on a port without modem lines does not answer SET-CONTROL; pyserial then waits for it in vain
    return f"rfc2217://{host}:{port}?ign_set_control"


@contextlib.contextmanager
def acquire(place, coordinator=None):
    """Acquire labgrid ``place`` and yield the URL of its serial port; the place is released on exit, even when
    the block failed. ``coordinator``: HOST:PORT (default $LG_COORDINATOR, then labgrid's own default)."""
    _client(["acquire"], place, coordinator)
    log.info("acquired labgrid place %s", place)
    try:
        deadline = time.monotonic() + PORT_WAIT_S
        while True:
            ports = [r for r in acquired_resources(_client(["show"], place, coordinator))
                     if r.get("cls") == "NetworkSerialPort"]
            if not ports:
                raise UsageError(f"labgrid place {place} has no serial port (NetworkSerialPort)",
                                 hint=f"match the exporter's serial port: labgrid-client -p {place} add-match "
                                      "EXPORTER/GROUP/*")
            url = serial_url(ports[0])
            if url:
                break
            if time.monotonic() > deadline:
                raise TransportError(f"labgrid place {place}: its serial port did not come up in {PORT_WAIT_S:g} s",
                                     hint="check the exporter's log (ser2net must be installed there)")
            time.sleep(0.5)
        yield url
    finally:
        _client(["release"], place, coordinator, check=False)
        log.info("released labgrid place %s", place)
