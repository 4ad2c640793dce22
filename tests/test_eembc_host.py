"""``--dut eembc``: the host driver (tinyhost.bench.eembc_host) against a DUT speaking the MLPerf Tiny protocol on
a pseudo-terminal: tinyfw.eembc_dut.serve() under the MicroPython VM with a stand-in model (test_eembc_device)."""

import os
import pty
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from test_eembc_device import DEVICE, FAKE_MODEL
from tinyhost import errors
from tinyhost.bench import datasets, eembc_host, journal, runner

MICROPYTHON = shutil.which("micropython") or str(Path(sys.executable).with_name("micropython"))
pytestmark = pytest.mark.skipif(not Path(MICROPYTHON).exists(), reason="the micropython command is not installed")

_SERVE = r'''
import sys
sys.path.insert(0, DEVICE)
import tinyfw.eembc_dut as eembc_dut
''' + FAKE_MODEL + r'''
FAKE_DELAY_US = DELAY_US
rt = eembc_dut.StandaloneRuntime()
rt.model = FakeModel(KIND)
eembc_dut.serve(rt)
'''


class FakeDutProcess:
    """A MicroPython process serving the EEMBC protocol on a pty; ``port`` is the path pyserial opens."""

    def __init__(self, kind="kws", delay_us=0):
        master, slave = pty.openpty()
        import tty

        tty.setraw(slave)
        self.port = os.ttyname(slave)
        script = f"DEVICE = {str(DEVICE)!r}\nKIND = {kind!r}\nDELAY_US = {delay_us}\n" + _SERVE
        self.proc = subprocess.Popen([MICROPYTHON, "-c", script], stdin=master, stdout=master,
                                     stderr=subprocess.PIPE, close_fds=True)
        os.close(master)
        self._slave = slave           # kept open so the pty stays up between opens

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=5)
        os.close(self._slave)


@pytest.fixture
def fake_dut(request):
    kind, delay = getattr(request, "param", ("kws", 0))
    dut = FakeDutProcess(kind, delay)
    yield dut
    dut.stop()


def test_name_profile_and_timestamp(fake_dut):
    with eembc_host.EembcDut(fake_dut.port, timeout_s=5) as dut:
        assert dut.sync() == "tinyhost"
        assert dut.profile() == ("tinyhost MLPerf Tiny DUT 1.0", "kws01")
        t1 = dut.timestamp()
        t2 = dut.timestamp()
        assert t2 >= t1


def test_load_sends_31_bytes_a_command_and_infer_parses_laps_and_results(fake_dut):
    data = bytes([7]) + bytes(489)
    with eembc_host.EembcDut(fake_dut.port) as dut:
        dut.sync()
        sent = dut.bytes_sent
        dut.load(data)
        # "db load 490%" + 16 commands "db <hex>%" (15 of 31 bytes, one of 25)
        assert dut.bytes_sent - sent == len("db load 490%") + 15 * (3 + 62 + 1) + (3 + 50 + 1)
        run = dut.infer(5, 1)
        assert run.iterations == 5 and run.elapsed_us >= 0
        assert len(run.results) == 12 and max(range(12), key=run.results.__getitem__) == 7


def test_device_errors_raise_and_the_link_stays_in_step(fake_dut):
    with eembc_host.EembcDut(fake_dut.port) as dut:
        dut.sync()
        with pytest.raises(errors.DeviceError, match="Input incomplete"):
            dut.infer(1, 0)
        with pytest.raises(errors.DeviceError, match="Unknown command"):
            dut.command("bogus")
        assert dut.name() == "tinyhost"


def test_silent_port_is_board_not_responding():
    master, slave = pty.openpty()
    try:
        with eembc_host.EembcDut(os.ttyname(slave), timeout_s=0.3) as dut:
            with pytest.raises(errors.BoardNotResponding):
                dut.name()
    finally:
        os.close(master)
        os.close(slave)


def test_missing_port_is_a_transport_error():
    with pytest.raises(errors.TransportError, match="no serial port"):
        eembc_host.EembcDut("/dev/does-not-exist")


@pytest.mark.parametrize("fake_dut", [("kws", 2000)], indirect=True)
def test_performance_run_through_the_eembc_protocol(fake_dut):
    with eembc_host.EembcDut(fake_dut.port) as dut:
        dut.sync()
        target = eembc_host.EembcTarget(dut, "kws01", latency_samples=4)
        perf = runner.run_performance(target, runner.synthetic_inputs(490, count=2), window_s=0.05,
                                      min_inferences=10, warmups=1, latency_source="infer 1 0")
    assert len(perf.windows) == 2
    for w in perf.windows:
        assert w.elapsed_us >= 50_000 and w.inferences >= 10 and len(w.times_us) == 4
    assert 2000 <= perf.median_latency_us < 20_000          # the 2 ms stand-in inference, plus VM overhead
    assert perf.latency["min_us"] >= 2000


def test_accuracy_run_through_the_eembc_protocol(fake_dut, tmp_path):
    root = tmp_path / "kws01"
    root.mkdir()
    labels = [0, 1, 2, 5]
    for i, label in enumerate(labels):
        (root / f"s{i}.bin").write_bytes(bytes([i]) + bytes(489))
    (root / "y_labels.csv").write_text("".join(f"s{i}.bin,12,{y}\n" for i, y in enumerate(labels)))
    ds = datasets.load(root)
    with eembc_host.EembcDut(fake_dut.port) as dut, \
            journal.Journal.open(tmp_path / "j.jsonl", {"model_sha256": "x"}) as j:
        dut.sync()
        acc = runner.run_accuracy(eembc_host.EembcTarget(dut, "kws01"), ds, j)
    assert acc.value == pytest.approx(3 / 4) and acc.confusion[5][3] == 1 and acc.confusion[5][5] == 0
    assert [s.predicted for s in acc.samples] == [0, 1, 2, 3]


@pytest.mark.parametrize("fake_dut", [("ad", 0)], indirect=True)
def test_anomaly_scores_come_from_the_dut(fake_dut, tmp_path):
    root = tmp_path / "ad01"
    root.mkdir()
    (root / "a.bin").write_bytes(struct.pack("<1280f", *[0.5 * (i % 5) for i in range(1280)]))
    (root / "y_labels.csv").write_text("a.bin,2,0,2560,2560\n")
    ds = datasets.load(root)
    with eembc_host.EembcDut(fake_dut.port) as dut:
        dut.sync()
        target = eembc_host.EembcTarget(dut, "ad01")
        outcome = target.infer_item(ds.read(ds.items[0]), ds.sample_dtype)
    assert outcome.predicted == -1 and outcome.score == pytest.approx(0.0, abs=1e-6)
