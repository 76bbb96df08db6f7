import gc

from pipeline.runtime.collector import tune_collector
from pipeline.settings import Settings, WorkerSettings


def test_the_collector_takes_the_thresholds_of_the_settings_and_says_what_it_had():
    before = gc.get_threshold()
    try:
        assert tune_collector(WorkerSettings(gc_thresholds=(9_000, 4, 2))) == before
        assert gc.get_threshold() == (9_000, 4, 2)
        assert tune_collector(Settings().worker) == (9_000, 4, 2)
        assert gc.get_threshold() == Settings().worker.gc_thresholds != (700, 10, 10)
    finally:
        gc.set_threshold(*before)
