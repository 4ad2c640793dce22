"""The virtual board's ROMFS partition (profile esp32-romfs): mapped into the VM's memory, not its heap; written
through the block device vfs.rom_ioctl gives for it by plain `mpremote romfs deploy` and by tinyhost; models there
run with weights read in place and give TFLM's outputs.

One virtual esp32-romfs per module, on a fast emulated line (the link is not under test here).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sim

BAUD = 1_000_000
MLPERF_DIR = Path(__file__).parents[2] / "shared" / "mlperf-tiny"
AD01 = MLPERF_DIR / "ad01_int8.tflite"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    from tinyhost.sim import VirtualBoard

    with VirtualBoard(board="esp32-romfs", state_dir=tmp_path_factory.mktemp("romfs-sim"), baud=BAUD) as vb:
        yield vb


def mpremote(port, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", port, "resume", *args],
                          capture_output=True, text=True, timeout=timeout)


def board_exec(port, code):
    result = subprocess.run([sys.executable, "-m", "mpremote", "connect", port, "soft-reset", "exec", code],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_profile_has_partition_and_stock_esp32_has_none():
    from tinyhost import boards

    assert boards.load("esp32").romfs_bytes == 0
    rom = boards.load("esp32-romfs")
    assert rom.romfs_bytes == 1 << 20 and rom.fs_bytes == 1 << 20 and "PR #16857" in rom.romfs_source
    assert rom.heap_bytes == boards.load("esp32").heap_bytes


def test_profile_romfs_fields_are_checked(tmp_path):
    from tinyhost import boards
    from tinyhost.errors import BoardProfileError

    from tinyhost.paths import boards_dir

    (tmp_path / "esp32.toml").write_text((boards_dir() / "esp32.toml").read_text())
    (tmp_path / "odd.toml").write_text('name = "odd"\nextends = "esp32"\nromfs_bytes = 1000\nromfs_source = "x"\n')
    (tmp_path / "nosrc.toml").write_text('name = "nosrc"\nextends = "esp32"\nromfs_bytes = 4096\n')
    with pytest.raises(BoardProfileError, match="romfs_bytes"):
        boards.load("odd", tmp_path)
    with pytest.raises(BoardProfileError, match="romfs_source"):
        boards.load("nosrc", tmp_path)


def test_plain_mpremote_romfs_deploy_mounts_at_rom_without_taking_heap(board, tmp_path):
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "hello_rom.py").write_text("WHERE = 'rom'\n")
    (src / "blob.bin").write_bytes(bytes(range(256)) * 64)

    query = mpremote(board.port, "romfs", "query")
    assert query.returncode == 0 and "ROMFS0 partition has size 1048576 bytes" in query.stdout, query.stdout
    deploy = mpremote(board.port, "romfs", "deploy", str(src))
    assert deploy.returncode == 0 and "ROMFS image deployed" in deploy.stdout, deploy.stdout + deploy.stderr

    out = board_exec(board.port, (
        "import os, sys, gc, hello_rom\n"
        "f = open('/rom/blob.bin', 'rb'); mv = memoryview(f)\n"     # in place: only a file on a mapped fs does this
        "gc.collect()\n"
        "print(sorted(os.listdir('/rom')), hello_rom.WHERE, sys.path.index('/rom/lib') < sys.path.index('/lib'), "
        "len(mv), mv[300], gc.mem_free() + gc.mem_alloc())"))
    fields = out.split()
    assert "'blob.bin'," in out and "'lib']" in out
    assert fields[-5:-1] == ["rom", "True", "16384", str(300 % 256)]
    # the 1 MB partition lives outside the GC heap: the heap is the board's, as on an ESP32
    assert int(fields[-1]) <= 112640


def test_rom_ioctl_answers_as_the_esp32_and_nrf_ports(board):
    # MicroPython v1.28.0's esp32 and nrf ports: segment count and segment only; the segment is the partition's
    # flash block device (4 KB blocks), its bytes readable in place
    out = board_exec(board.port, "import vfs\ndev = vfs.rom_ioctl(2, 0)\n"
                                 "print(vfs.rom_ioctl(1), vfs.rom_ioctl(3, 0, 4096), vfs.rom_ioctl(4, 0, 0, b'x'), "
                                 "dev.ioctl(4, 0), dev.ioctl(5, 0), len(memoryview(dev)))")
    assert out.split()[-6:] == ["1", "-22", "-22", "256", "4096", str(1 << 20)], out


def test_put_models_writes_partition_once_and_model_runs_mapped_equal_to_tflm(board):
    if not AD01.is_file():
        pytest.skip(f"{AD01} is not there (MLPerf Tiny reference models, see ../shared/mlperf-tiny)")
    from tinyhost import flash
    from tinyhost.boards import load
    from tinyhost.client import Device
    from tinyhost.model import oracle

    profile = load("esp32-romfs")
    with Device.open(board.port, baud=BAUD, timeout_s=10.0) as dev:
        flash.flash_items(dev, flash.firmware_items(board=profile), profile)
        first = flash.put_models(dev, [AD01], profile)
        again = flash.put_models(dev, [AD01], profile)
        assert first.sent == ("/rom/models/ad01_int8.tflite",) and first.bytes_sent > AD01.stat().st_size
        assert again.sent == () and again.skipped == first.sent          # same image: nothing written
        info = dev.load_model(flash.model_remote_path(AD01, profile))
        assert info.raw.get("weights_mode") == "mapped", info.raw
        if not oracle.available():
            pytest.skip("tflite-micro is not installed")
        import numpy as np

        rng = np.random.default_rng(5)
        tflm = oracle.TflmOracle(AD01)
        for _ in range(3):
            x = rng.integers(-128, 128, size=info.inputs[0].shape, dtype=np.int8)
            got = dev.infer(x.tobytes()).output
            assert bytes(got) == tflm.run(x).astype(np.int8).tobytes()


def test_firmware_package_runs_from_the_partition_not_the_filesystem(board):
    # put there with the models by the test above (a copy on the filesystem would shadow it and take heap)
    if not AD01.is_file():
        pytest.skip(f"{AD01} is not there")
    out = board_exec(board.port, "import os, gc\ngc.collect()\nf0 = gc.mem_free()\nimport tinyfw.runtime\n"
                                 "gc.collect()\nprint(tinyfw.runtime.__file__, 'tinyfw' in os.listdir('/'), "
                                 "f0 - gc.mem_free())")
    where, on_fs, heap_used = out.split()[-3:]
    assert where.startswith("/rom/tinyfw/") and where.endswith(".mpy") and on_fs == "False", out
    assert int(heap_used) > 0


def test_flash_command_refuses_an_image_larger_than_the_partition(board, tmp_path):
    from tinyhost.boards import load
    from tinyhost.client import Device
    from tinyhost.errors import DoesNotFit
    from tinyhost.romfs import deploy

    profile = load("esp32-romfs")
    with Device.open(board.port, baud=BAUD, timeout_s=10.0) as dev:
        with pytest.raises(DoesNotFit, match="ROMFS partition holds 1048576"):
            deploy(dev, b"\xd2\xcd\x31" + bytes(profile.romfs_bytes), profile)


def test_bench_on_the_romfs_board_labels_it_virtual(board, tmp_path):
    if not AD01.is_file():
        pytest.skip(f"{AD01} is not there")
    from tinyhost.cli import main

    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--port", board.port, "--board", "esp32-romfs", "--baud", str(BAUD), "--model", str(AD01),
              "--mode", "performance", "--window-s", "0.2", "--json", str(out)])
    assert exit_info.value.code in (0, None)
    result = json.loads(out.read_text())
    assert result["provenance"]["virtual"] is True
    assert result["provenance"]["backend"] == "viper"


def test_flash_command_puts_models_in_the_partition_once(board, capsys):
    if not AD01.is_file():
        pytest.skip(f"{AD01} is not there")
    from tinyhost.cli import main

    def flash():
        with pytest.raises(SystemExit) as exit_info:
            main(["flash", "--port", board.port, "--board", "esp32-romfs", "--baud", str(BAUD), "--model", str(AD01)])
        assert exit_info.value.code in (0, None)
        return capsys.readouterr().out

    flash()          # whatever the partition held before (another test's image), it holds ad01 now
    again = flash()
    assert "models /rom/models/ with weights read in place): 1 models, already holds them" in again, again


def test_interrupted_deploy_leaves_no_image_with_files_cut_short(board, tmp_path):
    # Power lost in the middle of the copy into the partition (the flash write fails after two chunks): the board
    # must come up without /rom, not with an image whose files read as erased flash; the next deploy repairs it.
    from tinyhost import romfs
    from tinyhost.boards import load
    from tinyhost.client import Device
    from tinyhost.errors import DeviceError

    blob = bytes(range(251)) * 100                  # 25,100 bytes: seven 4 KB chunks in the image
    (tmp_path / "blob.bin").write_bytes(blob)
    image = romfs.build_image([tmp_path / "blob.bin"])
    profile = load("esp32-romfs")
    cut = ("import vfs\n_segment = type(vfs.rom_ioctl(2, 0))\n_write = _segment.writeblocks\n_n = [0]\n"
           "def _cut(*args):\n"
           "    _n[0] += 1\n"
           "    if _n[0] > 2:\n"
           "        raise OSError(5)\n"
           "    return _write(*args)\n"
           "_segment.writeblocks = _cut\n")
    check = ("import os\ntry:\n    print(len(open('/rom/blob.bin', 'rb').read()))\n"
             "except OSError:\n    print('no /rom')\n")
    with Device.open(board.port, baud=BAUD, timeout_s=10.0) as dev:
        dev.put_file(image, "/romfs-deploy.img")
        with pytest.raises(DeviceError, match="OSError"):
            dev.run_script(cut + romfs._DEPLOY.format(src="/romfs-deploy.img"), fresh=True)
        assert dev.run_script(check, fresh=True).split(b"\n")[-2].strip() == b"no /rom"
        assert romfs.deploy(dev, image, profile)
        assert dev.run_script(check, fresh=True).split(b"\n")[-2].strip() == str(len(blob)).encode()
