"""The tinyfw runtime under the real MicroPython VM, driven by the host client (tinyhost.client / link).

The VM runs tests/device/run_runtime.py: firmware files copied into a littlefs filesystem in RAM mounted at "/",
the runtime imported from there, its stdin/stdout a TCP connection that the host opens as ``socket://`` through
pyserial -- the same SerialTransport as for a real port, minus the raw REPL (tests/test_client_sim.py covers that).
"""

import hashlib
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tinyhost import protocol as P
from tinyhost.client import Device
from tinyhost.errors import DeviceError, DoesNotFit, ModelError
from tinyhost.transport import SerialTransport

ROOT = Path(__file__).resolve().parents[1]
DEVICE_DIR = ROOT / "device"
RUNNER = ROOT / "tests" / "device" / "run_runtime.py"
FAKE_ENGINE = ROOT / "tests" / "device" / "fake_engine.py"
FIRMWARE = ("__init__.py,frame.py,cmd_files.py,cmd_session.py,runtime.py,cmd_text.py,cmd_model.py,cmd_load.py,"
            "load_reply.py,clock.py")
LAUNCHER = "import sys, micropython_unix as m; sys.exit(m.run_main(['micropython'] + sys.argv[1:]))"


class VmRuntime:
    """One MicroPython VM running the runtime; ``dev`` is a connected Device, ``proc`` the VM process."""

    def __init__(self, fs_blocks=48, max_payload=4096, window=0, heap_bytes=1024 * 1024, files=FIRMWARE):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.proc = None
        args = [sys.executable, "-c", LAUNCHER, "-X", f"heapsize={heap_bytes}", str(RUNNER), str(DEVICE_DIR),
                str(fs_blocks), str(max_payload), str(window), files]

        def accept():
            conn, _ = self.srv.accept()
            self.proc = subprocess.Popen(args, stdin=conn, stdout=conn, stderr=subprocess.PIPE)
            conn.close()

        th = threading.Thread(target=accept, daemon=True)
        th.start()
        self.transport = SerialTransport.open(f"socket://127.0.0.1:{self.srv.getsockname()[1]}", 115200)
        th.join(10)
        self.dev = Device(self.transport, timeout_s=5.0)
        self.dev.started_via = "running"
        assert self.dev._await_ready(allow_absent=False)
        self.dev._hello()

    def raw_request(self, raw, wait_s=2.0):
        """Write raw bytes, return the frames that come back within wait_s (stops at the first reply)."""
        self.transport.write(raw)
        frame = self.dev.link.next_frame(time.monotonic() + wait_s)
        return frame

    def close(self):
        try:
            self.transport.close()
        finally:
            self.srv.close()
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


@pytest.fixture
def vm():
    v = VmRuntime()
    yield v
    v.close()


def test_hello_and_info(vm):
    info = vm.dev.info()
    assert info.firmware_version == "0.1.0"
    assert info.protocol == P.PROTOCOL_VERSION
    assert info.platform == "linux" and info.window == 4 and info.max_payload >= 4096
    assert info.fs_total_bytes == 48 * 4096
    assert 0 < info.fs_free_bytes < info.fs_total_bytes
    assert info.heap_free_bytes > 0 and info.heap_total_bytes > info.heap_free_bytes
    assert info.bootstrapped is False and len(info.firmware_hash) == 16


def test_put_get_hash_list_remove_rename(vm):
    dev = vm.dev
    data = bytes(range(256)) * 41 + b"tail"          # 10500 bytes: several frames and a short last one
    seen = []
    r = dev.put_file(data, "/d/sub/blob.bin", progress=lambda sent, total: seen.append((sent, total)))
    assert r.nbytes == len(data) and r.frames == 3
    assert seen[-1] == (len(data), len(data))
    assert dev.get_file("/d/sub/blob.bin") == data
    assert dev.file_hash("/d/sub/blob.bin") == hashlib.sha256(data).hexdigest()
    assert dev.file_hash("/d/sub/nothing") is None
    assert dev.list_files("/d") == [P_entry("sub", 0, True)]
    assert dev.list_files("/d/sub") == [P_entry("blob.bin", len(data), False)]
    dev.rename("/d/sub/blob.bin", "/d/b2")
    assert sorted(e.name for e in dev.list_files("/d")) == ["b2", "sub"]
    dev.remove("/d/b2")
    dev.remove("/d/sub")
    assert dev.list_files("/d") == []
    dev.mkdir("/d/x/y")
    dev.mkdir("/d/x/y")                               # existing directory: fine
    assert dev.list_files("/d/x") == [P_entry("y", 0, True)]


