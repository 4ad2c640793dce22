"""`tinyhost serve`'s server on a real loopback socket: answers, authentication, and bad clients that must not
crash or stall it for others. All loops are bounded; every socket has a timeout."""

import logging
import socket
import threading
import time

import pytest

from test_offload_support import kws_tensor, need_kws, start_server, tflm_kws
from tinyhost.errors import UsageError
from tinyhost.offload import auth, models, wire
from tinyhost.offload.client import OffloadClient, OffloadRefused, read_frame
from tinyhost.offload.fairqueue import FairQueue
from tinyhost.offload.server import OffloadServer, ServerConfig, parse_listen
from tinyhost.offload.serverlog import RefusalLog


@pytest.fixture(scope="module")
def kws_server():
    thread, srv, address = start_server(frame_timeout_s=1.0, max_frame_bytes=64 * 1024)
    yield srv, address
    thread.stop()


@pytest.fixture
def keyed_server(tmp_path):
    token_file = tmp_path / "keys.json"
    key = auth.ensure_device_key(token_file, "board-1")
    thread, srv, address = start_server(keys=auth.KeyStore(token_file))
    yield srv, address, token_file, key
    thread.stop()


def _raw(address, timeout_s=5.0):
    s = socket.create_connection(address, timeout=timeout_s)
    return s


def _hello(s, device_id="raw"):
    s.sendall(wire.encode_hello(1, device_id, bytes(16)))
    return wire.decode_frame(read_frame(s.recv_into))


def _reply(s):
    f = wire.decode_frame(read_frame(s.recv_into))
    return wire.decode_reply(f.body)


def test_answer_is_the_tflm_models_with_server_times(kws_server):
    _, address = kws_server
    data = bytes((i * 37) % 256 for i in range(490))
    with OffloadClient(*address, device_id="t1") as c:
        ex = c.infer("kws", kws_tensor(data))
    assert ex.reply.tensor.data == tflm_kws(data)
    assert ex.reply.tensor.shape == (1, 12) and ex.reply.tensor.dtype == "int8"
    assert ex.reply.tensor.zero_point == -128 and ex.reply.source == wire.SOURCE_MODEL
    assert ex.reply.compute_us > 0 and ex.total_us >= ex.reply.compute_us


@pytest.mark.parametrize("model_id, status", [
    ("kws", wire.BAD_SHAPE), ("kws", wire.BAD_DTYPE), ("kws", wire.BAD_SIZE), ("kws", wire.BAD_QUANT),
    ("nope", wire.UNKNOWN_MODEL), ("kws", wire.NO_REFERENCE),
])
def test_bad_requests_get_an_error_reply_and_the_connection_stays_usable(kws_server, model_id, status):
    _, address = kws_server
    good = kws_tensor()
    bad = {wire.BAD_SHAPE: wire.Tensor("int8", (1, 490), good.scale, 83, bytes(490)),
           wire.BAD_DTYPE: wire.Tensor("uint8", good.shape, good.scale, 83, bytes(490)),
           wire.BAD_SIZE: wire.Tensor("int8", good.shape, good.scale, 83, bytes(489)),
           wire.BAD_QUANT: wire.Tensor("int8", good.shape, 0.25, 83, bytes(490))}.get(status, good)
    want = wire.WANT_REFERENCE if status == wire.NO_REFERENCE else wire.WANT_DEFAULT
    with OffloadClient(*address, device_id="t2") as c:
        ex = c.infer(model_id, bad, want=want, check=False)
        assert ex.reply.status == status and ex.reply.message
        assert c.infer("kws", good).reply.ok
    with OffloadClient(*address, device_id="t2") as c, pytest.raises(OffloadRefused) as e:
        c.infer(model_id, bad, want=want)
    assert e.value.status == status


