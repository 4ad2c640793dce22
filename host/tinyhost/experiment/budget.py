"""The link and power budget: how many events a day a configuration can handle, what it sends, what it spends,
whether each limit holds, and which configuration gets the most useful data down.

    workload: {events_per_day: 320, input_bytes: 61100000, useful_fraction: 0.33}
    link:     {rate_bps: 10e6, passes_per_day: 4, pass_s: 600, overhead_bytes: 0}
    power:    {average_w: 2.0, peak_w: 10, base_w: 1.2, radio_tx_w: 4.0, harvest_wh_per_day: 48}
    configurations:
      - {name: send everything, filter: none}
      - {name: cloud filter, filter: model, latency_ms: 850, energy_uj: 420000, recall: 0.9, specificity: 0.85,
         compute_w: 0.5}

``filter: none`` sends every event (``send_fraction``: that share of them, as they come). ``filter: model`` runs a
classifier on board on every event and sends the events it calls useful: a fraction
``useful_fraction * recall + (1 - useful_fraction) * (1 - specificity)``, of which ``useful_fraction * recall``
are really useful. In an experiment file the configurations come from the
cells: each local cell's measured ``board_ms``, ``energy_uj`` and accuracy (top-1 standing in for both recall and
specificity: a classifier's figures per class are not in the budget's model); offload cells send every event, auto
cells the share they offloaded (their on-board inferences' energy is not counted).

Per configuration: inferences a day the board has time for (86,400 s / latency), the events sent and the bytes,
the link's capacity (rate x passes x pass length), events downlinked (the lesser), useful events downlinked,
energy a day (base load all day, inferences, radio while sending) and its average power, and whether each limit
holds: average power, peak power (base + the larger of compute and radio), energy harvested a day, time to run
every event. The best configuration is the one meeting every limit with the most useful events downlinked.
"""

from dataclasses import dataclass, field

from ..errors import UsageError

SECTIONS = {
    "workload": {"events_per_day": float, "input_bytes": float, "useful_fraction": float},
    "link": {"rate_bps": float, "passes_per_day": float, "pass_s": float, "overhead_bytes": float,
             "duty_cycle": float},
    "power": {"average_w": float, "peak_w": float, "base_w": float, "radio_tx_w": float, "compute_w": float,
              "harvest_wh_per_day": float},
}
CONFIG_KEYS = ("name", "filter", "latency_ms", "energy_uj", "recall", "specificity", "compute_w", "send_fraction")
REQUIRED = {"workload": ("events_per_day", "input_bytes"), "link": ("rate_bps",), "power": ()}
DAY_S = 86400.0


@dataclass
class Verdict:
    name: str
    filter: str
    inferences_per_day_possible: float     # time the board has for the classifier (inf. when no filter)
    events_sent_per_day: float
    bytes_sent_per_day: float
    events_downlinked_per_day: float       # what the link carries of what is sent
    useful_downlinked_per_day: float
    energy_j_per_day: float
    average_w: float
    peak_w: float
    limits: dict = field(default_factory=dict)     # limit -> True (holds) / False
    ok: bool = True


@dataclass
class BudgetResult:
    link_bytes_per_day: float
    max_events_downlinked_per_day: float   # the link's capacity in events of input_bytes (+ overhead)
    verdicts: list
    best: str = None                       # name of the best configuration meeting every limit, or None


def validate(data, checker, where, from_experiment=False):
    """Check a budget section (ConfigError naming the line through ``checker``)."""
    checker.mapping(data, where, tuple(SECTIONS) + ("configurations",), "budget")
    for section, keys in SECTIONS.items():
        if section not in data:
            if REQUIRED[section]:
                checker.fail(where, f"budget needs a `{section}:` section",
                             f"add {section}: with {', '.join(REQUIRED[section])}")
            continue
        values = checker.mapping(data[section], where + (section,), tuple(keys), f"budget.{section}")
        for key in REQUIRED[section]:
            if key not in values:
                checker.fail(where + (section,), f"budget.{section} needs `{key}:`", f"add {key}:")
        for key, value in values.items():
            checker.number(value, where + (section, key), float, f"budget.{section}.{key}", minimum=0)
    configs = data.get("configurations")
    if configs is None and not from_experiment:
        checker.fail(where, "budget needs `configurations:`", "list the configurations to compare")
    for i, cfg in enumerate(configs or []):
        w = where + ("configurations", i)
        checker.mapping(cfg, w, CONFIG_KEYS, "a budget configuration")
        if cfg.get("filter", "none") not in ("none", "model"):
            checker.fail(w + ("filter",), f"unknown filter {cfg.get('filter')!r}", "use none or model")
        if cfg.get("send_fraction", 0) > 1:
            checker.fail(w + ("send_fraction",), "send_fraction is a fraction of the events, at most 1",
                         "use a value between 0 and 1")
        for key in CONFIG_KEYS[2:]:
            if key in cfg:
                checker.number(cfg[key], w + (key,), float, key, minimum=0)
        if cfg.get("filter") == "model":
            for key in ("latency_ms", "energy_uj", "recall"):
                if key not in cfg:
                    checker.fail(w, f"a `filter: model` configuration needs `{key}:`", f"add {key}:")