def test_list_shows_a_name_with_a_newline_as_one_entry(vm):
    """A file whose name holds a newline (put there by anything but tinyhost flash, which refuses such names) is
    one entry of LIST, not a made-up second one."""
    dev = vm.dev
    for name in ("a\nf 1 b.tflite", "back\\slash\\n.bin"):
        dev.put_file(b"xyz", "/h/" + name)
    assert sorted(dev.list_files("/h"), key=lambda e: e.name) == [P_entry("a\nf 1 b.tflite", 3, False),
                                                                 P_entry("back\\slash\\n.bin", 3, False)]


def P_entry(name, size, is_dir):
    from tinyhost.client import FileEntry
    return FileEntry(name, size, is_dir)


def test_empty_file_and_overwrite(vm):
    dev = vm.dev
    dev.put_file(b"", "/empty")
    assert dev.get_file("/empty") == b""
    dev.put_file(b"old content", "/f")
    dev.put_file(b"new", "/f")
    assert dev.get_file("/f") == b"new"
    assert [e.name for e in dev.list_files("/")] == ["empty", "f", "tinyfw"]


def test_errors_name_the_problem(vm):
    dev = vm.dev
    with pytest.raises(DeviceError) as e:
        dev.get_file("/missing")
    assert e.value.code == P.ErrorCode.NOT_FOUND
    with pytest.raises(DeviceError):
        dev.remove("/missing")
    with pytest.raises(DoesNotFit) as e:
        dev.put_file(b"x" * (300 * 1024), "/big")
    assert "needs 307200 bytes" in str(e.value)
    assert dev.file_hash("/big") is None and dev.file_hash("/big.part") is None


def test_unknown_command_gets_error_and_runtime_still_answers(vm):
    with pytest.raises(DeviceError) as e:
        vm.dev.link.request(0x3F)
    assert e.value.code == P.ErrorCode.UNKNOWN_COMMAND
    assert vm.dev.info().firmware_version == "0.1.0"
    assert vm.dev.stats()["errors"] == 1


def test_bad_frame_gets_nak_then_retry_succeeds(vm):
    link = vm.dev.link
    seq = link.next_seq()
    good = P.encode_frame(P.T.INFO, seq)
    bad = bytearray(good)
    bad[-1] ^= 0x40                                   # damaged CRC
    f = vm.raw_request(bytes(bad))
    assert f.ftype == P.T.NAK and P.parse_nak(f.payload) == (seq, P.NakReason.BAD_CRC)
    f = vm.raw_request(good)
    assert f.ftype == P.T.OK and f.seq == seq and "firmware_version" in P.parse_kv(f.payload)
    stats = vm.dev.stats()
    assert stats["frames_bad"] == 1 and stats["naks_sent"] == 1 and stats["frames_retried"] == 1


def test_garbage_between_frames_is_skipped(vm):
    link = vm.dev.link
    seq = link.next_seq()
    noise = b"\xfe\x00\xfe\xa7\xff\xff\xff\xff\xff\xff\xff\xff" + bytes(range(200))
    f = vm.raw_request(noise + P.encode_frame(P.T.STATS, seq))
    while f.ftype == P.T.NAK:                         # the fake header in the noise was NAKed first
        f = link.next_frame(time.monotonic() + 2)
    assert f.ftype == P.T.OK and f.seq == seq


def test_retried_request_is_not_executed_twice(vm):
    dev = vm.dev
    dev.put_file(b"abc", "/a")
    seq = dev.link.next_seq()
    raw = P.encode_frame(P.T.RENAME, seq, P.pack_rename("/a", "/b"))
    first = vm.raw_request(raw)
    second = vm.raw_request(raw)                      # as if the first reply had been lost
    assert first.ftype == P.T.OK and second.ftype == P.T.OK and first == second
    assert dev.get_file("/b") == b"abc"
    assert dev.stats()["frames_dup"] == 1


