"""Pareto fronts over an experiment's cells: the configurations no other beats on both axes at once.

A point is on the front when no other point is at least as good on both axes and better on one. The axes say
which way is better: accuracy up, latency / energy / RAM down.
"""

from dataclasses import dataclass

# (x figure, y figure, title): x is minimised, y maximised
FRONTS = (("board_ms", "accuracy", "accuracy vs latency"),
          ("energy_uj", "accuracy", "accuracy vs energy"),
          ("ram_bytes", "accuracy", "accuracy vs RAM"))


@dataclass
class Point:
    label: str
    x: float                    # minimised
    y: float                    # maximised
    on_front: bool = False


def front(points):
    """Mark the points on the Pareto front (lower x, higher y); returns the front, sorted by x."""
    for p in points:
        p.on_front = not any((q.x <= p.x and q.y >= p.y) and (q.x < p.x or q.y > p.y) for q in points)
    return sorted((p for p in points if p.on_front), key=lambda p: (p.x, -p.y))


def points(rows, x, y):
    """A Point per row (dicts with ``label`` and the two figures) that has both figures."""
    return [Point(r["label"], float(r[x]), float(r[y])) for r in rows if r.get(x) is not None and
            r.get(y) is not None]
