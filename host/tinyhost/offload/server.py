"""``tinyhost serve``: an asyncio server that runs boards' models for them.

Each connection is one board's session (HELLO, then REQUESTs, one at a time). Requests that pass the checks go to a
queue shared by the workers; each worker is one thread with its own interpreters, so a slow model delays only the
queue, never the event loop's reading, writing and error replies. Bad input gets an error reply; framing errors,
authentication failures and oversize frames also close that one connection. Limits (frame size, clients, queue
length, idle and per-frame timeouts) bound what a misbehaving client can hold.
"""

import asyncio
import contextlib
import ipaddress
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import TransportError, UsageError
from . import auth, wire
from .models import RequestRejected, ServedRunner

log = logging.getLogger(__name__)

DEFAULT_PORT = 7373


@dataclass
class ServerStats:
    connections_total: int = 0
    connections_open: int = 0
    connections_refused: int = 0
    sessions: int = 0
    auth_failures: int = 0
    requests_ok: int = 0
    requests_rejected: int = 0
    frames_bad: int = 0
    busy_replies: int = 0
    by_status: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    workers: int = 1
    threads: bool = False       # run models on worker threads (for backends that release the GIL), else inline
    max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES
    max_clients: int = 256
    queue_limit: int = 1024
    idle_timeout_s: float = 300.0
    frame_timeout_s: float = 10.0
    backend: str = "auto"
    reference_backend: str = "auto"


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
    __slots__ = ("peer", "device_id", "key", "last_seq")

    def __init__(self, peer):
        self.peer = peer
        self.device_id = None
        self.key = None
        self.last_seq = -1