def test_retried_data_frame_is_acked_not_written_twice(vm):
    dev = vm.dev
    link = dev.link
    data = b"0123456789"
    link.request(P.T.PUT_BEGIN, P.pack_put_begin(len(data), hashlib.sha256(data).digest(), "/p"))
    seq = link.next_seq()
    raw = P.encode_frame(P.T.PUT_DATA, seq, P.pack_put_data(0, data))
    assert vm.raw_request(raw).ftype == P.T.ACK
    assert vm.raw_request(raw).ftype == P.T.ACK
    link.request(P.T.PUT_END)
    assert dev.get_file("/p") == data


def test_interrupted_put_leaves_old_file_and_at_most_a_part(vm):
    dev = vm.dev
    dev.put_file(b"old", "/model.bin")
    link = dev.link
    new = bytes(20000)
    link.request(P.T.PUT_BEGIN, P.pack_put_begin(len(new), hashlib.sha256(new).digest(), "/model.bin"))
    link.send_data(P.T.PUT_DATA, new[:4000], P.pack_put_data)
    # the host goes away here; a new session starts
    dev._hello()
    assert dev.get_file("/model.bin") == b"old"
    assert {e.name for e in dev.list_files("/")} <= {"model.bin", "model.bin.part", "tinyfw"}
    dev.put_file(b"newer", "/model.bin")              # a new put replaces the stale .part
    assert {e.name for e in dev.list_files("/")} == {"model.bin", "tinyfw"}


def test_hash_mismatch_is_refused_and_leaves_nothing(vm):
    link = vm.dev.link
    data = b"payload"
    link.request(P.T.PUT_BEGIN, P.pack_put_begin(len(data), hashlib.sha256(b"other").digest(), "/h"))
    link.send_data(P.T.PUT_DATA, data, P.pack_put_data)
    with pytest.raises(Exception) as e:
        link.request(P.T.PUT_END)
    assert getattr(e.value, "code", None) == P.ErrorCode.HASH_MISMATCH
    assert [e.name for e in vm.dev.list_files("/")] == ["tinyfw"]


def test_text_command_without_eembc_module_answers_in_text(vm):
    vm.transport.write(b"name%")
    deadline = time.monotonic() + 5
    while b"m-ready" not in vm.dev.link.text_tail and b"e-[" not in vm.dev.link.text_tail:
        assert vm.dev.link.next_frame(min(deadline, time.monotonic() + 0.1)) is None
        assert time.monotonic() < deadline, "no text reply"
    assert b"e-[no text commands" in vm.dev.link.take_text()
    assert vm.dev.stats()["text_commands"] == 1


def test_text_command_goes_to_eembc_module_when_present():
    if not (DEVICE_DIR / "tinyfw" / "eembc.py").is_file():
        pytest.skip("device/tinyfw/eembc.py is not there")
    vm = VmRuntime(files=FIRMWARE + ",eembc.py")
    try:
        vm.transport.write(b"name%")
        deadline = time.monotonic() + 5
        while b"m-ready" not in vm.dev.link.text_tail:
            assert vm.dev.link.next_frame(min(deadline, time.monotonic() + 0.1)) is None
            assert time.monotonic() < deadline, "no m-ready"
        assert b"m-name-dut-[" in vm.dev.link.take_text()
        assert vm.dev.info().firmware_version == "0.1.0"      # frames still work after text
    finally:
        vm.close()


def test_ctrl_c_in_a_burst_is_data_but_after_a_pause_it_ends_the_runtime(vm):
    vm.transport.write(b"abc\x03def")                 # not at the start of a burst: text, ignored
    time.sleep(0.2)
    assert vm.dev.info().firmware_version == "0.1.0"
    time.sleep(0.2)
    vm.transport.write(b"\x03")
    vm.proc.wait(timeout=5)
    assert vm.proc.returncode == 0


def test_bye_ends_the_runtime_cleanly(vm):
    vm.dev.stop()
    vm.proc.wait(timeout=5)
    assert vm.proc.returncode == 0


# -- model commands, with the test-double engine ------------------------------------------------------------------

def _fake_model(n_in, n_out):
    return b"FAKE" + struct.pack("<HH", n_in, n_out)


def _expected_output(data, n_out):
    s = sum(data)
    return bytes((s + i) & 0xFF for i in range(n_out))


