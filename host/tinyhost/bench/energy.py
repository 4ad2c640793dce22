"""Energy per inference: an estimate from the board profile's power model, or a Joulescope measurement.

The estimate is ``active current x supply voltage x latency``: datasheet figures, never a measurement, and always
labelled so with its inputs and their sources. A measurement needs a Joulescope on the board's supply and the
optional ``joulescope`` package (``pip install joulescope``): mean power during continuous inference times the
median latency. Either way the result names the latency it used (``inputs["latency"]``): the p50 of the single
inferences when they were timed, else the latency at the median throughput.
"""

from ..errors import UsageError
from .results import EnergyResult

P50_LATENCY = "p50 single-inference latency"


def estimate(board, latency_us, virtual=False, latency_name=P50_LATENCY, board_time=None):
    """uJ per inference from ``board.power['active']`` and ``board.supply_v`` (a tinyhost.boards.Board);
    ``latency_name`` says which latency ``latency_us`` is.

    ``board_time`` (a tinyhost.boardtime.BoardTime, virtual boards): the latency is the board-time model's estimate
    of the board's own time, and ``latency_us`` (the host's) is kept beside it in the inputs."""
    if board_time is not None:
        return _estimate_from_board_time(board, latency_us, board_time)
    if latency_us <= 0:
        raise ValueError(f"latency must be positive, got {latency_us} us")
    active = board.power["active"]
    uj = active.current_ma * board.supply_v * latency_us / 1000.0     # mA * V = mW; mW * us / 1000 = uJ
    note = ("estimate, not a measurement: the board profile's active current times its supply voltage times the "
            f"{latency_name}")
    if virtual:
        note += ("; virtual board: the latency is the host CPU's running the MicroPython VM, not the "
                 f"{board.name}'s, so this figure says nothing about the real board")
    return EnergyResult(
        kind="estimate", uj_per_inference=uj,
        inputs={"active_current_ma": active.current_ma, "supply_v": board.supply_v, "latency_us": latency_us,
                "latency": latency_name, "formula": "uJ = current_ma * supply_v * latency_us / 1000"},
        sources=[f"active current: {active.source}", f"supply voltage: board profile {board.path or board.name}",
                 f"latency: {latency_name}, device clock" + (" (virtual board)" if virtual else "")],
        note=note)


def _estimate_from_board_time(board, host_latency_us, board_time):
    from ..boardtime import energy_uj

    active = board.power["active"]
    return EnergyResult(
        kind="estimate", uj_per_inference=energy_uj(board, board_time),
        inputs={"active_current_ma": active.current_ma, "supply_v": board.supply_v,
                "latency_us": board_time.total_us, "latency": f"board's estimated time ({board_time.model})",
                "latency_source": board_time.label,
                "host_latency_us": host_latency_us, "formula": "uJ = current_ma * supply_v * latency_us / 1000"},
        sources=[f"active current: {active.source}", f"supply voltage: board profile {board.path or board.name}",
                 f"latency: the {board.name}'s time for one inference, {board_time.label} (docs/board-time.md)"],
        note=("estimate, not a measurement: the board profile's active current times its supply voltage times the "
              f"board's estimated time for one inference (board-time model {board_time.model}); the virtual "
              "board's host time is not used"))


# --- Joulescope -----------------------------------------------------------------------------------------------

def joulescope_capture_plan(latency_us, min_duration_s=1.0, min_inferences=100):
    """How long to capture so the mean covers enough inferences: ``{"duration_s", "inferences", "config"}``."""
    if latency_us <= 0:
        raise ValueError(f"latency must be positive, got {latency_us} us")
    duration_s = max(min_duration_s, min_inferences * latency_us / 1e6)
    inferences = int(duration_s * 1e6 / latency_us) + 1
    return {"duration_s": round(duration_s, 6), "inferences": inferences, "config": "auto"}


def energy_from_samples(samples, latency_us, device="", latency_name=P50_LATENCY):
    """Measured uJ per inference from Joulescope samples: rows of ``(current_A, voltage_V)`` taken while the board
    ran inferences back to back. Non-finite rows (the driver marks dropped samples with NaN) are left out."""
    import numpy as np

    data = np.asarray(samples, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 2:
        raise ValueError(f"Joulescope samples must be rows of (current, voltage), got shape {data.shape}")
    finite = data[np.all(np.isfinite(data), axis=1)]
    if len(finite) == 0:
        raise UsageError("the Joulescope capture holds no valid samples",
                         hint="check the Joulescope's connections and capture again")
    power_w = finite[:, 0] * finite[:, 1]
    mean_power_w = float(power_w.mean())
    uj = mean_power_w * latency_us           # W * us = uJ
    return EnergyResult(
        kind="measured", uj_per_inference=uj,
        inputs={"mean_power_w": mean_power_w, "mean_current_a": float(finite[:, 0].mean()),
                "mean_voltage_v": float(finite[:, 1].mean()), "samples": int(len(finite)),
                "samples_dropped": int(len(data) - len(finite)), "latency_us": latency_us,
                "latency": latency_name, "formula": "uJ = mean(current_A * voltage_V) * latency_us"},
        sources=[f"Joulescope {device}".strip() + " capture during continuous inference",
                 f"latency: {latency_name}, device clock"],
        note="measured supply power of the whole board (not only the MCU) during back-to-back inferences")


def measure_with_joulescope(run_inferences, latency_us, min_duration_s=1.0, latency_name=P50_LATENCY):
    """Capture with the one attached Joulescope while ``run_inferences(n)`` keeps the board busy.

    ``run_inferences`` is called in a thread with the number of inferences to run; it must return when done.
    """
    try:
        import joulescope
    except ImportError:
        raise UsageError("measuring energy needs the joulescope package and a Joulescope on the board's supply",
                         hint="pip install joulescope, or leave out --energy-meter to get the estimate") from None
    import threading

    plan = joulescope_capture_plan(latency_us, min_duration_s)
    worker = threading.Thread(target=run_inferences, args=(plan["inferences"],), daemon=True)
    with joulescope.scan_require_one(config=plan["config"]) as js:
        worker.start()
        samples = js.read(contiguous_duration=plan["duration_s"])
        device = str(js)
    worker.join()
    return energy_from_samples(samples, latency_us, device, latency_name)
