"""The experiment file: YAML read with the line of every value, validated, and expanded into cells.

    name: kws-boards
    models: [kws, {name: tiny, path: tiny.tflite, dataset: DIR}]
    boards: [sim:esp32, {name: lab-3, board: esp32, port: /dev/ttyUSB0}, {board: esp32, place: kit-07}]
    modes: [local, offload, {auto: [0.6, 0.8]}, {split: [auto, 7]}]
    backends: [auto]
    bench: {measure: all, window_s: 0.5, inputs: 2, limit: 40}
    repeats: 1
    exclude: [{model: tiny, board: sim:esp32s3}]
    budget: {...}                        # tinyhost.experiment.budget

Every error names the file and the line of the value at fault (:class:`ConfigError`). Cells are the product
models x boards x modes x backends x repeats, less those matching an ``exclude`` rule, and, when ``only`` is
given, only those matching one of its rules.
"""

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError

BENCH_MEASURES = ("performance", "accuracy", "memory", "energy", "all")
TOP_KEYS = ("name", "models", "boards", "modes", "backends", "dataset", "bench", "repeats", "exclude", "only",
            "budget", "store")
BENCH_KEYS = {"measure": str, "window_s": float, "inputs": int, "min_inferences": int, "warmups": int,
              "limit": int, "baud": int, "timeout_s": float, "offload_inputs": int, "retries": int}
RULE_KEYS = ("model", "board", "mode", "backend")


class ConfigError(UsageError):
    """The experiment file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class ModelSpec:
    name: str                      # how the experiment names it (cells, tables, plots)
    path: str                      # what `--model` takes: a shipped or official name, or a .tflite path
    dataset: str = None            # test set for accuracy (default: the experiment's, or the model's own)


@dataclass(frozen=True)
class BoardSpec:
    name: str                      # how the experiment names it
    board: str                     # what `--board` takes: sim, sim:esp32s3, esp32 ...
    port: str = None               # a real board's serial port (default: found by USB VID:PID)
    place: str = None              # a labgrid place (board farm, tinyhost.farm): acquired for the board's cells
    coordinator: str = None        # the labgrid coordinator's HOST:PORT (default $LG_COORDINATOR)

    @property
    def virtual(self):
        from .. import boards

        return boards.from_spec(self.board)[1]


@dataclass(frozen=True)
class Mode:
    """Where a cell's inferences run: ``local`` on the board; ``offload`` (every inference offloaded), ``auto``
    (offloaded when the board's top-1 confidence is below ``threshold``) or ``split`` (the board runs operators
    [0, split_at), the server the rest; "auto": the split plan's best point for the board's link) through an
    offload server."""
    kind: str                      # local | offload | auto | split
    threshold: float = None
    split_at: object = None        # split: a split point (int) or "auto"

    @property
    def name(self):
        if self.kind == "split":
            return f"split@{self.split_at}"
        return f"auto@{self.threshold:g}" if self.kind == "auto" else self.kind


@dataclass(frozen=True)
class Cell:
    model: ModelSpec
    board: BoardSpec
    mode: Mode
    backend: str
    repeat: int = 0                # 0 .. repeats-1

    @property
    def key(self):
        """The cell's identity in the results store (with the repeat)."""
        return f"{self.model.name}|{self.board.name}|{self.mode.name}|{self.backend}|{self.repeat}"

    @property
    def label(self):
        text = f"{self.model.name} on {self.board.name}, {self.mode.name}"
        text += f", backend {self.backend}" if self.backend != "auto" else ""
        return text + (f", repeat {self.repeat + 1}" if self.repeat else "")


@dataclass
class BenchSettings:
    measure: str = "all"
    window_s: float = 1.0
    inputs: int = 2
    min_inferences: int = 10
    warmups: int = 1
    limit: int = None
    baud: int = None
    timeout_s: float = 5.0
    offload_inputs: int = 20
    retries: int = 1               # a cell whose board fails is run again this many times before it is marked failed


@dataclass
class Experiment:
    name: str
    path: Path
    models: list
    boards: list
    modes: list
    backends: list
    bench: BenchSettings
    repeats: int = 1
    dataset: str = None
    exclude: list = field(default_factory=list)    # of dicts: key -> value or list of values
    only: list = field(default_factory=list)
    budget: dict = None            # the budget section as written (tinyhost.experiment.budget reads it)
    store: str = None              # the results store, relative to the file's folder
    sha256: str = ""               # of the file's bytes: a resumed run must be of the same file
    lines: dict = field(default_factory=dict, repr=False)   # path tuple -> line

    def cells(self):
        """Every cell, in file order, less the excluded ones."""
        out = []
        for model, b, mode, backend, repeat in itertools.product(self.models, self.boards, self.modes,
                                                                 self.backends, range(self.repeats)):
            cell = Cell(model, b, mode, backend, repeat)
            if any(_matches(rule, cell) for rule in self.exclude):
                continue
            if self.only and not any(_matches(rule, cell) for rule in self.only):
                continue
            out.append(cell)
        return out

    def dataset_for(self, model):
        return model.dataset or self.dataset

    def line_of(self, *path):
        return _line(self.lines, path)


