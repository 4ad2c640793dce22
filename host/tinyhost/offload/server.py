"""``tinyhost serve``: an asyncio server that runs boards' models for them.

Each connection is one board's session (HELLO, then REQUESTs, one at a time). Requests that pass the checks go to a
queue shared by the workers (fairqueue.py: round-robin by device id, each device held to its share of the workers'
time while other devices are active); each worker is one thread with its own interpreters, so a slow model delays
only the queue, never the event loop's reading, writing and error replies. Bad input gets an error reply; framing
errors, authentication failures and oversize frames also close that one connection. Limits (frame size, clients,
queue length, idle and per-frame timeouts) bound what a misbehaving client can hold; refusals are counted, and
logged at a bounded rate (serverlog.py).
"""

import asyncio
import contextlib
import ipaddress
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import TransportError, UsageError
from . import auth, wire
from .aiotimeout import timeout
from .fairqueue import FairQueue
from .models import RequestRejected, ServedRunner
from .serverlog import RefusalLog, ServerStats

log = logging.getLogger(__name__)

DEFAULT_PORT = 7373


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    workers: int = 1
    threads: bool = False       # run models on worker threads (for backends that release the GIL), else inline
    max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES
    max_clients: int = 256      # authenticated sessions
    max_pending: int = 512      # connections that have not completed HELLO; over it the oldest is dropped
    max_per_device: int = 4     # sessions of one device id
    queue_limit: int = 1024
    fair_share: float = 2.0     # while others are active, a device gets at most this many equal shares; 0: off
    fair_window_s: float = 1.0  # a device counts as active this long after its last request
    hello_timeout_s: float = 5.0    # from connecting to a complete HELLO
    busy_hello_delay_s: float = 1.0  # a HELLO refused as busy (max_clients, max_per_device) is answered this late
    idle_timeout_s: float = 300.0   # an authenticated session with nothing to say
    frame_timeout_s: float = 10.0   # from a frame's first byte to its last
    backend: str = "auto"
    reference_backend: str = "auto"


