"""Board profiles: shipped ones load; bad ones are refused naming file and field."""

import shutil

import pytest

from tinyhost import boards
from tinyhost.errors import BoardProfileError, UsageError
from tinyhost.paths import boards_dir


def test_shipped_profiles_load_with_sources():
    names = boards.available()
    assert {"sim", "esp32", "esp32s3", "nano33ble"} <= set(names)
    for board in boards.load_all():
        for state in boards.POWER_STATES:
            assert board.power[state].source.strip()
        assert board.heap_bytes > 0 and board.fs_bytes > 0


def test_variant_overrides_only_what_differs():
    esp32, s3 = boards.load("esp32"), boards.load("esp32s3")
    assert s3.heap_bytes != esp32.heap_bytes
    assert s3.radios == esp32.radios          # inherited
    assert s3.fs_block_bytes == esp32.fs_block_bytes


def test_sim_stands_in_for_esp32():
    sim, esp32 = boards.load("sim"), boards.load("esp32")
    assert sim.virtual and not esp32.virtual
    assert (sim.heap_bytes, sim.fs_bytes, sim.baud) == (esp32.heap_bytes, esp32.fs_bytes, esp32.baud)


def test_usb_detection_prefers_specific_profile():
    assert [b.name for b in boards.match_usb(0x2341, 0x805A)] == ["nano33ble"]
    assert [b.name for b in boards.match_usb(0x10C4, 0xEA60)][0] == "esp32"
    assert boards.match_usb(0xFFFF, 0x0001) == []


@pytest.fixture
def board_dir(tmp_path):
    for path in boards_dir().glob("*.toml"):
        shutil.copy(path, tmp_path)
    return tmp_path


@pytest.mark.parametrize("edit, field", [
    (lambda t: 'colour = "red"\n' + t, "colour"),
    (lambda t: t.replace("clock_mhz = 240", "clock_mhz = -1"), "clock_mhz"),
    (lambda t: t.replace("heap_bytes = 112640", 'heap_bytes = "lots"'), "heap_bytes"),
    (lambda t: t.replace('radios = ["wifi", "ble"]', 'radios = ["lora"]'), "radios"),
    (lambda t: t.replace('"10C4:EA60"', '"10C4-EA60"'), "usb_ids"),
    (lambda t: t.replace("current_ma = 240.0", "current_ma = -5"), "power.radio_tx.current_ma"),
])
def test_bad_profile_names_file_and_field(board_dir, edit, field):
    path = board_dir / "esp32.toml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(BoardProfileError) as err:
        boards.load("esp32", board_dir)
    assert str(path) in str(err.value) and f"'{field}'" in str(err.value)


def test_variant_with_missing_parent_is_refused(board_dir):
    (board_dir / "esp32.toml").unlink()
    with pytest.raises(BoardProfileError, match="'extends'"):
        boards.load("esp32s3", board_dir)


def test_unknown_board_lists_known_ones():
    with pytest.raises(UsageError) as err:
        boards.load("arduino-uno")
    assert "esp32" in err.value.hint
