"""Split inference: where a model can be cut between the board and the server, and which cut a link favours.

``split_points(path)`` lists every operator boundary k (operators [0, k) on the board, [k, n) on the server) with
the tensors alive across it: what the board must send. They come from the engine's own planner (the same code the
board runs), so each tensor's arena offset is where the board's head leaves it and where the server's tail reads
it (``Model.arena_view``, ``Model.invoke(start, stop)``). k = 0 is full offload (the request is the input), k = n
runs the whole model on the board.

``plan(rows, ...)`` is the arithmetic of the split plan on a table of per-point figures (board time of the head,
bytes each way, the server's time for the tail): link time from the link model (lk-1), board energy as
``tinyhost.linkmodel.offload_board_time`` counts it. ``build_plan`` fills that table: the head's board time from
the board-time model (bt-2), the tail's server time measured by running it on this host with the engine.
"""

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ModelError, UsageError

OBJECTIVES = ("latency", "energy")


@dataclass(frozen=True)
class LiveTensor:
    """A tensor alive across a split point: produced by the head (or the graph input), read by the tail."""
    index: int                  # tensor index in the .tflite
    name: str
    offset: int                 # arena offset (the plan's placement, identical on board and server)
    nbytes: int
    shape: tuple
    dtype: str
    scale: float
    zero_point: int


@dataclass(frozen=True)
class SplitPoint:
    k: int                      # operators [0, k) run on the board
    step: int                   # engine steps before the cut (operators less the RESHAPEs the planner aliased)
    tensors: tuple              # of LiveTensor; empty at k = n
    after: str                  # the operator the board runs last ("" at k = 0)

    @property
    def nbytes(self):
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class ModelSplits:
    path: str
    operators: tuple            # operator names, in order
    steps: int                  # engine steps of one whole invoke
    points: tuple               # SplitPoint for k = 0 .. n (those whose live tensors can be sent)
    inputs: tuple               # LiveTensor of each graph input (what full offload sends)
    outputs: tuple              # LiveTensor of each graph output (what the reply carries)

    def point(self, k):
        for p in self.points:
            if p.k == k:
                return p
        raise UsageError(f"{Path(self.path).name} has no split point {k}",
                         hint=f"give one of 0..{len(self.operators)} (`tinyhost split plan` lists them)")


def _engine_parts():
    from .model import engine_module
    engine = engine_module()
    from tinyfw.engine import reader, op_prepare, model_prepare
    return engine, reader, op_prepare, model_prepare


def split_points(path):
    """The :class:`ModelSplits` of the .tflite at ``path``. Raises tinyhost.errors.ModelError for a bad model."""
    engine, reader, op_prepare, model_prepare = _engine_parts()
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no model file at {path}", hint="give the path of a .tflite file")
    try:
        with open(path, "rb") as f:
            md = reader.read_model(f, path.stat().st_size)
            specs = op_prepare.prepare(md)
            where, _, _ = model_prepare.arena_layout_of(md, specs)
            names = {t.index: t.name for t in md.tensors if not t.is_const}
            shapes = {t.index: (tuple(t.shape), t.dtype, t.scale if t.nq else 0.0, t.zero_point, t.nbytes)
                      for t in md.tensors if not t.is_const}
    except engine.ModelError as e:
        raise ModelError(f"{path}: {e}", hint="the model must be an int8 .tflite file using only the supported "
                                              "operators (see docs/engine.md)") from None
    n = len(specs)
    producer = {i: -1 for i in md.inputs}
    last_use = {}
    for j, s in enumerate(specs):
        producer[s.out] = j
        for i in s.ins:
            last_use[i] = j
    for i in md.outputs:
        last_use[i] = n
    # a RESHAPE the planner aliased (output where its input is) is no step of the engine (plan_read.build)
    aliased = [s.kind == op_prepare._K_RESHAPE and s.out in where and where.get(s.out) == where.get(s.ins[0])
               for s in specs]

    def live(i):
        shape, dtype, scale, zero_point, nbytes = shapes[i]
        return LiveTensor(i, names.get(i, ""), where.get(i, -1), nbytes, shape, dtype, scale, zero_point)

    points = []
    step = 0
    for k in range(n + 1):
        if k:
            step += 0 if aliased[k - 1] else 1
        by_offset = {}
        sendable = True
        for i, p in producer.items():
            if p < k and last_use.get(i, -1) >= k and k < n:
                t = live(i)
                if t.offset < 0 or t.dtype != "int8":
                    sendable = False            # a float32 graph buffer lies outside the arena
                    break
                # tensors sharing a buffer (an aliased RESHAPE) are sent once, as the later one
                if t.offset not in by_offset or producer[by_offset[t.offset].index] < p:
                    by_offset[t.offset] = t
        if k == 0 or sendable:
            tensors = () if k == 0 else tuple(sorted(by_offset.values(), key=lambda t: t.offset))
            points.append(SplitPoint(k, step, tensors, specs[k - 1].op.name if k else ""))
    return ModelSplits(str(path), tuple(s.op.name for s in specs), step, tuple(points),
                       tuple(live(i) for i in md.inputs), tuple(live(i) for i in md.outputs))