def _matches(rule, cell):
    values = {"model": cell.model.name, "board": cell.board.name, "mode": cell.mode.name, "backend": cell.backend}
    for key, wanted in rule.items():
        wanted = wanted if isinstance(wanted, list) else [wanted]
        value = values[key]
        if not any(str(w) == value or (key == "mode" and str(w) == cell.mode.kind) for w in wanted):
            return False
    return True


# --- YAML with lines --------------------------------------------------------------------------------------------

def _to_python(node, path, lines, loader):
    """A composed YAML node as plain Python; ``lines[path]`` = 1-based line of every value."""
    import yaml

    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = key_node.value
            out[key] = _to_python(value_node, path + (key,), lines, loader)
            lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, path + (i,), lines, loader) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _line(lines, path):
    path = tuple(path)
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 1)


def read_yaml(path):
    """(data, lines) of a YAML file; ConfigError naming the line when it is not YAML."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}", hint="check the file's path") from None
    lines = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})",
                          hint="fix the YAML syntax at that line") from None
    data = _to_python(node, (), lines, yaml.SafeLoader("")) if node is not None else {}
    return data, lines, text.encode("utf-8")


class _Checker:
    def __init__(self, path, lines):
        self.path, self.lines = path, lines

    def fail(self, where, message, hint):
        raise ConfigError(f"{self.path}:{_line(self.lines, where)}: {message}", hint=hint)

    def mapping(self, value, where, keys, what):
        if not isinstance(value, dict):
            self.fail(where, f"{what} must be a mapping (key: value lines)", "see docs/experiments.md for the schema")
        for key in value:
            if key not in keys:
                self.fail(where + (key,), f"unknown key {key!r} in {what}", f"use one of: {', '.join(keys)}")
        return value

    def items(self, value, where, what):
        if value is None:
            self.fail(where, f"{what} is missing", f"add `{where[-1]}:` with a list")
        if not isinstance(value, list):
            value = [value]
        if not value:
            self.fail(where, f"{what} is empty", "list at least one")
        return value

    def number(self, value, where, kind, what, minimum=None):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            self.fail(where, f"{what} must be {'an integer' if kind is int else 'a number'}, not {value!r}",
                      "write a number")
        if minimum is not None and value < minimum:
            self.fail(where, f"{what} must be at least {minimum}, not {value}", "use a larger value")
        return kind(value)


def apply_overrides(data, overrides):
    """``data`` with each ``KEY.SUBKEY=VALUE`` of ``overrides`` set (VALUE read as YAML: ``bench.limit=8``,
    ``boards=[sim:esp32]``), as if the file said so; UsageError for one without ``=``."""
    import yaml

    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r} is not KEY=VALUE", hint="write e.g. --set bench.limit=8")
        *parents, last = [k.strip() for k in key.split(".")]
        node = data
        for k in parents:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        try:
            node[last] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UsageError(f"--set {item!r}: the value is not YAML ({e})", hint="quote it, e.g. --set 'name=x y'")
    return data


def load(path, overrides=()):
    """The experiment in ``path``, validated; ConfigError (exit 2) naming the line of the first problem.
    ``overrides``: ``KEY=VALUE`` settings over the file's (:func:`apply_overrides`; a resumed run must give the
    same ones)."""
    path = Path(path)
    data, lines, raw = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
        raw += "".join(f"\n# --set {item}" for item in overrides).encode("utf-8")
    c = _Checker(path, lines)
    c.mapping(data, (), TOP_KEYS, "the experiment file")
    models = [_model(c, v, ("models", i)) for i, v in enumerate(c.items(data.get("models"), ("models",), "models"))]
    boards = [_board(c, v, ("boards", i)) for i, v in enumerate(c.items(data.get("boards"), ("boards",), "boards"))]
    modes = []
    for i, v in enumerate(c.items(data.get("modes", ["local"]), ("modes",), "modes")):
        modes.extend(_modes(c, v, ("modes", i)))
    backends = [str(v) for v in c.items(data.get("backends", ["auto"]), ("backends",), "backends")]
    for what, specs in (("model", models), ("board", boards), ("mode", modes), ("backend", backends)):
        names = [getattr(s, "name", s) for s in specs]
        for i, n in enumerate(names):
            if n in names[:i]:
                c.fail((what + "s", i), f"{what} {n!r} is listed twice", f"give each {what} its own `name:`")
    bench = BenchSettings()
    for key, value in c.mapping(data.get("bench", {}), ("bench",), tuple(BENCH_KEYS), "bench").items():
        if value is None:
            continue
        if BENCH_KEYS[key] is str:
            if value not in BENCH_MEASURES:
                c.fail(("bench", key), f"unknown measure {value!r}", f"use one of {', '.join(BENCH_MEASURES)}")
        else:
            value = c.number(value, ("bench", key), BENCH_KEYS[key], f"bench.{key}", minimum=0)
        setattr(bench, key, value)
    repeats = c.number(data.get("repeats", 1), ("repeats",), int, "repeats", minimum=1)
    names = {"model": [m.name for m in models], "board": [b.name for b in boards],
             "mode": [m.name for m in modes] + [m.kind for m in modes], "backend": backends}
    rules = {}
    for section in ("exclude", "only"):
        rules[section] = []
        for i, rule in enumerate(data.get(section) or []):
            where = (section, i)
            c.mapping(rule, where, RULE_KEYS, f"an {section} rule")
            if not rule:
                c.fail(where, f"empty {section} rule", f"name at least one of {', '.join(RULE_KEYS)}")
            for key, wanted in rule.items():
                for w in wanted if isinstance(wanted, list) else [wanted]:
                    if str(w) not in names[key]:
                        c.fail(where + (key,), f"{section} names {key} {w!r}, which the experiment does not have",
                               f"use one of: {', '.join(dict.fromkeys(names[key]))}")
            rules[section].append(rule)
    budget = data.get("budget")
    if budget is not None:
        from . import budget as budget_mod

        budget_mod.validate(budget, c, ("budget",), from_experiment=True)
    name = str(data.get("name") or path.stem)
    exp = Experiment(name=name, path=path, models=models, boards=boards, modes=modes, backends=backends,
                     bench=bench, repeats=repeats, dataset=_path_or_none(path, data.get("dataset")),
                     exclude=rules["exclude"], only=rules["only"], budget=budget,
                     store=str(path.parent / str(data["store"])) if data.get("store") else None,
                     sha256=hashlib.sha256(raw).hexdigest(),
                     lines=lines)
    if not exp.cells():
        c.fail(("exclude",) if exp.exclude else (), "the rules leave no cell to run",
               "loosen the exclude/only rules")
    return exp


def _path_or_none(base, value):
    """A path in the file, relative to the file's folder (a name that is no existing path is kept as it is)."""
    if value is None:
        return None
    candidate = Path(base).parent / str(value)
    return str(candidate) if candidate.exists() else str(value)