def _get(data, section, key, default=None):
    value = (data.get(section) or {}).get(key, default)
    return None if value is None else float(value)


def link_bytes_per_day(data):
    rate = _get(data, "link", "rate_bps")
    duty = _get(data, "link", "duty_cycle")
    if duty is not None:
        seconds = duty * DAY_S
    else:
        seconds = _get(data, "link", "passes_per_day", 1) * _get(data, "link", "pass_s", DAY_S)
    return rate * seconds / 8


def evaluate(data, configurations=None):
    """The BudgetResult of a budget section; ``configurations`` (dicts of CONFIG_KEYS) replaces the section's."""
    configs = configurations if configurations is not None else data.get("configurations") or []
    if not configs:
        raise UsageError("the budget has no configuration to evaluate",
                         hint="list configurations: in the budget, or run the experiment's cells first")
    events = _get(data, "workload", "events_per_day")
    size = _get(data, "workload", "input_bytes") + _get(data, "link", "overhead_bytes", 0)
    useful = _get(data, "workload", "useful_fraction", 1.0)
    rate = _get(data, "link", "rate_bps")
    capacity = link_bytes_per_day(data)
    max_events = capacity / size
    base_w = _get(data, "power", "base_w", 0)
    radio_w = _get(data, "power", "radio_tx_w", 0)
    verdicts = []
    for cfg in configs:
        kind = cfg.get("filter", "none")
        if kind == "model":
            recall = float(cfg["recall"])
            specificity = float(cfg.get("specificity", recall))
            sent_fraction = useful * recall + (1 - useful) * (1 - specificity)
            useful_of_sent = useful * recall / sent_fraction if sent_fraction else 0.0
            latency_s = float(cfg["latency_ms"]) / 1000
            possible = DAY_S / latency_s if latency_s else float("inf")
            inference_j = events * float(cfg["energy_uj"]) / 1e6
            compute_w = float(cfg.get("compute_w", _get(data, "power", "compute_w", 0)))
        else:
            sent_fraction = float(cfg.get("send_fraction", 1.0))
            useful_of_sent, possible, inference_j, compute_w = useful, float("inf"), 0.0, 0.0
        sent = events * sent_fraction
        downlinked = min(sent, max_events)
        airtime_s = downlinked * size * 8 / rate
        energy = base_w * DAY_S + inference_j + radio_w * airtime_s
        v = Verdict(name=str(cfg.get("name", kind)), filter=kind, inferences_per_day_possible=possible,
                    events_sent_per_day=sent, bytes_sent_per_day=downlinked * size,
                    events_downlinked_per_day=downlinked, useful_downlinked_per_day=downlinked * useful_of_sent,
                    energy_j_per_day=energy, average_w=energy / DAY_S, peak_w=base_w + max(compute_w, radio_w))
        v.limits["time for every event"] = kind != "model" or possible >= events
        if _get(data, "power", "average_w") is not None:
            v.limits["average power"] = v.average_w <= _get(data, "power", "average_w")
        if _get(data, "power", "peak_w") is not None:
            v.limits["peak power"] = v.peak_w <= _get(data, "power", "peak_w")
        if _get(data, "power", "harvest_wh_per_day") is not None:
            v.limits["energy harvested"] = energy <= _get(data, "power", "harvest_wh_per_day") * 3600
        v.ok = all(v.limits.values())
        verdicts.append(v)
    meeting = [v for v in verdicts if v.ok]
    best = max(meeting, key=lambda v: (v.useful_downlinked_per_day, -v.energy_j_per_day)).name if meeting else None
    return BudgetResult(capacity, max_events, verdicts, best)


def configurations_from_cells(rows, data):
    """Budget configurations from an experiment's stored cells (dicts with label, mode, board_ms, energy_uj,
    accuracy, offloaded_fraction): a local cell filters on board with its measured figures; an offload cell sends
    every event, an auto cell the fraction it offloaded."""
    configs = []
    for r in rows:
        if r.get("mode") == "local":
            if r.get("board_ms") is None or r.get("energy_uj") is None or r.get("accuracy") is None:
                continue
            configs.append({"name": r["label"], "filter": "model", "latency_ms": r["board_ms"],
                            "energy_uj": r["energy_uj"], "recall": r["accuracy"], "specificity": r["accuracy"]})
        else:
            fraction = r.get("offloaded_fraction")
            configs.append({"name": r["label"], "filter": "none", "send_fraction": 1.0 if fraction is None
                            else fraction})
    return list(data.get("configurations") or []) + configs


def load_file(path):
    """(budget section, whether ``path`` is an experiment file): a YAML whose top level is the budget section, or
    an experiment file with ``budget:``."""
    from .config import _Checker, read_yaml

    data, lines, _ = read_yaml(path)
    c = _Checker(path, lines)
    if isinstance(data, dict) and "budget" in data:          # an experiment file: its cells are the configurations
        validate(data["budget"], c, ("budget",), from_experiment=True)
        return data["budget"], True
    validate(data, c, ())
    return data, False