# ---- the plan's arithmetic ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanInput:
    """What the plan needs of one split point: the figures are measured or modelled elsewhere."""
    k: int
    after: str
    head_ns: int                # board time of operators [0, k) (bt-2)
    request_bytes: int          # 0 at k = n: nothing is sent
    reply_bytes: int
    server_us: int              # the server's time for operators [k, n) (measured)


@dataclass
class PlanRow:
    k: int
    after: str
    board_ms: float             # head on the board
    serialise_ms: float         # request and reply bytes through the board's CPU (copy_byte_cycles)
    request_bytes: int
    reply_bytes: int
    link_ms: float              # request + reply over the link (lk-1)
    server_ms: float            # the tail on the server (measured)
    total_ms: float
    energy_mj: float            # the board's: active while computing, radio TX/RX while on the link
    best: bool = False


@dataclass
class SplitPlan:
    model: str
    board: str
    link: str
    objective: str
    best_k: int
    rows: list
    board_time_model: str
    link_model: str
    link_source: str
    server: str                 # how the server's times were measured
    note: str = ""
    tensors: dict = field(default_factory=dict)     # k -> [(name, shape, bytes, scale, zero point)]

    def to_dict(self):
        return asdict(self)

    def row(self, k):
        return next(r for r in self.rows if r.k == k)