@pytest.fixture
def vm_model(vm):
    vm.dev.put_file(FAKE_ENGINE.read_bytes(), "/tinyfw/engine/__init__.py")
    vm.dev.put_file(_fake_model(40, 10), "/m.fake")
    return vm


def test_model_commands_without_engine_say_so(vm):
    with pytest.raises(DeviceError) as e:
        vm.dev.load_model("/m.fake")
    assert e.value.code == P.ErrorCode.NO_ENGINE
    assert vm.dev.info().backends == ()


def test_load_set_input_invoke_output(vm_model):
    dev = vm_model.dev
    assert dev.info().backends == ("fake",)
    m = dev.load_model("/m.fake")
    assert m.backend == "fake" and m.arena_bytes == 50 and m.ops == 1
    assert m.inputs[0].shape == (1, 40) and m.inputs[0].dtype == "int8" and m.inputs[0].zero_point == -3
    assert m.outputs[0].nbytes == 10 and m.inputs[0].scale == 0.5
    data = bytes(range(40))
    dev.set_input(data)
    live = []
    r = dev.invoke(5, warmup=2, on_timing=lambda i, us: live.append(i))
    assert live == [0, 1, 2, 3, 4] and len(r.times_us) == 5 and all(t >= 0 for t in r.times_us)
    assert dev.get_output(0) == _expected_output(data, 10)
    res = dev.infer(bytes([1] * 40))
    assert res.output == _expected_output(bytes([1] * 40), 10) and res.time_us >= 0
    assert dev.stats()["model_loaded"] == 1


def test_load_leaving_heap_free_passes_it_to_the_engine_and_keeps_no_input_copy(vm_model):
    dev = vm_model.dev
    m = dev.load_model("/m.fake", keep_free_bytes=43008)
    assert m.raw["keep_free_bytes"] == "43008" and m.raw["input_kept"] == "0" and m.raw["offload"] == "off"
    m = dev.load_model("/m.fake")
    assert m.raw["keep_free_bytes"] == "0" and m.raw["input_kept"] == "1"
    for payload in (b"auto\x00/m.fake\x00lots", b"auto\x00/m.fake\x001\x002", b"auto/m.fake"):
        with pytest.raises(DeviceError) as e:
            dev.link.request(P.T.LOAD, payload, what="load")
        assert e.value.code == P.ErrorCode.BAD_ARGS, payload


def test_invoke_in_batches_keeps_order_and_count(vm_model):
    dev = vm_model.dev
    dev.load_model("/m.fake")
    live = []
    r = dev.invoke(300, on_timing=lambda i, us: live.append(i))
    assert live == list(range(300)) and len(r.times_us) == 300


def test_bad_model_and_missing_model(vm_model):
    dev = vm_model.dev
    dev.put_file(b"FAIL0000", "/bad.fake")
    with pytest.raises(ModelError) as e:
        dev.load_model("/bad.fake")
    assert "not a fake model" in str(e.value)
    with pytest.raises(DeviceError) as e:
        dev.load_model("/nope.fake")
    assert e.value.code == P.ErrorCode.NOT_FOUND
    with pytest.raises(ModelError):
        dev.infer(bytes(40))                          # no model loaded now
    dev.load_model("/m.fake")
    with pytest.raises(DeviceError) as e:
        dev.infer(bytes(3))                           # input 0 has 40 bytes
    assert e.value.code == P.ErrorCode.BAD_ARGS


def test_model_that_does_not_fit_is_refused_with_the_free_heap_and_the_next_load_works():
    """The engine runs out of heap while tinyfw.cmd_load is out of it (the runtime drops it for the load): the
    ERR names the model and the heap left free, and the runtime loads and runs a model that fits right after."""
    v = VmRuntime(heap_bytes=320 * 1024)     # its filesystem takes 192 KB of it
    try:
        dev = v.dev
        dev.put_file(FAKE_ENGINE.read_bytes(), "/tinyfw/engine/__init__.py")
        dev.put_file(_fake_model(65535, 65535), "/huge.fake")
        dev.put_file(_fake_model(40, 10), "/m.fake")
        with pytest.raises(DoesNotFit) as e:
            dev.load_model("/huge.fake")
        assert re.search(r"/huge.fake does not fit in RAM \(.*; heap free \d+ bytes after unloading\)", str(e.value))
        dev.load_model("/m.fake")
        assert dev.infer(bytes(range(40))).output == _expected_output(bytes(range(40)), 10)
    finally:
        v.close()