def test_garbage_gets_an_error_reply_and_close_while_others_are_served(kws_server):
    _, address = kws_server
    with OffloadClient(*address, device_id="steady") as steady, _raw(address) as junk:
        junk.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = _reply(junk)
        assert reply.status == wire.BAD_FRAME
        assert junk.recv(1) == b""                       # closed by the server
        assert steady.infer("kws", kws_tensor()).reply.ok


def test_oversize_frame_is_refused_before_reading_it(kws_server):
    _, address = kws_server
    with _raw(address) as s:
        assert wire.decode_welcome(_hello(s).body).status == wire.OK
        s.sendall(wire.HEADER.pack(wire.MAGIC, 1, wire.KIND_REQUEST, 0, 2, 10_000_000))
        assert _reply(s).status == wire.TOO_LARGE
        assert s.recv(1) == b""


def test_corrupt_crc_is_answered_and_the_session_goes_on(kws_server):
    _, address = kws_server
    with _raw(address) as s:
        _hello(s)
        frame = bytearray(wire.encode_request(2, wire.Request("kws", 0, kws_tensor())))
        frame[50] ^= 0x40
        s.sendall(frame)
        assert _reply(s).status == wire.BAD_CRC
        s.sendall(wire.encode_request(3, wire.Request("kws", 0, kws_tensor())))
        assert _reply(s).ok


def test_request_before_hello_and_replayed_sequence_are_refused(kws_server):
    _, address = kws_server
    with _raw(address) as s:             # refused from its header: the body is never read, the connection ends
        s.sendall(wire.encode_request(1, wire.Request("kws", 0, kws_tensor())))
        assert _reply(s).status == wire.AUTH_REQUIRED
        assert s.recv(1) == b""
    with _raw(address) as s:
        _hello(s)
        s.sendall(wire.encode_request(5, wire.Request("kws", 0, kws_tensor())))
        assert _reply(s).ok
        s.sendall(wire.encode_request(5, wire.Request("kws", 0, kws_tensor())))
        assert _reply(s).status == wire.REPLAYED


def test_a_stalled_half_frame_does_not_stall_other_devices(kws_server):
    srv, address = kws_server
    with _raw(address) as slow, OffloadClient(*address, device_id="fast") as fast:
        _hello(slow)
        frame = wire.encode_request(2, wire.Request("kws", 0, kws_tensor()))
        slow.sendall(frame[:100])                       # and then nothing
        for _ in range(5):
            assert fast.infer("kws", kws_tensor()).reply.ok
        assert _reply(slow).status == wire.BAD_FRAME    # after the 1 s frame timeout
        assert slow.recv(1) == b""