def _model(c, value, where):
    if isinstance(value, str):
        return ModelSpec(name=Path(value).stem if value.endswith(".tflite") else value,
                         path=_path_or_none(c.path, value))
    spec = c.mapping(value, where, ("name", "path", "dataset"), "a model")
    if "path" not in spec and "name" not in spec:
        c.fail(where, "a model needs `path:` (a .tflite file or a model name)", "add path: or name:")
    model = str(spec.get("path") or spec["name"])
    name = str(spec.get("name") or Path(model).stem)
    return ModelSpec(name=name, path=_path_or_none(c.path, model), dataset=_path_or_none(c.path, spec.get("dataset")))


def _board(c, value, where):
    from .. import boards
    from ..errors import TinyhostError

    if isinstance(value, str):
        spec = {"board": value}
    else:
        spec = c.mapping(value, where, ("name", "board", "port", "place", "coordinator"), "a board")
    if "board" not in spec:
        c.fail(where, "a board needs `board:` (sim, sim:NAME, or a profile such as esp32)", "add board:")
    try:
        _, virtual = boards.from_spec(str(spec["board"]))
    except TinyhostError as e:
        c.fail(where + ("board",) if isinstance(value, dict) else where, e.message, e.hint or "see `tinyhost boards`")
    if virtual and (spec.get("port") or spec.get("place")):
        c.fail(where, "a virtual board has no port or labgrid place", "drop port:/place:, or name a real board")
    if spec.get("port") and spec.get("place"):
        c.fail(where, "a board has a port or a labgrid place, not both", "drop port: (the place's port is used)")
    if spec.get("coordinator") and not spec.get("place"):
        c.fail(where + ("coordinator",), "coordinator: without place:", "name the labgrid place: place: NAME")
    name = spec.get("name") or (f"{spec['place']}" if spec.get("place") else spec["board"])
    return BoardSpec(name=str(name), board=str(spec["board"]), port=spec.get("port"), place=spec.get("place"),
                     coordinator=spec.get("coordinator"))


def _modes(c, value, where):
    if value in ("local", "offload"):
        return [Mode(value)]
    if value == "split":
        return [Mode("split", split_at="auto")]
    if isinstance(value, dict) and set(value) == {"split"}:
        points = value["split"] if isinstance(value["split"], list) else [value["split"]]
        out = []
        for i, k in enumerate(points):
            if k != "auto":
                k = c.number(k, where + ("split", i), int, "a split point", minimum=1)
            out.append(Mode("split", split_at=k))
        return out
    if isinstance(value, dict) and set(value) == {"auto"}:
        thresholds = value["auto"] if isinstance(value["auto"], list) else [value["auto"]]
        out = []
        for i, t in enumerate(thresholds):
            t = c.number(t, where + ("auto", i), float, "an auto threshold", minimum=0)
            if t > 1:
                c.fail(where + ("auto", i), f"an auto threshold is a confidence between 0 and 1, not {t}",
                       "use a value such as 0.8")
            out.append(Mode("auto", t))
        return out
    c.fail(where, f"unknown mode {value!r}", "use local, offload, {auto: [thresholds]}, split, or "
                                             "{split: [auto, K ...]}")