# -- the real engine (device/tinyfw/engine) with a real model -----------------------------------------------------

MLPERF_DIR = ROOT.parent / "shared" / "mlperf-tiny"


def test_real_engine_runs_kws_model_through_the_runtime():
    model = MLPERF_DIR / "kws_ref_model.tflite"
    engine_dir = DEVICE_DIR / "tinyfw" / "engine"
    if not model.is_file() or not (engine_dir / "__init__.py").is_file():
        pytest.skip("needs ../shared/mlperf-tiny/kws_ref_model.tflite and device/tinyfw/engine")
    vm = VmRuntime(fs_blocks=128, heap_bytes=4 * 1024 * 1024)   # the engine as .py sources, and the model
    try:
        dev = vm.dev
        for path in sorted(engine_dir.glob("*.py")):
            dev.put_file(path, f"/tinyfw/engine/{path.name}")
        dev.put_file(model, "/kws.tflite")
        info = dev.load_model("/kws.tflite")
        assert info.inputs[0].dtype == "int8" and info.inputs[0].nbytes == 490
        assert info.outputs[0].nbytes == 12 and info.arena_bytes > 0
        x = bytes((i * 7) & 0xFF for i in range(490))
        first = dev.infer(x)
        assert len(first.output) == 12 and first.time_us > 0
        assert dev.infer(x).output == first.output                  # deterministic
        dev.set_input(x)
        r = dev.invoke(3, warmup=1)
        assert len(r.times_us) == 3 and r.alloc_bytes == 0            # the engine's invoke allocates nothing
        assert dev.get_output(0) == first.output
    finally:
        vm.close()


def test_upload_hot_path_allocates_nothing(tmp_path):
    """Full-size PUT_DATA frames are read, checked, written, hashed and acknowledged under heap_lock()."""
    data = bytes(range(256)) * 16 * 20
    chunk = 4092
    stream = P.encode_frame(P.T.PUT_BEGIN, 1, P.pack_put_begin(len(data), hashlib.sha256(data).digest(), "up.bin"),
                            P.FLAG_SYNC)
    for i, off in enumerate(range(0, 20 * chunk, chunk)):
        stream += P.encode_frame(P.T.PUT_DATA, 2 + i, P.pack_put_data(off, data[off:off + chunk]))
    (tmp_path / "frames.bin").write_bytes(stream)
    out = subprocess.run([sys.executable, "-c", LAUNCHER, "-X", "heapsize=400000",
                          str(ROOT / "tests" / "device" / "hotpath_check.py"), str(DEVICE_DIR),
                          str(tmp_path / "frames.bin"), str(tmp_path)], capture_output=True, timeout=60)
    assert out.stdout.decode().split() == ["ok", "19"], out.stderr.decode()


SMALL_FRAMES_SCRIPT = """
import io, sys, micropython
sys.path.insert(0, sys.argv[1])
from tinyfw.runtime import Runtime


class Sink:                      # keeps what is written without allocating
    def __init__(self):
        self.buf = bytearray(256)
        self.n = 0

    def write(self, b):
        for i in range(len(b)):
            self.buf[self.n + i] = b[i]
        self.n += len(b)
        return len(b)


out = Sink()
rt = Runtime(io.BytesIO(b''), out, max_payload=2048, window=1)
rt.seq = 7
rt.expected = 9
micropython.heap_lock()
try:
    rt.reply_ack()
    rt._nak(2)
    rt.send_event(3, 0xDEADBEEF)
    rt.send_event(4, 5)
finally:
    micropython.heap_unlock()
sys.stdout.write(bytes(out.buf[:out.n]).hex())
"""