class _Job:
    __slots__ = ("model_id", "tensor", "use_reference", "future", "enqueued_ns")

    def __init__(self, model_id, tensor, use_reference, future):
        self.model_id = model_id
        self.tensor = tensor
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
        self.models = dict(models)
        self.keys = keys
        self.config = config
        self.stats = ServerStats()
        self._server = None
        self._queue = None
        self._worker_tasks = []
        self._executors = []
        self._runners = []          # per worker: {model id: ServedRunner}
        self._specs = {}            # model id -> (input spec, output spec, has reference)
        self._connections = set()   # connection handler tasks, cancelled on close

    # -- life cycle ----------------------------------------------------------------------------------------
    def _load_worker(self, index):
        runners = {mid: ServedRunner(entry, self.config.backend, self.config.reference_backend)
                   for mid, entry in self.models.items()}
        self._runners[index] = runners
        return runners

    async def start(self):
        """Load the models (one interpreter set per worker) and listen. Returns the (host, port) bound."""
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._runners = [None] * self.config.workers
        for i in range(self.config.workers):
            if self.config.threads:
                ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"offload-worker-{i}")
                self._executors.append(ex)
                runners = await loop.run_in_executor(ex, self._load_worker, i)
            else:
                runners = self._load_worker(i)
        self._specs = {mid: (r.input, r.output, r.reference is not None) for mid, r in runners.items()}
        try:
            self._server = await asyncio.start_server(self._serve_connection, self.config.host, self.config.port,
                                                      limit=1 << 16)
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

    def _shutdown_executors(self):
        for ex in self._executors:
            ex.shutdown(wait=False, cancel_futures=True)
        self._executors = []

    # -- workers -------------------------------------------------------------------------------------------
    def _compute(self, index, job):
        started_ns = time.perf_counter_ns()
        runner = self._runners[index][job.model_id]
        data, compute_us = runner.run(job.tensor, job.use_reference)
        return data, (started_ns - job.enqueued_ns) // 1000, compute_us

    async def _worker(self, index):
        loop = asyncio.get_running_loop()
        ex = self._executors[index] if self.config.threads else None
        while True:
            job = await self._queue.get()
            if job.future.cancelled():
                continue
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
            if not job.future.done():
                job.future.set_result(result)

    # -- connections ---------------------------------------------------------------------------------------
    async def _serve_connection(self, reader, writer):
        peer = writer.get_extra_info("peername")
        peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        st = self.stats
        st.connections_total += 1
        if st.connections_open >= self.config.max_clients:
            st.connections_refused += 1
            log.warning("%s refused: %d clients already connected", peer, st.connections_open)
            await self._send_and_close(writer, wire.error_reply(0, wire.BUSY, "too many clients connected"))
            return
        st.connections_open += 1
        task = asyncio.current_task()
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                import socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = _Session(peer)
        try:
            await self._session_loop(session, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() ends open connections by cancelling their handlers. This is the task's top level, and a
            # handler task that ends cancelled is logged by asyncio's streams (Python 3.11) as an error with a
            # traceback: end normally instead.
            pass
        except Exception:
            log.exception("%s: connection handler failed", peer)
        finally:
            st.connections_open -= 1
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _send_and_close(self, writer, data):
        with contextlib.suppress(Exception):
            writer.write(data)
            async with asyncio.timeout(self.config.frame_timeout_s):
                await writer.drain()
        writer.close()

    async def _session_loop(self, session, reader, writer):
        cfg = self.config
        while True:
            try:
                async with asyncio.timeout(cfg.idle_timeout_s):
                    header = await reader.readexactly(wire.HEADER_BYTES)
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    await self._refuse(session, writer, 0, wire.BAD_FRAME, "connection closed inside a header")
                return
            except TimeoutError:
                log.info("%s: idle for %.0f s, closing", session.peer, cfg.idle_timeout_s)
                return
            try:
                kind, flags, seq, body_len, total = wire.parse_header(header, cfg.max_frame_bytes)
            except wire.WireError as e:
                self.stats.frames_bad += 1
                await self._refuse(session, writer, 0, e.status, e.message)
                return
            try:
                async with asyncio.timeout(cfg.frame_timeout_s):
                    rest = await reader.readexactly(total - wire.HEADER_BYTES)
            except (TimeoutError, asyncio.IncompleteReadError):
                self.stats.frames_bad += 1
                await self._refuse(session, writer, seq, wire.BAD_FRAME,
                                   f"frame incomplete after {cfg.frame_timeout_s:g} s")
                return
            try:
                frame = wire.decode_frame(header + rest, cfg.max_frame_bytes)
            except wire.WireError as e:        # framing is intact (length known): answer and go on
                self.stats.frames_bad += 1
                await self._answer(session, writer, wire.error_reply(seq, e.status, e.message, self._mac(session)),
                                   e.status)
                continue
            reply, status, fatal = await self._handle(session, frame)
            await self._answer(session, writer, reply, status)
            if fatal:
                return

    def _mac(self, session):
        return auth.frame_mac(session.key) if session.key is not None else None

    async def _answer(self, session, writer, reply, status):
        by = self.stats.by_status
        by[status] = by.get(status, 0) + 1
        writer.write(reply)
        async with asyncio.timeout(self.config.frame_timeout_s):
            await writer.drain()

    async def _refuse(self, session, writer, seq, status, message):
        log.warning("%s%s: %s (%s), closing", session.peer,
                    f" ({session.device_id})" if session.device_id else "", message, wire.status_name(status))
        with contextlib.suppress(Exception):
            await self._answer(session, writer, wire.error_reply(seq, status, message), status)

    async def _handle(self, session, frame):
        """(reply bytes, status, close connection after)."""
        if frame.kind == wire.KIND_HELLO:
            return self._hello(session, frame)
        if frame.kind != wire.KIND_REQUEST:
            self.stats.frames_bad += 1
            return self._error(session, frame.seq, wire.BAD_FRAME, "devices send HELLO or REQUEST frames only")
        if session.device_id is None:
            return self._error(session, frame.seq, wire.AUTH_REQUIRED, "send HELLO first")
        if session.key is not None:
            expected = auth.frame_mac(session.key)(frame.signed)
            if not frame.mac or not auth.macs_equal(frame.mac, expected):
                self.stats.auth_failures += 1
                log.warning("%s (%s): bad request MAC, closing", session.peer, session.device_id)
                return self._error(session, frame.seq, wire.AUTH_FAILED, "bad MAC", fatal=True)
        if frame.seq <= session.last_seq:
            log.warning("%s (%s): sequence %d after %d, closing", session.peer, session.device_id, frame.seq,
                        session.last_seq)
            return self._error(session, frame.seq, wire.REPLAYED,
                               f"sequence number {frame.seq} not above {session.last_seq}", fatal=True)
        session.last_seq = frame.seq
        try:
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
        self._queue.put_nowait(_Job(request.model_id, request.tensor, use_reference, future))
        try:
            data, queue_us, compute_us = await future
        except RequestRejected as e:
            self.stats.requests_rejected += 1
            return self._error(session, frame.seq, e.status, e.message)
        out = runner[1]
        tensor = wire.Tensor(out.dtype, out.shape, out.scale, out.zero_point, data)
        source = wire.SOURCE_REFERENCE if use_reference else wire.SOURCE_MODEL
        self.stats.requests_ok += 1
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

    def _error(self, session, seq, status, message, fatal=False):
        return wire.error_reply(seq, status, message, self._mac(session)), status, fatal

    def _hello(self, session, frame):
        try:
            hello = wire.decode_hello(frame.body)
        except wire.WireError as e:
            return wire.encode_welcome(frame.seq, e.status, False, bytes(16), bytes(32), 0, e.message), e.status, True
        max_frame = self.config.max_frame_bytes
        server_nonce = os.urandom(wire.NONCE_BYTES)
        if self.keys is None:
            session.device_id, session.key, session.last_seq = hello.device_id, None, frame.seq
            self.stats.sessions += 1
            log.info("%s: device %s connected (no authentication)", session.peer, hello.device_id)
            return wire.encode_welcome(frame.seq, wire.OK, False, server_nonce, bytes(32), max_frame), wire.OK, False
        key = self.keys.key_for(hello.device_id)
        if key is None:
            self.stats.auth_failures += 1
            log.warning("%s: unknown device %r refused", session.peer, hello.device_id)
            return (wire.encode_welcome(frame.seq, wire.AUTH_FAILED, True, bytes(16), bytes(32), 0,
                                        f"unknown device {hello.device_id!r}"), wire.AUTH_FAILED, True)
        session.device_id = hello.device_id
        session.key = auth.session_key(key, hello.nonce, server_nonce)
        session.last_seq = frame.seq
        self.stats.sessions += 1
        log.info("%s: device %s authenticated", session.peer, hello.device_id)
        proof = auth.welcome_proof(session.key)
        return wire.encode_welcome(frame.seq, wire.OK, True, server_nonce, proof, max_frame), wire.OK, False


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
