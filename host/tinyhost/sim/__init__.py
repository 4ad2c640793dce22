"""The virtual board: MicroPython's real unix VM behind a pseudo-terminal, standing in for a board.

It has the emulated board's heap (``-X heapsize``), a littlefs2 flash of the board's filesystem size mounted at ``/``,
the board's line rate, soft reset with boot.py/main.py, Ctrl-C, and optional fault injection. Inside the VM the
module ``_vboard`` says what it emulates (``board``, ``heap_bytes``, ``fs_bytes``, ``baud``). See
docs/virtual-board.md.

    from tinyhost.sim import VirtualBoard
    with VirtualBoard(board="esp32", state_dir=tmp) as vb:
        serial.Serial(vb.port) ...
"""

from .board import VirtualBoard, board_port
from .state import board_state_dir, read_flash_files, state_root

__all__ = ["VirtualBoard", "board_port", "board_state_dir", "read_flash_files", "state_root"]