def test_ack_nak_and_event_frames_share_one_buffer_and_allocate_nothing(tmp_path):
    """ACK, NAK and EVENT frames are sealed in one small buffer with the heap locked, and decode on the host."""
    script = tmp_path / "small_frames.py"
    script.write_text(SMALL_FRAMES_SCRIPT)
    out = subprocess.run([sys.executable, "-c", LAUNCHER, "-X", "heapsize=200000", str(script), str(DEVICE_DIR)],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    frames = P.FrameDecoder().feed(bytes.fromhex(out.stdout.decode()))
    assert [(f.ftype, f.seq) for f in frames] == [(P.T.ACK, 7), (P.T.NAK, 9), (P.T.EVENT, 7), (P.T.EVENT, 7)]
    assert frames[0].payload == b""
    assert P.parse_nak(frames[1].payload) == (9, P.NakReason.BAD_CRC)
    assert P.parse_event(frames[2].payload) == (3, 0xDEADBEEF) and P.parse_event(frames[3].payload) == (4, 5)


STREAM_FILES = FIRMWARE + ",eembc.py,boot_model.py,cmd_stream.py,stream_setup.py,stream.py,mfcc.py,mfcc_tables.py,mfcc_ref.py,mfcc_viper.py"


def _text(dev, cmd, timeout_s=10.0):
    """A text (EEMBC) command between frames; its reply lines up to m-ready."""
    link = dev.link
    link.take_text()
    link.t.write(cmd.encode())
    deadline = time.monotonic() + timeout_s
    while b"m-ready" not in link.text_tail:
        assert link.next_frame(min(deadline, time.monotonic() + 0.1)) is None
        assert time.monotonic() < deadline, f"no m-ready after {cmd}"
    return [x for x in link.take_text().decode().replace("\r", "").split("\n") if x]


def test_stream_frames_and_the_streaming_dut_commands():
    vm = VmRuntime(files=STREAM_FILES, fs_blocks=128)
    try:
        dev = vm.dev
        dev.put_file(FAKE_ENGINE.read_bytes(), "/tinyfw/engine/__init__.py")
        dev.put_file(_fake_model(490, 12), "/kws.fake")            # a 49 x 10 input, 12 classes
        dev.load_model("/kws.fake")
        kv = P.parse_kv(dev.link.request(P.T.STREAM_START, P.pack_stream_start(infer_every=5)).payload)
        assert kv["infer_every"] == "5" and kv["clock"] == "real"   # not a virtual board: the real clock
        pcm = bytes(2 * 16000 * 2)                                  # 2 s of silence, 3 hops a frame
        hops = []
        for off in range(0, len(pcm), 1920):
            hops.append(P.parse_audio(dev.link.request(P.T.AUDIO, pcm[off:off + 1920]).payload)[0])
        assert hops[-1] == 100 and hops[:2] == [3, 6]
        stats = {k: v for k, v in P.parse_kv(dev.link.request(P.T.STREAM_STOP).payload).items()}
        assert stats["hops"] == "100" and stats["inferences"] == str((100 - 49) // 5 + 1)
        assert stats["samples"] == "32000" and stats["clock"] == "real"
        with pytest.raises(DeviceError, match="no stream"):
            dev.link.request(P.T.AUDIO, bytes(640))
        # the same pipeline through MLPerf Tiny's streaming DUT commands, audio in AUDIO frames between them
        assert _text(dev, "state%") == ["m-[state idle]", "m-ready"]
        assert _text(dev, "start%")[0].startswith("m-[Listening for audio")
        busy = []
        for off in range(0, 1920 * 20, 1920):
            busy += P.parse_audio_busy(dev.link.request(P.T.AUDIO, pcm[off:off + 1920]).payload)
        # each hop's busy interval (the duty-cycle pin), in the board's clock since the stream started, in order
        assert len(busy) == 60 and all(0 <= s <= e for s, e in busy), busy
        assert all(e0 <= s1 for (_, e0), (s1, _) in zip(busy, busy[1:])), busy
        stopped = _text(dev, "stop%")
        assert stopped[0] == "Streaming stopped." and stopped[1].startswith("m-[hops 60, ")
        lines = _text(dev, "print_detections%")
        assert lines[:2] == ["Detection Timestamps (ms)", "0,"] and lines[-1] == "m-ready"
        # a streaming wakeword DUT names sww01 to a runner when /mlperf_model says so (`tinyhost flash`)
        assert _text(dev, "profile%")[1] == "m-model-[kws01]"
        dev.put_file(b"sww01", "/mlperf_model")
        assert _text(dev, "profile%")[1] == "m-model-[sww01]"
        assert dev.info().firmware_version == "0.1.0"               # frames go on working after the text
    finally:
        vm.close()
