"""Writing a MicroPython image onto a real board: command construction only (run by the user, never faked here).

ESP32 boards are flashed with esptool (``pip install tinyhost[esp]``), run by the interpreter running tinyhost and
spelled so that esptool 4.x and 5.x both take the commands (5.x calls ``write_flash`` deprecated but runs it); the
Nano 33 BLE Sense with bossac
(from the Arduino nRF528x core). The image is checked before any command is built, so a wrong or corrupt file is
refused before it can reach a chip.
"""

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

ESP_IMAGE_MAGIC = 0xE9           # first byte of every ESP32-family application/bootloader image
NANO33BLE_APP_OFFSET = 0x16000   # MicroPython's ARDUINO_NANO_33_BLE_SENSE image sits after the Arduino bootloader


@dataclass(frozen=True)
class FlashCommand:
    argv: tuple          # the command, argument by argument
    note: str            # what the user should know before running it

    def shell(self):
        return shlex.join(self.argv)


def _read_image(image):
    path = Path(image)
    if not path.is_file():
        raise UsageError(f"firmware image {path} does not exist", hint="download the MicroPython .bin for your board")
    data = path.read_bytes()
    if len(data) < 1024:
        raise UsageError(f"firmware image {path} is only {len(data)} bytes: not a MicroPython image",
                         hint="download the MicroPython .bin for your board from micropython.org/download")
    return path, data


def esptool_commands(board, image, port, baud=460800, erase=True):
    """The esptool commands that write a MicroPython ``image`` to an ESP32-family ``board`` on ``port``."""
    if board.flash_method != "esptool":
        raise UsageError(f"board {board.name} is not flashed with esptool (it uses {board.flash_method})",
                         hint="use bossac_command for the Nano 33 BLE, or pick an ESP32 board")
    path, data = _read_image(image)
    if data[0] != ESP_IMAGE_MAGIC:
        raise UsageError(f"{path} does not start with the ESP image magic byte 0xE9 (found 0x{data[0]:02X})",
                         hint=f"use the MicroPython .bin built for {board.esptool_chip}, not a .uf2, .hex or .elf")
    base = (sys.executable, "-m", "esptool", "--chip", board.esptool_chip, "--port", port)
    commands = []
    if erase:
        commands.append(FlashCommand(base + ("erase_flash",),
                                     "erases the whole flash, files on the board included"))
    commands.append(FlashCommand(
        base + ("--baud", str(baud), "write_flash", "-z", f"0x{board.firmware_offset:x}", str(path)),
        f"writes {len(data)} bytes at offset 0x{board.firmware_offset:x}; then run `tinyhost flash --port {port}`"))
    return commands


def bossac_command(board, image, port):
    """The bossac command that writes MicroPython to a Nano 33 BLE Sense in bootloader mode (double-tap reset)."""
    if board.flash_method != "bossac":
        raise UsageError(f"board {board.name} is not flashed with bossac (it uses {board.flash_method})")
    path, _ = _read_image(image)
    device = port.removeprefix("/dev/")
    return FlashCommand(
        ("bossac", "-e", "-w", f"--offset=0x{NANO33BLE_APP_OFFSET:x}", f"--port={device}", "-i", "-d", "-U", "-R",
         str(path)),
        "double-tap the board's reset button first so it enumerates in bootloader mode (2341:005A)")


def no_image_on_virtual_board():
    return UsageError("the virtual board runs the unix MicroPython VM: it has no firmware image to write",
                      hint="use `tinyhost flash --board sim` to put tinyhost's firmware files on it")


def firmware_commands(board, image, port, baud=460800, erase=True):
    if board.virtual or board.flash_method == "sim":
        raise no_image_on_virtual_board()
    if board.flash_method == "esptool":
        return esptool_commands(board, image, port, baud=baud, erase=erase)
    return [bossac_command(board, image, port)]