def test_many_concurrent_devices_each_get_their_own_answers(kws_server):
    _, address = kws_server
    inputs = [bytes(((i + 3) * (j + 1)) % 256 for j in range(490)) for i in range(4)]
    expected = [tflm_kws(d) for d in inputs]
    failures = []

    def device(n):
        try:
            with OffloadClient(*address, device_id=f"dev{n}", timeout_s=20) as c:
                for k in range(6):
                    i = (n + k) % len(inputs)
                    if c.infer("kws", kws_tensor(inputs[i])).reply.tensor.data != expected[i]:
                        failures.append((n, k))
        except Exception as e:      # reported below, with the device number
            failures.append((n, repr(e)))

    threads = [threading.Thread(target=device, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


def test_authenticated_device_is_served_and_replies_are_signed(keyed_server):
    _, address, _, key = keyed_server
    with OffloadClient(*address, device_id="board-1", key=key) as c:
        assert c.welcome.auth
        assert c.infer("kws", kws_tensor()).reply.ok


def test_unknown_device_and_wrong_key_are_refused_and_logged(keyed_server, caplog):
    srv, address, _, key = keyed_server
    caplog.set_level(logging.WARNING, logger="tinyhost.offload.server")
    with pytest.raises(OffloadRefused) as e:
        OffloadClient(*address, device_id="stranger", key=key).connect()
    assert e.value.status == wire.AUTH_FAILED
    # right id, wrong key: the server's proof does not match, and the request MAC is refused
    c = OffloadClient(*address, device_id="board-1", key=b"k" * 32)
    with pytest.raises(OffloadRefused):
        c.connect()
    with _raw(address) as s:
        assert wire.decode_welcome(_hello(s, "board-1").body).auth
        s.sendall(wire.encode_request(2, wire.Request("kws", 0, kws_tensor()), auth.frame_mac(b"x" * 32)))
        assert _reply(s).status == wire.AUTH_FAILED
    with _raw(address) as s:
        _hello(s, "board-1")
        s.sendall(wire.encode_request(2, wire.Request("kws", 0, kws_tensor())))     # no MAC at all
        assert _reply(s).status == wire.AUTH_FAILED
    assert srv.stats.auth_failures == 3
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "unknown device 'stranger'" in logged and "bad request MAC" in logged


def test_device_added_to_the_token_file_while_serving_gets_in(keyed_server):
    _, address, token_file, _ = keyed_server
    new_key = auth.ensure_device_key(token_file, "board-2")
    with OffloadClient(*address, device_id="board-2", key=new_key) as c:
        assert c.infer("kws", kws_tensor()).reply.ok


def test_reference_model_answers_in_the_device_models_layout():
    kws = need_kws()
    entry = models.ModelEntry("kws", kws, reference_path=kws)      # same model as its own reference
    thread, _, address = start_server({"kws": entry})
    try:
        data = bytes((i * 11) % 256 for i in range(490))
        with OffloadClient(*address, device_id="r") as c:
            ref = c.infer("kws", kws_tensor(data)).reply
            dev = c.infer("kws", kws_tensor(data), want=wire.WANT_MODEL).reply
    finally:
        thread.stop()
    assert ref.source == wire.SOURCE_REFERENCE and dev.source == wire.SOURCE_MODEL
    assert ref.tensor.data == dev.tensor.data == tflm_kws(data)


def test_busy_when_clients_exceed_the_limit():
    thread, srv, address = start_server(max_clients=1)
    try:
        with OffloadClient(*address, device_id="first"), _raw(address) as second:
            assert _reply(second).status == wire.BUSY
        assert srv.stats.connections_refused == 1
    finally:
        thread.stop()


def test_listen_address_parsing_and_loopback_rule():
    assert parse_listen("127.0.0.1:7373") == ("127.0.0.1", 7373)
    assert parse_listen(":8000") == ("127.0.0.1", 8000)
    assert parse_listen("[::1]:9") == ("::1", 9)
    with pytest.raises(UsageError):
        parse_listen("host:port")
    entry = models.ModelEntry("kws", "unused.tflite")
    with pytest.raises(UsageError, match="without authentication"):
        OffloadServer({"kws": entry}, None, ServerConfig(host="0.0.0.0"))


def test_resolve_model_names_and_paths(tmp_path):
    kws = need_kws()
    model_id, path = models.resolve_model("kws01")           # registry name; pulled, or found in shared/
    assert model_id == "kws01" and path.read_bytes() == kws.read_bytes()
    assert models.resolve_model(f"small={kws}") == ("small", kws)
    assert models.resolve_model(str(kws)) == ("kws_ref_model", kws)
    with pytest.raises(UsageError):
        models.resolve_model("nosuchmodel")
    with pytest.raises(UsageError, match="no such model file"):
        models.resolve_model(str(tmp_path / "x.tflite"))


# -- no unauthenticated client can starve the others -------------------------------------------------------------
def _attack_server(**config):
    config.setdefault("max_pending", 8)
    config.setdefault("hello_timeout_s", 1.0)
    config.setdefault("frame_timeout_s", 1.0)
    return start_server(**config)


def test_idle_sockets_before_hello_cannot_lock_out_devices():
    thread, srv, address = _attack_server(max_clients=8)
    idle = []
    try:
        idle = [_raw(address) for _ in range(20)]                  # more than max_clients and max_pending
        with OffloadClient(*address, device_id="good", timeout_s=5) as c:
            assert c.infer("kws", kws_tensor()).reply.ok
        assert srv.stats.connections_pending <= 8
        assert srv.stats.pending_dropped >= 12
        # the ones left are closed when their HELLO time is up
        for s in idle[-8:]:
            s.settimeout(5)
            assert s.recv(1) == b""
        assert srv.stats.hello_timeouts >= 7
    finally:
        for s in idle:
            s.close()
        thread.stop()


def test_slowloris_is_bounded_by_the_frame_deadline():
    thread, srv, address = _attack_server()
    try:
        with _raw(address) as slow:
            hello = wire.encode_hello(1, "slow", bytes(16))
            t0 = time.monotonic()
            for b in hello[:-1]:                      # one byte every 0.2 s: each byte alone is never late
                try:
                    slow.sendall(bytes([b]))
                except OSError:
                    break
                time.sleep(0.2)
                if time.monotonic() - t0 > 4:
                    break
            assert _reply(slow).status == wire.BAD_FRAME
            assert time.monotonic() - t0 < 3
    finally:
        thread.stop()


def test_authenticated_idle_session_times_out():
    thread, srv, address = _attack_server(idle_timeout_s=0.5)
    try:
        with _raw(address) as s:
            assert wire.decode_welcome(_hello(s).body).status == wire.OK
            s.settimeout(5)
            assert s.recv(1) == b""
        assert srv.stats.idle_timeouts == 1
    finally:
        thread.stop()


def test_big_frames_are_refused_from_the_header_before_and_after_hello():
    thread, srv, address = _attack_server()
    try:
        with _raw(address) as s:            # before HELLO: at most a HELLO's size
            s.sendall(wire.HEADER.pack(wire.MAGIC, 1, wire.KIND_HELLO, 0, 1, (1 << 20) - 100))
            assert _reply(s).status == wire.TOO_LARGE
            assert s.recv(1) == b""
        with _raw(address) as s:            # after: at most one request for the largest served input, or
            _hello(s)                       # split request for its widest split point (tinyhost.split)
            from tinyhost.split import split_points
            widest = max(wire.max_split_bytes(p.tensors) for p in split_points(need_kws()).points)
            body = max(wire.max_request_bytes(490), widest) - wire.HEADER_BYTES - wire.CRC_BYTES + 1
            s.sendall(wire.HEADER.pack(wire.MAGIC, 1, wire.KIND_REQUEST, 0, 2, body))
            assert _reply(s).status == wire.TOO_LARGE
    finally:
        thread.stop()


def test_one_device_cannot_hold_more_than_its_share_of_sessions(keyed_server):
    srv, address, _, key = keyed_server
    clients = [OffloadClient(*address, device_id="board-1", key=key) for _ in range(4)]
    try:
        for c in clients:
            c.connect()
        t0 = time.monotonic()
        with pytest.raises(OffloadRefused) as e:
            OffloadClient(*address, device_id="board-1", key=key).connect()
        assert e.value.status == wire.BUSY
        assert time.monotonic() - t0 >= 1.0          # busy_hello_delay_s: a retry loop gets one try a second
        assert srv.stats.device_limit_refusals == 1
    finally:
        for c in clients:
            c.close()


def test_a_device_retrying_at_once_on_many_connections_gets_one_refusal_per_connection_per_delay(keyed_server):
    srv, address, _, key = keyed_server
    held = [OffloadClient(*address, device_id="board-1", key=key).connect() for _ in range(4)]
    deadline, statuses = time.monotonic() + 1.5, []

    def retry():
        while time.monotonic() < deadline:
            c = OffloadClient(*address, device_id="board-1", key=key)
            try:
                c.connect()
            except OffloadRefused as e:
                statuses.append(e.status)
            finally:
                c.close()

    try:
        retries = [threading.Thread(target=retry) for _ in range(8)]
        for t in retries:
            t.start()
        for t in retries:
            t.join(10)
        assert 8 <= srv.stats.device_limit_refusals <= 16       # 8 connections, 1.5 s, 1 s per refusal
        assert statuses == [wire.BUSY] * srv.stats.device_limit_refusals
    finally:
        for c in held:
            c.close()


def test_shutdown_summary_counts_each_refusal_once():
    thread, srv, address = _attack_server(max_clients=1, max_pending=2)
    try:
        with OffloadClient(*address, device_id="first"):
            with _raw(address) as second:                       # max_clients reached: refused on arrival
                assert _reply(second).status == wire.BUSY
        with _raw(address) as junk:
            junk.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert _reply(junk).status == wire.BAD_FRAME
        with _raw(address) as eager:                            # a request before HELLO: refused from its header
            eager.sendall(wire.encode_request(1, wire.Request("kws", 0, kws_tensor())))
            assert _reply(eager).status == wire.AUTH_REQUIRED
        st = srv.stats
        assert (st.connections_refused, st.frames_bad, st.not_hello_first, st.sessions, st.requests_ok) == \
            (1, 1, 1, 1, 0)
        line = st.summary()
        assert "1 refused (too many clients)" in line and "1 bad frames" in line and "1 sessions" in line
        assert "1 not starting with HELLO" in line
    finally:
        thread.stop()


def test_the_queue_takes_jobs_round_robin_by_device():
    """A device with many sessions waits its turn behind each other device (was: one FIFO, so a device flooding
    from many sessions took most answers)."""
    q = FairQueue(clock=lambda: 0.0)
    for i in range(6):
        q.put_nowait("flooder", f"f{i}")
    q.put_nowait("good-1", "g1")
    q.put_nowait("good-2", "g2")
    q.put_nowait("good-1", "g1b")
    assert q.qsize() == 9
    assert [q.take()[0] for _ in range(9)] == ["f0", "g1", "g2", "f1", "g1b", "f2", "f3", "f4", "f5"]
    assert q.take() == (None, None)


def _share_of_the_worker(queue_config, good, good_gap_s, flooder_sessions=4, job_s=0.0025, seconds=10.0):
    """Simulate one worker (each job job_s) on a fake clock: ``good`` devices with one session each, which send
    their next request ``good_gap_s`` after an answer (clients short of CPU), and a flooder whose sessions send
    the next one at once. (flooder's share of the worker's time, good answers, worker time idle)."""
    now = [0.0]
    q = FairQueue(clock=lambda: now[0], **queue_config)
    arrivals = {f"good-{i}": i * job_s for i in range(good)}    # device -> time its next request comes
    for _ in range(flooder_sessions):
        q.put_nowait("flooder", "flooder")
    busy = {"flooder": 0.0, "good": 0.0}
    answers, idle_s = 0, 0.0
    while now[0] < seconds:
        for device, at in list(arrivals.items()):
            if at <= now[0]:
                q.put_nowait(device, device)
                del arrivals[device]
        device, wait_s = q.take()
        if device is None:
            until = min(([now[0] + wait_s] if wait_s is not None else []) + list(arrivals.values()))
            idle_s += until - now[0]
            now[0] = until
            continue
        now[0] += job_s
        q.served(device, job_s)
        if device == "flooder":
            busy["flooder"] += job_s
            q.put_nowait("flooder", "flooder")
        else:
            busy["good"] += job_s
            answers += 1
            arrivals[device] = now[0] + good_gap_s
    return busy["flooder"] / seconds, answers, idle_s


def test_a_flooding_device_gets_its_share_of_the_worker_over_time_not_what_others_leave_queued():
    """8 devices whose next requests come 50 ms after their answers leave the queue empty most of the time: taken
    round-robin among queued requests only, the flooder's four sessions get the worker whenever it is free (over
    half of its time); with budgets it gets at most 2 of the 9 active devices' equal shares, and the 8 get at least
    97 % of the answers they get with no flooder at all."""
    alone_share, alone_answers, _ = _share_of_the_worker({}, good=8, good_gap_s=0.05, flooder_sessions=0)
    rr_share, rr_answers, _ = _share_of_the_worker({"share": 0}, good=8, good_gap_s=0.05)
    fair_share, fair_answers, _ = _share_of_the_worker({"share": 2.0, "window_s": 1.0}, good=8, good_gap_s=0.05)
    assert alone_share == 0.0
    assert rr_share > 0.5
    assert 2 / 9 <= fair_share <= 2 / 9 * 1.1 + 0.001  # 2/9 of each second, plus the 1 s window's budget it starts with
    assert fair_answers >= 0.97 * alone_answers
    assert rr_answers < fair_answers


def test_equal_devices_are_never_held_and_a_device_alone_gets_the_whole_worker():
    # 64 devices sending request after request: each takes its equal share, the worker is never idle
    _, answers, idle_s = _share_of_the_worker({}, good=64, good_gap_s=0.0, flooder_sessions=0)
    assert idle_s == 0.0 and answers == pytest.approx(10.0 / 0.0025, abs=1)
    # one device on four sessions, nobody else: all of the worker's time
    share, _, idle_s = _share_of_the_worker({}, good=0, good_gap_s=0.0)
    assert idle_s == 0.0 and share == pytest.approx(1.0, abs=0.001)


def test_a_device_over_its_budget_waits_then_goes_on():
    now = [0.0]
    q = FairQueue(share=1.0, window_s=1.0, clock=lambda: now[0])
    q.put_nowait("quiet", "q1")
    assert q.take() == ("q1", None)
    q.served("quiet", 0.001)
    q.put_nowait("busy", "b1")
    assert q.active_devices() == 2                     # each may use 0.5 s per second, at most 0.5 s banked
    assert q.take() == ("b1", None)
    q.served("busy", 0.8)                              # 0.3 s over its budget: it waits 0.3 / 0.5 s
    q.put_nowait("busy", "b2")
    job, wait_s = q.take()
    assert job is None and wait_s == pytest.approx(0.6)
    now[0] = 0.6
    assert q.take() == ("b2", None)
    now[0] = 2.0                                       # "quiet" has been quiet for a window: "busy" is alone
    q.served("busy", 5.0)
    q.put_nowait("busy", "b3")
    assert q.active_devices() == 1 and q.take() == ("b3", None)


def test_a_fair_share_below_one_is_refused():
    with pytest.raises(UsageError) as e:
        OffloadServer({"kws": models.ModelEntry("kws", need_kws())}, config=ServerConfig(fair_share=0.5))
    assert "--fair-share" in str(e.value)


def test_refusals_are_logged_at_a_bounded_rate_and_the_rest_counted_in_one_line(caplog):
    now = [0.0]
    refusals = RefusalLog(logging.getLogger("tinyhost.test.refusals"), burst=3, period_s=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="tinyhost.test.refusals")
    for i in range(10):
        refusals.warning("refused %d", i)
    assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1", "refused 2"]
    now[0] = 10.0
    refusals.warning("refused %d", 10)
    refusals.flush()                                   # nothing held back since: no line
    assert [r.getMessage() for r in caplog.records][3:] == [
        "7 more refused clients not logged (at most 3 lines per 10 s); the shutdown line counts them all",
        "refused 10"]


def test_a_stream_of_garbage_connections_is_counted_in_full_and_logged_in_part(caplog):
    caplog.set_level(logging.WARNING, logger="tinyhost.offload.server")
    thread, srv, address = _attack_server()
    try:
        for _ in range(30):
            with _raw(address) as junk:
                junk.sendall(b"GET / HTTP/1.1\r\n\r\n")
                assert _reply(junk).status == wire.BAD_FRAME
        assert srv.stats.frames_bad == 30
        assert sum("bad magic" in r.getMessage() for r in caplog.records) == 20
    finally:
        thread.stop()
