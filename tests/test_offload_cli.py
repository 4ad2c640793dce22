"""`tinyhost offload on|off|auto|status|keygen` on the virtual board, and `tinyhost serve` as a real process."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_offload_support import kws_tensor, need_kws
from tinyhost.cli import cli, main
from tinyhost.offload import auth
from tinyhost.offload.client import OffloadClient


FAST_BAUD = 1_000_000


@pytest.fixture
def sim_s3(tmp_path):
    """A virtual ESP32-S3: the offload config does not depend on the board, and its larger heap leaves the
    runtime (bootstrapped into RAM) room to start."""
    from tinyhost.sim import VirtualBoard
    with VirtualBoard(board="esp32s3", state_dir=tmp_path / "sim-state") as vb:
        yield vb


def _run(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


@pytest.mark.sim
@pytest.mark.slow
def test_offload_on_auto_off_status_on_a_virtual_board(sim_s3, tmp_path):
    from tinyhost.client import Device
    from tinyhost.errors import UsageError
    from tinyhost.offload import board

    port = sim_s3.port
    r = CliRunner().invoke(cli, ["offload", "on", "--port", port, "--server", "127.0.0.1:7373"])
    assert isinstance(r.exception, UsageError) and "no model in /models" in str(r.exception)
    token_file = tmp_path / "keys.json"
    r = _run("offload", "on", "--port", port, "--server", "127.0.0.1:7373", "--model-id", "kws",
             "--device-id", "sim-1", "--token-file", str(token_file))
    assert r.exit_code == 0, r.output
    assert "offload on" in r.output and "key=<set>" in r.output
    key = auth.read_token_file(token_file)["sim-1"]
    r = _run("offload", "auto", "--port", port, "--threshold", "0.6")
    assert r.exit_code == 0, r.output
    with Device.open(port) as dev:
        cfg = board.read_config(dev)
        names = [f.name for f in dev.list_files("/")]
    assert "offload.json" in names and not any(n.endswith(".part") for n in names)
    assert (cfg["mode"], cfg["threshold"], cfg["server"], cfg["model_id"]) == ("auto", 0.6, "127.0.0.1:7373", "kws")
    assert bytes.fromhex(cfg["key"]) == key
    r = _run("offload", "off", "--port", port)
    assert r.exit_code == 0 and "offload off" in r.output
    r = _run("offload", "status", "--port", port)
    assert re.search(r"^mode +off$", r.output, re.M)
    assert "<set>" in r.output and key.hex() not in r.output


@pytest.fixture
def fast_sim_s3(tmp_path):
    """sim_s3 on a 1 Mbit/s line: each command bootstraps the runtime through the REPL."""
    from tinyhost.sim import VirtualBoard
    with VirtualBoard(board="esp32s3", state_dir=tmp_path / "sim-state", baud=FAST_BAUD) as vb:
        yield vb


@pytest.mark.sim
@pytest.mark.slow
def test_offload_on_takes_the_ids_from_the_board(fast_sim_s3):
    """Without --model-id/--device-id: the model id is the name of the board's only model, the device id the
    board's name and its chip's unique id (the virtual board's is derived from its flash image's path); with
    several models and none named the boot model, the user is asked which one."""
    from tinyhost.client import Device
    from tinyhost.errors import UsageError
    from tinyhost.offload import board
    from tinyhost.sim.vm import unique_id_hex

    port = fast_sim_s3.port
    with Device.open(port, baud=FAST_BAUD) as dev:
        dev.mkdir("/models")
        dev.put_file(b"not read here", "/models/kws.tflite")
        assert dev.info().unique_id == unique_id_hex(fast_sim_s3.flash_image)
    r = _run("offload", "on", "--port", port, "--baud", str(FAST_BAUD), "--server", "127.0.0.1:7373")
    assert r.exit_code == 0, r.output
    device_id = f"sim-{unique_id_hex(fast_sim_s3.flash_image)}"
    assert f"model_id=kws device_id={device_id} " in r.output
    with Device.open(port, baud=FAST_BAUD) as dev:
        assert (board.read_config(dev)["model_id"], board.read_config(dev)["device_id"]) == ("kws", device_id)
        board.restore_config(dev, None)
        dev.put_file(b"not read here", "/models/vww.tflite")
    r = CliRunner().invoke(cli, ["offload", "on", "--port", port, "--baud", str(FAST_BAUD),
                                 "--server", "127.0.0.1:7373"])
    assert isinstance(r.exception, UsageError) and "several models (kws, vww)" in str(r.exception)
    assert "--boot-model" in r.exception.hint
    r = _run("offload", "on", "--port", port, "--baud", str(FAST_BAUD), "--server", "127.0.0.1:7373",
             "--model-id", "vww", "--device-id", "lab1")
    assert r.exit_code == 0 and "model_id=vww device_id=lab1 " in r.output, r.output


def test_keygen_writes_a_private_token_file(tmp_path):
    path = tmp_path / "keys.json"
    assert _run("offload", "keygen", "--token-file", str(path), "--device-id", "a").exit_code == 0
    assert _run("offload", "keygen", "--token-file", str(path), "--device-id", "b").exit_code == 0
    keys = auth.read_token_file(path)
    assert set(keys) == {"a", "b"} and len(keys["a"]) == 32 and keys["a"] != keys["b"]
    assert (path.stat().st_mode & 0o777) == 0o600
    assert _run("offload", "keygen", "--token-file", str(path), "--device-id", "a", "--rotate").exit_code == 0
    assert auth.read_token_file(path)["a"] != keys["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]


def test_bad_token_files_are_refused_with_what_to_do(tmp_path):
    bad = tmp_path / "bad.json"
    for content in ("{", json.dumps({"version": 1, "devices": {"a": {"key": "abc"}}}),
                    json.dumps({"devices": {}}), json.dumps({"version": 1, "devices": {"bad id!": {"key": "00" * 16}}})):
        bad.write_text(content)
        with pytest.raises(auth.TokenFileError) as e:
            auth.read_token_file(bad)
        assert "keygen" in e.value.hint


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_runs_as_a_process_and_stops_cleanly_with_a_device_connected(tmp_path, signum):
    kws = need_kws()
    token_file = tmp_path / "keys.json"
    key = auth.ensure_device_key(token_file, "p1")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("tinyhost")), "serve", "--model", f"kws={kws}",
                             "--listen", "127.0.0.1:0", "--token-file", str(token_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("listening on"):
                break
        assert lines and lines[-1].startswith("listening on 127.0.0.1:"), "".join(lines)
        assert "authentication: 1 device(s)" in lines[-1]
        port = int(lines[-1].split()[2].rsplit(":", 1)[1])
        with OffloadClient("127.0.0.1", port, device_id="p1", key=key) as c:
            assert c.infer("kws", kws_tensor()).reply.ok
            proc.send_signal(signum)        # the device is still connected, waiting in the server's read
            out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "stopped: 1 answers" in out
    assert "Traceback" not in out and "ERROR" not in out, out


def test_serve_refuses_to_listen_off_loopback_without_keys():
    r = CliRunner().invoke(cli, ["serve", "--model", "kws01", "--listen", "0.0.0.0:7373"])
    assert r.exit_code != 0


def test_serve_refuses_a_fair_share_below_an_equal_share_and_says_what_to_use(capsys):
    kws = Path(__file__).resolve().parents[1] / "models" / "kws" / "kws.tflite"
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", f"kws={kws}", "--listen", "127.0.0.1:0", "--fair-share", "0.5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--fair-share 0.5" in err and "0 for round-robin only" in err


def test_serve_refuses_a_corrupt_model_with_the_readers_reason(tmp_path):
    # one byte of the shipped kws model changed: a tensor's buffer index out of range, which crashes TFLM
    data = bytearray((Path(__file__).resolve().parents[1] / "models" / "kws" / "kws.tflite").read_bytes())
    data[40906] = 0x40
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(data))
    proc = subprocess.run([str(Path(sys.executable).with_name("tinyhost")), "serve", "--model", f"kws={bad}",
                           "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 10, (proc.returncode, proc.stderr)
    assert "refers to buffer" in proc.stderr and "bad.tflite" in proc.stderr
