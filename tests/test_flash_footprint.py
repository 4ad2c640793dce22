"""Where the firmware and a model go on each board and whether they fit: littlefs's block accounting (checked
against littlefs itself, configured as MicroPython configures it) and every shipped profile with the KWS model."""

import random
from pathlib import Path

import pytest

from tinyhost import boards, flash, mpy

KWS = Path(__file__).parents[1] / "models" / "kws" / "kws.tflite"
# the native code architectures of the boards' MicroPython ports (ESP32 family, nRF52840) and of the virtual board
ARCHES = ("xtensawin", "armv7emsp", "x64")


def littlefs_used_blocks(files, block_bytes, block_count=1024):
    """Blocks in use after writing ``files`` ({path: size}) to a real littlefs2 with VfsLfs2's default settings."""
    from littlefs import LittleFS

    fs = LittleFS(block_size=block_bytes, block_count=block_count, read_size=32, prog_size=32,
                  cache_size=min(block_bytes, flash.LFS_CACHE_BYTES), lookahead_size=32)
    for path, nbytes in files.items():
        directory = path.rsplit("/", 1)[0]
        if directory:
            fs.makedirs(directory, exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(bytes(nbytes))
    return fs.used_block_count


@pytest.mark.parametrize("block_bytes", [512, 4096])
@pytest.mark.parametrize("nbytes", [1, 64, 128, 129, 4092, 4096, 4097, 8184, 8185, 8189, 50160, 300_000])
def test_file_blocks_are_littlefs_own(block_bytes, nbytes):
    # inline up to min(cache, block/8) bytes; past it, whole blocks with the CTZ skip-list's pointers in them
    assert flash.lfs_blocks({"/f": nbytes}, block_bytes) == littlefs_used_blocks({"/f": nbytes}, block_bytes)


def test_directories_and_many_files_are_counted_as_littlefs_does():
    rng = random.Random(3)
    for _ in range(8):
        files = {f"/d{rng.randrange(3)}/s{rng.randrange(2)}/f{i}": rng.choice([10, 129, 900, 4096, 9000, 50160])
                 for i in range(rng.randrange(1, 14))}
        assert flash.lfs_blocks(files, 4096) == littlefs_used_blocks(files, 4096), files


def test_the_firmware_as_files_takes_a_block_or_more_each():
    # why the firmware package goes into a ROMFS partition where there is one: ~35 small modules in 4 KB blocks
    fp = flash.footprint(boards.load("esp32"))
    modules = [path for path in fp.fs_files if path.startswith("/tinyfw/")]
    assert len(modules) > 20
    assert fp.fs_blocks >= len(modules) + 2 * 4      # a block per module, a metadata pair per directory and root


@pytest.mark.parametrize("name", boards.available())
def test_every_profile_takes_the_firmware_and_the_kws_model(name):
    board = boards.load(name)
    version = mpy.compiler_abi()
    for arch in ARCHES if version else (None,):
        abi = version[0] | version[1] << 8 | list(mpy.ARCHES.values()).index(arch) << 10 if version else None
        fp = flash.footprint(board, [KWS], abi)
        assert fp.fs_blocks <= fp.fs_block_count, (
            f"{name} ({arch}): firmware and KWS need {fp.fs_blocks} blocks of {board.fs_block_bytes} bytes, the "
            f"filesystem has {fp.fs_block_count}: {fp.fs_files}")
        assert fp.romfs_image_bytes <= fp.romfs_bytes, (
            f"{name} ({arch}): the ROMFS image is {fp.romfs_image_bytes} bytes, the partition {fp.romfs_bytes}")
        assert fp.fits
        if board.romfs_bytes:       # there, only main.py is a file of its own (the partition holds the rest)
            assert set(fp.fs_files) == {"/main.py"} and fp.romfs_image_bytes > KWS.stat().st_size


def test_nano33ble_profile_has_the_nrf_ports_flash_layout():
    nano = boards.load("nano33ble")
    assert (nano.fs_bytes, nano.fs_block_bytes, nano.romfs_bytes) == (64 * 1024, 4096, 256 * 1024)
    for source in (nano.fs_source, nano.romfs_source):
        assert "MicroPython v1.28.0" in source and "estimate" not in source
    # the firmware and KWS as files would need more blocks than the filesystem has: they go to the partition
    as_files = flash.footprint(boards.load("esp32"), [KWS])
    assert as_files.fs_blocks > nano.fs_bytes // nano.fs_block_bytes
