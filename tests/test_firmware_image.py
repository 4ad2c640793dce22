"""esptool / bossac command construction for writing MicroPython onto real boards (not run here)."""

import sys

import pytest

from tinyhost import boards
from tinyhost.errors import UsageError
from tinyhost.firmware_image import esptool_commands, firmware_commands


@pytest.fixture
def esp_image(tmp_path):
    path = tmp_path / "ESP32_GENERIC-v1.24.bin"
    path.write_bytes(bytes([0xE9]) + bytes(4095))
    return path


def test_esp32_erase_then_write_at_0x1000(esp_image):
    erase, write = esptool_commands(boards.load("esp32"), esp_image, "/dev/ttyUSB0")
    # the interpreter running tinyhost (where tinyhost[esp] put esptool); spellings esptool 4.x and 5.x both take
    assert erase.argv == (sys.executable, "-m", "esptool", "--chip", "esp32", "--port", "/dev/ttyUSB0", "erase_flash")
    assert write.argv == (sys.executable, "-m", "esptool", "--chip", "esp32", "--port", "/dev/ttyUSB0",
                          "--baud", "460800", "write_flash", "-z", "0x1000", str(esp_image))


def test_esp32s3_writes_at_offset_zero_without_erase(esp_image):
    (write,) = esptool_commands(boards.load("esp32s3"), esp_image, "/dev/ttyACM0", baud=921600, erase=False)
    assert write.argv[3:5] == ("--chip", "esp32s3")
    assert write.argv[-3:] == ("-z", "0x0", str(esp_image))
    assert "921600" in write.argv


def test_shell_form_quotes_paths(tmp_path):
    path = tmp_path / "my image.bin"
    path.write_bytes(bytes([0xE9]) + bytes(2047))
    (write,) = esptool_commands(boards.load("esp32"), path, "/dev/ttyUSB0", erase=False)
    assert f"'{path}'" in write.shell()


def test_image_without_esp_magic_is_refused(tmp_path):
    uf2 = tmp_path / "firmware.uf2"
    uf2.write_bytes(b"UF2\n" + bytes(4092))
    with pytest.raises(UsageError, match="0xE9"):
        esptool_commands(boards.load("esp32"), uf2, "/dev/ttyUSB0")


def test_missing_or_tiny_image_is_refused(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        esptool_commands(boards.load("esp32"), tmp_path / "nope.bin", "/dev/ttyUSB0")
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"\xE9\x00")
    with pytest.raises(UsageError, match="not a MicroPython image"):
        esptool_commands(boards.load("esp32"), tiny, "/dev/ttyUSB0")


def test_nano33ble_uses_bossac_after_the_bootloader(tmp_path):
    image = tmp_path / "firmware.bin"
    image.write_bytes(bytes(8192))
    (cmd,) = firmware_commands(boards.load("nano33ble"), image, "/dev/ttyACM0")
    assert cmd.argv[0] == "bossac" and "--offset=0x16000" in cmd.argv and "--port=ttyACM0" in cmd.argv


def test_virtual_board_has_no_image_to_write(esp_image):
    with pytest.raises(UsageError, match="virtual board"):
        firmware_commands(boards.load("sim"), esp_image, "/dev/pts/3")


@pytest.mark.parametrize("board", ["sim", "sim:esp32s3"])
def test_virtual_boards_have_no_image_to_write(board, esp_image, capsys):
    from tinyhost.cli import main

    with pytest.raises(SystemExit) as code:
        main(["flash", "--board", board, "--firmware", str(esp_image)])
    assert code.value.code == UsageError.exit_code
    assert "no firmware image to write" in capsys.readouterr().err
