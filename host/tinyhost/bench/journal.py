"""The accuracy-run journal: append-only JSON lines, fsynced one sample at a time, so a run can resume.

Line 1 is a header naming the run (model, dataset, board); then one line per finished item
``{"i": index, ...result}``, and event lines ``{"event": "reset" | "resume" | "end", ...}``. A line cut short by a
crash or a pulled cable is dropped on resume (the item is simply run again); an item already in the journal is
never run or counted a second time.
"""

import json
import os
import time
from pathlib import Path

from ..errors import UsageError

FORMAT = "tinyhost-bench-journal/1"
IDENTITY_KEYS = ("model_sha256", "dataset_sha256", "benchmark", "n_items", "board")


class Journal:
    def __init__(self, path, header, done, events, file):
        self.path = Path(path)
        self.header = header
        self.done = done              # item index -> record
        self.events = events
        self._file = file

    @classmethod
    def open(cls, path, identity, resume=False):
        """Start a journal at ``path`` or, with ``resume``, continue the one there.

        ``identity`` holds IDENTITY_KEYS; resuming a journal of another model, data set or board is refused.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            header, done, events, good_bytes = _read(path)
            finished = any(e.get("event") == "end" for e in events)
            if resume:
                if header is None:
                    raise UsageError(f"journal {path} has no header line", hint="delete it and run without --resume")
                for key in IDENTITY_KEYS:
                    if key in identity and header.get(key) != identity[key]:
                        raise UsageError(
                            f"journal {path} belongs to another run: {key} was {header.get(key)!r}, "
                            f"now {identity[key]!r}",
                            hint="run without --resume to start over, or pass the same model, data set and board")
                f = open(path, "r+b")
                f.truncate(good_bytes)           # drop a torn last line
                f.seek(good_bytes)
                journal = cls(path, header, done, events, f)
                journal.event("resume", items_done=len(done))
                return journal
            if header is not None and done and not finished:
                raise UsageError(
                    f"an interrupted accuracy run left a journal with {len(done)} samples at {path}",
                    hint="add --resume to continue it, or delete the file to start over")
        elif resume:
            raise UsageError(f"nothing to resume: no journal at {path}", hint="run without --resume")
        header = {"journal": FORMAT, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        header.update(identity)
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as f:
            f.write(_line(header))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        f = open(path, "r+b")
        f.seek(0, os.SEEK_END)
        return cls(path, header, {}, [], f)

    def record(self, index, **result):
        """Append one finished item and make it durable before returning."""
        if index in self.done:
            raise ValueError(f"item {index} is already in the journal")
        rec = {"i": index}
        rec.update(result)
        self._append(rec)
        self.done[index] = rec

    def event(self, kind, **info):
        rec = {"event": kind, "time": time.time()}
        rec.update(info)
        self._append(rec)
        self.events.append(rec)

    def finish(self):
        self.event("end", items_done=len(self.done))

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _append(self, rec):
        self._file.write(_line(rec))
        self._file.flush()
        os.fsync(self._file.fileno())


def _line(rec):
    return (json.dumps(rec, separators=(",", ":"), allow_nan=True) + "\n").encode()


def _read(path):
    """(header, done, events, bytes of whole valid lines) of a journal; a torn last line is left out."""
    header, done, events = None, {}, []
    good = 0
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break                                  # no newline: cut short
        try:
            rec = json.loads(data[pos:end])
        except ValueError:
            break                                  # garbage: everything from here on is dropped
        pos = end + 1
        good = pos
        if header is None and rec.get("journal"):
            header = rec
        elif "i" in rec:
            done.setdefault(rec["i"], rec)
        elif "event" in rec:
            events.append(rec)
    return header, done, events, good


def default_path(identity, directory=".tinyhost/bench"):
    """``.tinyhost/bench/<board>-<model>-<dataset>.jsonl``: one journal per board, model and test set."""
    board = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(identity.get("board", "board")))
    board = "-".join(part for part in board.split("-") if part)
    name = f"{board}-{identity['model_sha256'][:12]}-{identity['dataset_sha256'][:12]}"
    return Path(directory) / f"{name}.jsonl"