class _SmallReads(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol with small socket reads. A selector transport reads up to 256 KiB at a time
    before anyone has looked at the bytes, so 250 peers streaming 1 MB frames would make the server hold tens of
    MB it is about to refuse; with READ_BYTES per read and the reader paused past two HELLOs, a connection holds
    at most about READ_BYTES until its handler asks for more."""

    READ_BYTES = 16 * 1024

    def connection_made(self, transport):
        if hasattr(transport, "max_size"):
            transport.max_size = self.READ_BYTES
        super().connection_made(transport)


class _Closed(Exception):
    """End this connection (after whatever reply was due)."""


def parse_listen(text, default_port=DEFAULT_PORT):
    """``HOST:PORT`` / ``HOST`` / ``:PORT`` -> (host, port). Raises UsageError."""
    host, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port) if sep else default_port
    except ValueError:
        raise UsageError(f"bad address {text!r}: port is not a number", hint="write HOST:PORT, e.g. 127.0.0.1:7373")
    if not 0 <= port <= 65535:
        raise UsageError(f"bad address {text!r}: port out of range", hint="use a port within 1..65535")
    return host, port


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Session:
    __slots__ = ("peer", "device_id", "key", "last_seq", "hello_deadline")

    def __init__(self, peer, hello_deadline):
        self.peer = peer
        self.device_id = None
        self.key = None
        self.last_seq = -1
        self.hello_deadline = hello_deadline     # loop time by which HELLO must be in


class _Job:
    __slots__ = ("device_id", "model_id", "tensor", "use_reference", "future", "enqueued_ns", "split")

    def __init__(self, device_id, model_id, tensor, use_reference, future, split=None):
        self.device_id = device_id
        self.model_id = model_id
        self.tensor = tensor
        self.split = split              # a wire.SplitRequest: the tail from its split point
        self.use_reference = use_reference
        self.future = future
        self.enqueued_ns = time.perf_counter_ns()


class OffloadServer:
    """Serve ``models`` ({model id: models.ModelEntry}). ``keys`` is an auth.KeyStore, or None for no
    authentication (allowed on loopback only)."""

    def __init__(self, models, keys=None, config=ServerConfig()):
        if not models:
            raise UsageError("no model to serve", hint="pass --model")
        if keys is None and not is_loopback(config.host):
            raise UsageError(f"refusing to serve on {config.host} without authentication",
                             hint="pass --token-file FILE (devices must authenticate off loopback)")
        if config.workers < 1:
            raise UsageError("--workers must be at least 1")
        if config.fair_share < 0 or 0 < config.fair_share < 1:
            raise UsageError(f"--fair-share {config.fair_share:g}: a device's share while others are active is 1 "
                             "(an equal share) or more", hint="use 2 (the default), or 0 for round-robin only")
        self.models = dict(models)
        self.keys = keys
        self.config = config
        self.stats = ServerStats()
        self._refusals = RefusalLog(log)
        self._server = None
        self._queue = None
        self._worker_tasks = []
        self._executors = []
        self._runners = []          # per worker: {model id: ServedRunner}
        self._specs = {}            # model id -> (input spec, output spec, has reference)
        self._connections = set()   # connection handler tasks, cancelled on close
        self._pending = {}          # handler task -> _Session, oldest first, until HELLO succeeds
        self._per_device = {}       # device id -> open sessions
        self._request_limit = config.max_frame_bytes     # set from the models' input sizes in start()

    # -- life cycle ----------------------------------------------------------------------------------------
    def _load_worker(self, index):
        runners = {mid: ServedRunner(entry, self.config.backend, self.config.reference_backend)
                   for mid, entry in self.models.items()}
        self._runners[index] = runners
        return runners

    async def start(self):
        """Load the models (one interpreter set per worker) and listen. Returns the (host, port) bound."""
        loop = asyncio.get_running_loop()
        from .models import check_model_file
        for entry in self.models.values():
            check_model_file(entry.path)
            if entry.reference_path:
                check_model_file(entry.reference_path, reference=True)
        self._queue = FairQueue(self.config.workers, self.config.fair_share, self.config.fair_window_s)
        self._runners = [None] * self.config.workers
        for i in range(self.config.workers):
            if self.config.threads:
                ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"offload-worker-{i}")
                self._executors.append(ex)
                runners = await loop.run_in_executor(ex, self._load_worker, i)
            else:
                runners = self._load_worker(i)
        self._specs = {mid: (r.input, r.output, r.reference is not None) for mid, r in runners.items()}
        # An authenticated device's frames are bounded by the largest request a served model can take, so a
        # session never makes the server hold more than one model input's worth of bytes for it.
        largest = max(wire.max_request_bytes(spec[0].nbytes) for spec in self._specs.values())
        largest = max([largest] + [_largest_split(entry.path) for entry in self.models.values()])
        self._request_limit = min(self.config.max_frame_bytes, largest)
        try:
            self._server = await loop.create_server(
                lambda: _SmallReads(asyncio.StreamReader(limit=wire.MAX_HELLO_BYTES, loop=loop),
                                    self._serve_connection, loop=loop),
                self.config.host, self.config.port)
        except OSError as e:
            self._shutdown_executors()
            raise TransportError(f"cannot listen on {self.config.host}:{self.config.port}: {e.strerror or e}",
                                 hint="pick another port with --listen HOST:PORT, or stop what holds it") from None
        self._worker_tasks = [asyncio.create_task(self._worker(i)) for i in range(self.config.workers)]
        return self.address

    @property
    def address(self):
        sock = self._server.sockets[0]
        return sock.getsockname()[:2]

    def model_specs(self):
        """{model id: (input TensorSpec, output TensorSpec, has reference)} once started."""
        return dict(self._specs)

    async def serve_forever(self):
        await self._server.serve_forever()

    async def close(self):
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        tasks = list(self._connections) + self._worker_tasks
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._shutdown_executors()
        self._refusals.flush()

    def _shutdown_executors(self):
        for ex in self._executors:
            ex.shutdown(wait=False, cancel_futures=True)
        self._executors = []

    # -- workers -------------------------------------------------------------------------------------------
    def _compute(self, index, job):
        started_ns = time.perf_counter_ns()
        runner = self._runners[index][job.model_id]
        if job.split is not None:
            data, compute_us = runner.run_split(job.split)
        else:
            data, compute_us = runner.run(job.tensor, job.use_reference)
        return data, (started_ns - job.enqueued_ns) // 1000, compute_us

    async def _worker(self, index):
        loop = asyncio.get_running_loop()
        ex = self._executors[index] if self.config.threads else None
        while True:
            job = await self._queue.get()
            if job.future.cancelled():
                continue
            started = time.perf_counter()
            try:
                if ex is None:
                    result = self._compute(index, job)
                else:
                    result = await loop.run_in_executor(ex, self._compute, index, job)
            except Exception as e:      # a model failing on one input must not take the worker down
                log.exception("model %s failed", job.model_id)
                if not job.future.done():
                    job.future.set_exception(RequestRejected(wire.INTERNAL, f"model failed: {e}"))
                continue
            finally:
                self._queue.served(job.device_id, time.perf_counter() - started)
            if not job.future.done():
                job.future.set_result(result)

    # -- connections ---------------------------------------------------------------------------------------
    async def _serve_connection(self, reader, writer):
        peer = writer.get_extra_info("peername")
        peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        st, cfg = self.stats, self.config
        st.connections_total += 1
        sessions = st.connections_open - st.connections_pending
        if sessions >= cfg.max_clients:
            st.connections_refused += 1
            self._refusals.warning("%s refused: %d clients already connected", peer, sessions)
            await self._send_and_close(writer, wire.error_reply(0, wire.BUSY, "too many clients connected"))
            return
        if st.connections_pending >= cfg.max_pending:
            # Connections that have not said HELLO are cheap to open and hold: a new one replaces the oldest, so
            # a crowd of silent sockets cannot keep a real device from reaching HELLO.
            oldest_task, oldest = next(iter(self._pending.items()))
            del self._pending[oldest_task]
            st.pending_dropped += 1
            self._refusals.warning("%s: dropped before HELLO, %d connections waiting for one", oldest.peer,
                                   cfg.max_pending)
            oldest_task.cancel()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        session = _Session(peer, loop.time() + cfg.hello_timeout_s)
        st.connections_open += 1
        st.connections_pending += 1
        self._pending[task] = session
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                import socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._session_loop(session, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, _Closed):
            pass
        except asyncio.CancelledError:
            # close() ends open connections by cancelling their handlers, and so does a newer connection taking
            # a pre-HELLO slot. This is the task's top level, and a handler task that ends cancelled is logged by
            # asyncio's streams (Python 3.11) as an error with a traceback: end normally instead.
            pass
        except Exception:
            log.exception("%s: connection handler failed", peer)
        finally:
            st.connections_open -= 1
            if self._pending.pop(task, None) is not None or session.device_id is None:
                st.connections_pending -= 1
            else:
                left = self._per_device.get(session.device_id, 1) - 1
                if left > 0:
                    self._per_device[session.device_id] = left
                else:
                    self._per_device.pop(session.device_id, None)
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _send_and_close(self, writer, data):
        with contextlib.suppress(Exception):
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.config.frame_timeout_s)
        writer.close()

    async def _read_frame(self, session, reader, writer):
        """One whole frame's bytes. Before HELLO the connection has hello_timeout_s from connecting to a complete
        HELLO and may send only that (MAX_HELLO_BYTES); after it, idle_timeout_s for a frame to start and
        frame_timeout_s from its first byte to its last, at most one request's size. Raises _Closed."""
        cfg, loop = self.config, asyncio.get_running_loop()
        authed = session.device_id is not None
        if authed:
            wait, limit = cfg.idle_timeout_s, self._request_limit
        else:
            wait, limit = session.hello_deadline - loop.time(), wire.MAX_HELLO_BYTES
        try:
            async with timeout(max(wait, 0.0)):     # no task per read, as asyncio.wait_for would make
                first = await reader.readexactly(1)
        except asyncio.IncompleteReadError:
            raise _Closed() from None
        except TimeoutError:
            if authed:
                self.stats.idle_timeouts += 1
                log.info("%s: idle for %.0f s, closing", session.peer, cfg.idle_timeout_s)
            else:
                self.stats.hello_timeouts += 1
                log.info("%s: no HELLO within %g s, closing", session.peer, cfg.hello_timeout_s)
            raise _Closed() from None
        deadline = loop.time() + cfg.frame_timeout_s
        if not authed:
            deadline = min(deadline, session.hello_deadline)

        try:
            async with asyncio.timeout_at(deadline):
                header = first + await reader.readexactly(wire.HEADER_BYTES - 1)
                try:
                    kind, _, seq, _, total = wire.parse_header(header, 1 << 32)    # the layout first, then:
                    if not authed and kind != wire.KIND_HELLO:
                        raise wire.WireError("send HELLO first", wire.AUTH_REQUIRED)
                    if total > limit:
                        raise wire.WireError(f"frame of {total} bytes exceeds the limit of {limit}"
                                             + ("" if authed else " before HELLO"), wire.TOO_LARGE)
                except wire.WireError as e:
                    if e.status == wire.AUTH_REQUIRED:
                        self.stats.not_hello_first += 1
                    else:
                        self.stats.frames_bad += 1
                    await self._refuse(session, writer, 0, e.status, e.message)
                    raise _Closed() from None
                return header + await reader.readexactly(total - wire.HEADER_BYTES)
        except (TimeoutError, asyncio.IncompleteReadError):
            self.stats.frames_bad += 1
            took = cfg.frame_timeout_s if authed else cfg.hello_timeout_s
            await self._refuse(session, writer, 0, wire.BAD_FRAME, f"frame incomplete after {took:g} s")
            raise _Closed() from None

    async def _session_loop(self, session, reader, writer):
        while True:
            data = await self._read_frame(session, reader, writer)
            try:
                frame = wire.decode_frame(data, len(data))
            except wire.WireError as e:        # framing is intact (length known): answer and go on
                self.stats.frames_bad += 1
                seq = wire.HEADER.unpack_from(data)[4]
                await self._answer(session, writer, wire.error_reply(seq, e.status, e.message, self._mac(session)),
                                   e.status)
                if session.device_id is None:   # a peer that cannot even send a HELLO right gets no second go
                    return
                continue
            reply, status, fatal = await self._handle(session, frame)
            if status == wire.BUSY and session.device_id is None:
                # A HELLO refused for too many clients or too many sessions of its device: the answer waits, so
                # a device retrying at once on many connections costs one refusal per connection per
                # busy_hello_delay_s (the connection still counts under max_pending meanwhile).
                await asyncio.sleep(self.config.busy_hello_delay_s)
            await self._answer(session, writer, reply, status)
            if fatal:
                return

    def _mac(self, session):
        return auth.frame_mac(session.key) if session.key is not None else None

    async def _answer(self, session, writer, reply, status):
        by = self.stats.by_status
        by[status] = by.get(status, 0) + 1
        writer.write(reply)
        async with timeout(self.config.frame_timeout_s):
            await writer.drain()

    async def _refuse(self, session, writer, seq, status, message):
        self._refusals.warning("%s%s: %s (%s), closing", session.peer,
                               f" ({session.device_id})" if session.device_id else "", message,
                               wire.status_name(status))
        with contextlib.suppress(Exception):
            await self._answer(session, writer, wire.error_reply(seq, status, message), status)

    async def _handle(self, session, frame):
        """(reply bytes, status, close connection after)."""
        if frame.kind == wire.KIND_HELLO:
            return self._hello(session, frame)
        if frame.kind not in (wire.KIND_REQUEST, wire.KIND_SPLIT):
            self.stats.frames_bad += 1
            return self._error(session, frame.seq, wire.BAD_FRAME,
                               "devices send HELLO, REQUEST or SPLIT frames only")
        if session.device_id is None:
            return self._error(session, frame.seq, wire.AUTH_REQUIRED, "send HELLO first")
        if session.key is not None:
            expected = auth.frame_mac(session.key)(frame.signed)
            if not frame.mac or not auth.macs_equal(frame.mac, expected):
                self.stats.auth_failures += 1
                self._refusals.warning("%s (%s): bad request MAC, closing", session.peer, session.device_id)
                return self._error(session, frame.seq, wire.AUTH_FAILED, "bad MAC", fatal=True)
        if frame.seq <= session.last_seq:
            self._refusals.warning("%s (%s): sequence %d after %d, closing", session.peer, session.device_id,
                                   frame.seq, session.last_seq)
            return self._error(session, frame.seq, wire.REPLAYED,
                               f"sequence number {frame.seq} not above {session.last_seq}", fatal=True)
        session.last_seq = frame.seq
        split = None
        try:
            if frame.kind == wire.KIND_SPLIT:
                split = wire.decode_split(frame.body)
                runner = self._check_split(split)
                request = wire.Request(split.model_id, wire.WANT_MODEL, None)
            else:
                request = wire.decode_request(frame.body)
                runner = self._check(request)
        except (wire.WireError, RequestRejected) as e:
            self.stats.requests_rejected += 1
            return self._error(session, frame.seq, e.status, e.message)
        if self._queue.qsize() >= self.config.queue_limit:
            self.stats.busy_replies += 1
            return self._error(session, frame.seq, wire.BUSY, "server queue full, retry later")
        use_reference = runner[2] and request.want != wire.WANT_MODEL
        future = asyncio.get_running_loop().create_future()
        job = _Job(session.device_id, request.model_id, request.tensor, use_reference, future, split)
        self._queue.put_nowait(session.device_id, job)
        try:
            data, queue_us, compute_us = await future
        except RequestRejected as e:
            self.stats.requests_rejected += 1
            return self._error(session, frame.seq, e.status, e.message)
        out = runner[1]
        tensor = wire.Tensor(out.dtype, out.shape, out.scale, out.zero_point, data)
        source = wire.SOURCE_REFERENCE if use_reference else wire.SOURCE_MODEL
        self.stats.requests_ok += 1
        if split is not None:
            self.stats.split_requests_ok += 1
        reply = wire.Reply(wire.OK, source, queue_us, compute_us, tensor)
        return wire.encode_reply(frame.seq, reply, self._mac(session)), wire.OK, False

    def _check(self, request):
        spec = self._specs.get(request.model_id)
        if spec is None:
            raise RequestRejected(wire.UNKNOWN_MODEL, f"model {request.model_id!r} is not served here (serving: "
                                                      f"{', '.join(sorted(self._specs))})")
        if request.want == wire.WANT_REFERENCE and not spec[2]:
            raise RequestRejected(wire.NO_REFERENCE, f"model {request.model_id!r} has no reference model")
        # Any worker's runner has the same specs; the first one checks.
        self._runners[0][request.model_id].check(request.tensor)
        return spec

    def _check_split(self, request):
        spec = self._specs.get(request.model_id)
        if spec is None:
            raise RequestRejected(wire.UNKNOWN_MODEL, f"model {request.model_id!r} is not served here (serving: "
                                                      f"{', '.join(sorted(self._specs))})")
        self._runners[0][request.model_id].check_split(request)
        return spec

    def _error(self, session, seq, status, message, fatal=False):
        return wire.error_reply(seq, status, message, self._mac(session)), status, fatal

    def _hello(self, session, frame):
        def refuse(status, message):
            return wire.encode_welcome(frame.seq, status, self.keys is not None, bytes(16), bytes(32), 0,
                                       message), status, True

        if session.device_id is not None:
            return refuse(wire.BAD_FRAME, "HELLO twice in one session")
        try:
            hello = wire.decode_hello(frame.body)
        except wire.WireError as e:
            return wire.encode_welcome(frame.seq, e.status, False, bytes(16), bytes(32), 0, e.message), e.status, True
        key = None
        if self.keys is not None:
            key = self.keys.key_for(hello.device_id)
            if key is None:
                self.stats.auth_failures += 1
                self._refusals.warning("%s: unknown device %r refused", session.peer, hello.device_id)
                return (wire.encode_welcome(frame.seq, wire.AUTH_FAILED, True, bytes(16), bytes(32), 0,
                                            f"unknown device {hello.device_id!r}"), wire.AUTH_FAILED, True)
        st, cfg = self.stats, self.config
        if st.connections_open - st.connections_pending >= cfg.max_clients:
            st.connections_refused += 1
            self._refusals.warning("%s (%s) refused: %d clients already connected", session.peer,
                                   hello.device_id, cfg.max_clients)
            return refuse(wire.BUSY, "too many clients connected")
        if self._per_device.get(hello.device_id, 0) >= cfg.max_per_device:
            # One device's requests are answered one at a time per session, so capping its sessions caps its
            # share of the server: many connections of one (keyed) device cannot crowd out the others.
            st.device_limit_refusals += 1
            self._refusals.warning("%s (%s) refused: the device already has %d sessions", session.peer,
                                   hello.device_id, cfg.max_per_device)
            return refuse(wire.BUSY, f"device {hello.device_id!r} already has {cfg.max_per_device} sessions")
        server_nonce = os.urandom(wire.NONCE_BYTES)
        session.device_id = hello.device_id
        session.last_seq = frame.seq
        self._pending.pop(asyncio.current_task(), None)
        st.connections_pending -= 1
        self._per_device[hello.device_id] = self._per_device.get(hello.device_id, 0) + 1
        st.sessions += 1
        max_frame = self._request_limit
        if key is None:
            log.info("%s: device %s connected (no authentication)", session.peer, hello.device_id)
            return wire.encode_welcome(frame.seq, wire.OK, False, server_nonce, bytes(32), max_frame), wire.OK, False
        session.key = auth.session_key(key, hello.nonce, server_nonce)
        log.info("%s: device %s authenticated", session.peer, hello.device_id)
        proof = auth.welcome_proof(session.key)
        return wire.encode_welcome(frame.seq, wire.OK, True, server_nonce, proof, max_frame), wire.OK, False


def _largest_split(path):
    """The largest SPLIT frame a device can send for the model at ``path`` (its widest split point)."""
    from ..split import split_points
    return max(wire.max_split_bytes(p.tensors) for p in split_points(path).points)


class ServerThread:
    """Runs an OffloadServer on its own event loop in a background thread (tests, benchmarks, the relay)::

        with ServerThread(OffloadServer(models, keys, ServerConfig(port=0))) as (host, port): ...
    """

    def __init__(self, server, start_timeout_s=60.0):
        self.server = server
        self.start_timeout_s = start_timeout_s
        self._loop = None
        self._thread = None
        self._ready = threading.Event()
        self._error = None
        self.address = None

    def _run(self):
        self._loop = asyncio.new_event_loop()
        try:
            self.address = self._loop.run_until_complete(self.server.start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self.server.close())
            self._loop.close()

    def start(self):
        self._thread = threading.Thread(target=self._run, name="offload-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.start_timeout_s):
            raise TransportError("offload server did not start in time")
        if self._error is not None:
            raise self._error
        return self.address

    def stop(self):
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
