"""Shared fixtures. The virtual board ones start the real MicroPython VM behind a pty (tinyhost.sim)."""

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist's workers inherit COLUMNS=80 from the controller's terminal; tinyhost's tables read COLUMNS as
    # the output width, so drop it and let each test see what a pipe would.
    os.environ.pop("COLUMNS", None)


def _virtual_board(state_dir, **options):
    from tinyhost.sim import VirtualBoard

    options.setdefault("board", "esp32")
    return VirtualBoard(state_dir=state_dir, **options)


@pytest.fixture
def sim_board(tmp_path):
    """A freshly booted virtual ESP32 with an empty flash, for one test; yields the VirtualBoard."""
    vb = _virtual_board(tmp_path / "sim-state")
    vb.start()
    try:
        yield vb
    finally:
        vb.stop()


@pytest.fixture(scope="module")
def sim_board_module(tmp_path_factory):
    """One virtual ESP32 shared by the tests of a module (state survives between them); yields the VirtualBoard."""
    vb = _virtual_board(tmp_path_factory.mktemp("sim-state"))
    vb.start()
    try:
        yield vb
    finally:
        vb.stop()
