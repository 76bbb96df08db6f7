"""CPython's cyclic garbage collector in processes that hold a large index: the worker,
``threadline correlate``, and the benchmark that measures the engine as the worker runs it.

The correlation index and the escalation clocks are millions of long-lived containers that only
grow during a replay.  CPython (3.11) runs a full collection, which visits every tracked object,
whenever the objects that survived the younger generations reach a quarter of those already
old; with its default thresholds that check comes every ~70,000 net allocations, so a growing
index is walked again and again.  Higher thresholds make young collections rarer and full ones
wait for ~100 million net allocations: cycles still die in the young generations, where almost
all of them are born (a batch's futures and tracebacks), and the rest wait longer.
"""

from __future__ import annotations

import gc

from pipeline.settings import WorkerSettings


def tune_collector(worker: WorkerSettings) -> tuple[int, int, int]:
    """Set this process's collector thresholds to ``worker.gc_thresholds``; returns the ones
    it had."""
    before = gc.get_threshold()
    gc.set_threshold(*worker.gc_thresholds)
    return before