def plan(inputs, profile, link, objective="latency"):
    """The plan's rows (one per :class:`PlanInput`) and the best k under ``objective``; integer microseconds and
    the board profile's coefficients, as ``linkmodel.offload_board_time`` counts an offloaded request."""
    from .linkmodel import transfer_us

    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r}", hint=f"use one of: {', '.join(OBJECTIVES)}")
    clock = profile.board_time_clock_mhz
    copy_centi = profile.board_time["copy_byte_cycles"].centicycles
    radio = link.name != "uart"
    rows = []
    for p in inputs:
        head_us = p.head_ns // 1000
        moved = p.request_bytes + p.reply_bytes
        serialise_us = (moved * copy_centi * 10 // clock + 500) // 1000 if p.request_bytes else 0
        send_us = transfer_us(link, p.request_bytes)
        receive_us = transfer_us(link, p.reply_bytes) if p.request_bytes else 0
        server_us = p.server_us if p.request_bytes else 0
        total_us = head_us + serialise_us + send_us + server_us + receive_us
        cpu_us, tx_us, rx_us = head_us + serialise_us, send_us, server_us + receive_us
        if not radio:                       # a UART relay: the CPU is active while waiting
            cpu_us, tx_us, rx_us = total_us, 0, 0
        energy_uj = (profile.power_mw("active") * cpu_us + profile.power_mw("radio_tx") * tx_us
                     + profile.power_mw("radio_rx") * rx_us) / 1000
        rows.append(PlanRow(p.k, p.after, head_us / 1000, serialise_us / 1000, p.request_bytes, p.reply_bytes,
                            (send_us + receive_us) / 1000, server_us / 1000, total_us / 1000, energy_uj / 1000))
    key = (lambda r: (r.total_ms, r.energy_mj)) if objective == "latency" else (lambda r: (r.energy_mj, r.total_ms))
    best = min(rows, key=key)
    best.best = True
    return rows, best.k


# ---- the plan's figures -------------------------------------------------------------------------------------

def request_bytes(splits, point, model_id, mac=False):
    """Bytes of the request at ``point``: a REQUEST with the input at k = 0, a SPLIT request with its live
    tensors inside, nothing at k = n."""
    from .offload import wire

    n = len(splits.operators)
    if point.k == n:
        return 0
    extra = wire.MAC_BYTES if mac else 0
    if point.k == 0:
        return wire.request_frame_bytes(model_id, splits.inputs) + extra
    return wire.split_frame_bytes(model_id, point.tensors) + extra


def reply_bytes(splits, mac=False):
    from .offload import wire

    return wire.reply_frame_bytes(splits.outputs[0]) + (wire.MAC_BYTES if mac else 0)


class Tail:
    """The tail [k, n) of a model as its own prepared runner on the host: the engine (numpy kernels, bit-exact
    with the board's) over one arena; ``run(k, tensors)`` writes the live tensors where the plan put them and
    runs the steps from the cut. One engine model serves every k; the per-k part (which tensors, where) is
    prepared once and cached."""

    def __init__(self, path, splits=None, backend="numpy"):
        from .model import engine_module

        engine = engine_module()
        self.splits = splits or split_points(path)
        self.model = engine.load(str(path), backend=backend, weights="ram")
        self._points = {}

    def prepared(self, k):
        """(step, [(view, LiveTensor)]) for split point k, prepared once."""
        got = self._points.get(k)
        if got is None:
            p = self.splits.point(k)
            # viewed as bytes ("B"): the arena is int8, what arrives is bytes
            got = (p.step, [(self.model.arena_view(t.offset, t.nbytes).cast("B"), t) for t in p.tensors])
            self._points[k] = got
        return got

    def run(self, k, datas):
        """The model's output (bytes) from the live tensors of split point k (bytes-likes, in point order)."""
        step, views = self.prepared(k)
        for (view, t), data in zip(views, datas):
            view[:] = data
        self.model.invoke(start=step)
        return bytes(self.model.output_buffer(0))

    def close(self):
        self.model.close()


def measure_tail_us(path, splits, repeats=5):
    """The host's time (median of ``repeats``, integer µs) for the tail of every split point k < n, run with the
    engine as the server runs it; k = 0 is the whole model from its input."""
    import os

    tail = Tail(path, splits)
    try:
        m = tail.model
        m.invoke()                  # warm: the first run pays for numpy's first calls
        out = {}
        for p in splits.points:
            if p.k == len(splits.operators):
                continue
            datas = [os.urandom(t.nbytes) for t in p.tensors]
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter_ns()
                if p.k == 0:
                    m.input_buffer(0).cast("B")[:] = os.urandom(m.inputs[0].nbytes)
                    m.invoke()
                else:
                    tail.run(p.k, datas)
                times.append(time.perf_counter_ns() - t0)
            out[p.k] = int(statistics.median(times)) // 1000
        return out
    finally:
        tail.close()


def build_plan(path, board_spec, link_name, objective="latency", model_id=None, server_us=None, mac=False):
    """The :class:`SplitPlan` of the model at ``path`` on board ``board_spec`` over link ``link_name``.
    server_us: {k: µs} of the tail (default: measured here, ``measure_tail_us``)."""
    from . import boards as board_profiles
    from .boardtime import BOARD_TIME_MODEL, estimate
    from .linkmodel import LINK_MODEL, LINKS, uart
    from .model import board_fit, inspect

    profile, virtual = board_profiles.from_spec(board_spec)
    if link_name == "uart":
        link = uart(profile.baud)
    elif link_name in LINKS:
        link = LINKS[link_name]
    else:
        raise UsageError(f"unknown link {link_name!r}", hint=f"use one of: {', '.join(list(LINKS) + ['uart'])}")
    if not profile.board_time:
        raise UsageError(f"board profile {profile.name} has no [board_time] coefficients",
                         hint="add them to its boards/*.toml file (see docs/board-time.md)")
    splits = split_points(path)
    report = inspect(path, board=board_spec, tflm=False)
    bt = estimate(report, profile, "viper", board_fit(report, profile, virtual).weights)
    model_id = model_id or Path(path).stem
    if server_us is None:
        server_us = measure_tail_us(path, splits)
    n = len(splits.operators)
    reply = reply_bytes(splits, mac)
    inputs = []
    for p in splits.points:
        head_ns = sum(s.ns for s in bt.steps[:p.k]) + (bt.overhead_ns if p.k else 0)
        req = request_bytes(splits, p, model_id, mac)
        inputs.append(PlanInput(p.k, p.after, head_ns, req, reply if req else 0, server_us.get(p.k, 0) if p.k < n
                                else 0))
    rows, best = plan(inputs, profile, link, objective)
    return SplitPlan(
        str(path), board_spec, link.name, objective, best, rows, BOARD_TIME_MODEL, LINK_MODEL, link.source,
        "measured on this host: the tail run with the engine's numpy kernels (median of 5), as the server runs it",
        "estimates: board time (bt-2: the head, serialising) and link time (lk-1); energy = the board's active "
        "power while computing, radio TX while sending, RX while waiting and receiving",
        {p.k: [(t.name, list(t.shape), t.nbytes, t.scale, t.zero_point) for t in p.tensors] for p in splits.points})


def plan_links(profile):
    """The links a board can be planned for: every lk-1 radio profile and its UART relay."""
    from .linkmodel import LINKS, uart
    return list(LINKS.values()) + [uart(profile.baud)]


def split_config(path, at, link_name, board_spec, objective="latency", model_id=None, server_us=None):
    """The ``split`` field of a board's offload config (tinyfw.offload.config.split_point reads it): the split
    point ``at`` (an int) or "auto" (the plan's best k for each link, the board on ``link_name`` now), with the
    engine step and live tensors ([arena offset, bytes, scale, zero point, dims...]) of each k it may run.
    Returns (config dict, {link: SplitPlan} for "auto" else {})."""
    from . import boards as board_profiles

    splits = split_points(path)
    n = len(splits.operators)
    plans = {}
    if at == "auto":
        profile, _ = board_profiles.from_spec(board_spec)
        if server_us is None:
            server_us = measure_tail_us(path, splits)
        for link in plan_links(profile):
            plans[link.name] = build_plan(path, board_spec, link.name, objective, model_id, server_us)
        best = {name: p.best_k for name, p in plans.items()}
        # an extreme (k = 0: full offload, k = n: local) is not a split the board can run in this mode: the best
        # split point strictly inside the model stands in, and the plan says what the extremes would give
        for name, p in plans.items():
            if not 0 < best[name] < n:
                inner = [r for r in p.rows if 0 < r.k < n]
                key = (lambda r: r.total_ms) if objective == "latency" else (lambda r: r.energy_mj)
                best[name] = min(inner, key=key).k
        ks = sorted(set(best.values()))
    else:
        if not isinstance(at, int) or not 0 < at < n:
            raise UsageError(f"{Path(path).name} can be split at 1..{n - 1}, not {at}",
                             hint="give --at K within that range, or --at auto (`tinyhost split plan` lists them)")
        splits.point(at)
        best = {}
        ks = [at]
    points = {}
    for k in ks:
        p = splits.point(k)
        points[str(k)] = [p.step, [[t.offset, t.nbytes, t.scale, t.zero_point] + list(t.shape)
                                   for t in p.tensors]]
    return {"at": at, "link": link_name, "best": best, "points": points}, plans
