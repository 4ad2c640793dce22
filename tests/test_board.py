"""The Board layer: the one way commands and benchmarks reach a board.

On a real virtual board: connect, firmware sync, the load policy (INFO before the model takes the heap, a soft reset,
then LOAD), provenance filled from the board's own report, recovery by reconnecting. And a check over the sources
that nothing outside the Board layer opens a Device itself.
"""

import re
from pathlib import Path

import pytest

from tinyhost import board as board_layer
from tinyhost.client import Device

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[1]
SIM_BAUD = 1_000_000


def tiny_model(path):
    from tinyhost.model.writer import small_classifier

    return small_classifier(path, (1, 12, 8, 1), 6, seed=3, conv_channels=4, pool=2)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("board-layer")


@pytest.fixture
def calls(monkeypatch):
    """The Device operations the Board layer makes, in order (the real ones run)."""
    seen = []
    for name in ("info", "soft_reset", "load_model", "unload_model"):
        real = getattr(Device, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            seen.append(_name)
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(Device, name, spy)
    return seen


def test_load_takes_info_then_soft_resets_then_loads_and_fills_the_provenance(tmp_path, state_dir, calls):
    model = tiny_model(tmp_path / "tiny.tflite")
    with board_layer.connect("sim:esp32", baud=SIM_BAUD, state_dir=state_dir) as b:
        b.sync_firmware()
        calls.clear()
        info = b.load(model)                # the model is uploaded first (flash soft-resets after an upload)
        assert calls[-3:] == ["info", "soft_reset", "load_model"]
        assert b.model_info is info and info.inputs[0].shape == (1, 12, 8, 1)
        assert b.board_info.heap_free_bytes > 0
        prov = b.provenance
        assert prov.virtual is True and prov.board == "esp32" and prov.label == "esp32 (virtual board)"
        assert prov.firmware_hash == b.board_info.firmware_hash and len(prov.firmware_hash) >= 8
        assert prov.model_path == str(model) and prov.model_bytes == model.stat().st_size
        assert len(prov.model_sha256) == 64 and prov.backend == info.backend
        assert any(path.endswith("/tiny.tflite") for path in prov.files_flashed)
        result = b.infer(bytes(12 * 8))
        assert len(result.output) == 6

        # a second load of the same model on this connection does not check the board's files again
        calls.clear()
        b.load(model)
        assert calls == ["unload_model", "info", "soft_reset", "load_model"]


def test_reopen_gives_a_new_connection_and_the_model_loads_again(tmp_path, state_dir):
    model = tiny_model(tmp_path / "tiny.tflite")
    with board_layer.connect("sim:esp32", baud=SIM_BAUD, state_dir=state_dir) as b:
        b.sync_firmware()
        b.load(model)
        first = b.dev
        b.dev.t.close()                   # the link breaks under the Board
        assert b.reopen() is not first
        assert b.load(model).outputs[0].shape == (1, 6)
    assert b.dev is None                  # closed on leaving the block


def test_connect_without_a_device_leaves_the_port_to_another_protocol(state_dir):
    with board_layer.connect("sim:esp32", baud=SIM_BAUD, state_dir=state_dir, open_device=False) as b:
        assert b.dev is None and b.virtual and Path(b.port).exists()


def test_only_the_board_layer_opens_a_device():
    """Commands, bench, offload and the benchmarks bring a board up through tinyhost.board, never by hand."""
    allowed = {REPO / "host/tinyhost/board.py", REPO / "host/tinyhost/client.py"}
    offenders = []
    for path in sorted([*(REPO / "host").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]):
        if path in allowed:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bDevice(\.open)?\(", line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []


def test_a_model_that_does_not_fit_is_refused_before_a_byte_is_sent_naming_where_it_fits(state_dir):
    from tinyhost.errors import DoesNotFit

    ic01 = REPO.parent / "shared" / "mlperf-tiny" / "pretrainedResnet_quant.tflite"
    if not ic01.is_file():
        pytest.skip("the MLPerf Tiny ic01 model is not in ../shared/mlperf-tiny")
    with board_layer.connect("sim", baud=SIM_BAUD, state_dir=state_dir) as b:
        with pytest.raises(DoesNotFit) as e:
            b.load(ic01)
        assert "does not fit the virtual esp32 (sim)" in e.value.message
        assert "sim:esp32s3" in e.value.hint and "--board sim:" in e.value.hint
        assert b.dev.file_hash(f"/models/{ic01.name}") is None


def test_loading_a_second_model_gives_the_first_ones_heap_back_before_the_next_upload(tmp_path, state_dir, calls):
    first, second = tiny_model(tmp_path / "first.tflite"), tiny_model(tmp_path / "second.tflite")
    with board_layer.connect("sim:esp32", baud=SIM_BAUD, state_dir=state_dir) as b:
        b.sync_firmware()
        b.load(first)
        calls.clear()
        b.load(second)
        assert b.provenance.model_path == str(second) and b.model_info.outputs[0].shape == (1, 6)
    assert calls[0] == "unload_model"
