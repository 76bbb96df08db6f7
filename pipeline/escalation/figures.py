"""What a support manager reads off the escalation and SLA records, computed in Python.

The dashboards compute the same from ClickHouse (pipeline/analytics/dashboards.py); these
functions serve the offline ``threadline sla`` command and the checks that compare two runs, e.g.
a mailbox with its automatic mail and without it.  Input records are the ``to_record()`` dicts
of :class:`~pipeline.escalation.model.Transition` and :class:`~pipeline.escalation.sla.SlaEvent`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable

TARGETS = ("first_response", "next_response", "resolution")


def nearest_rank(values: list[float], share: float) -> float | None:
    """The ``share`` percentile by nearest rank (a value that occurs), None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass(frozen=True)
class TargetFigures:
    """One SLA target over every instance (conversation and cycle) of it."""

    target: str
    instances: int
    met_on_time: int
    met_late: int
    breached_open: int  # breached and not met (yet)
    open: int  # neither met nor breached (yet)
    p50_business_seconds: float | None  # of the met instances
    p90_business_seconds: float | None

    @property
    def share_met(self) -> float | None:
        """Met on time among the decided ones (met, or breached)."""
        decided = self.met_on_time + self.met_late + self.breached_open
        return self.met_on_time / decided if decided else None

    def as_dict(self) -> dict:
        return {**asdict(self), "share_met": self.share_met}


def sla_figures(records: Iterable[dict]) -> dict[str, TargetFigures]:
    """Per target: how its instances ended (met on time, met late, breached, open) and the working
    time to meet it (percentiles of the met ones)."""
    instances: dict[tuple, dict] = {}
    for record in records:
        key = (record["tenant"], record["conversation_id"], record["target"], record["cycle"], record["message_id"])
        instance = instances.setdefault(key, {"met": None, "breached": False})
        if record["outcome"] == "met":
            instance["met"] = record
        elif record["outcome"] == "breached":
            instance["breached"] = True
    figures = {}
    for target in TARGETS:
        mine = [instance for key, instance in instances.items() if key[2] == target]
        met = [instance["met"] for instance in mine if instance["met"] is not None]
        seconds = [record["business_seconds"] for record in met]
        figures[target] = TargetFigures(
            target=target, instances=len(mine), met_on_time=sum(record["on_time"] for record in met),
            met_late=sum(not record["on_time"] for record in met),
            breached_open=sum(instance["breached"] and instance["met"] is None for instance in mine),
            open=sum(not instance["breached"] and instance["met"] is None for instance in mine),
            p50_business_seconds=nearest_rank(seconds, 0.5), p90_business_seconds=nearest_rank(seconds, 0.9))
    return figures


def current_states(transitions: Iterable[dict]) -> Counter:
    """How many conversations are in each escalation state now: the latest transition of each."""
    latest: dict[tuple[str, str], str] = {}
    for record in transitions:  # in the order they were emitted
        latest[(record["tenant"], record["conversation_id"])] = record["state"]
    return Counter(latest.values())


def format_duration(seconds: float | None) -> str:
    """A duration as a person says it, to the two largest units: "9 d 1 h", "3 h 20 min", "45 s"."""
    if seconds is None:
        return "–"
    rest = round(seconds)
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if rest >= size or (unit == "s" and not parts):
            parts.append(f"{rest // size} {unit}")
            rest %= size
        elif parts:
            break  # "2 d 5 min" would read as a typo for hours: stop at the first empty unit
        if len(parts) == 2:
            break
    return " ".join(parts)
