from contextlib import contextmanager

from pipeline.runtime.batch import BatchResult


def test_apply_to_sets_and_deletes_each_partitions_entries_inside_that_partitions_context():
    table = {"gone": b"old", "kept": b"same"}
    result = BatchResult(writes={0: {"new": b"v", "gone": None}, 3: {"absent": None, "other": b"w"}})
    seen = []

    @contextmanager
    def in_partition(partition):
        seen.append(partition)
        yield

    result.apply_to(table, in_partition)
    assert table == {"kept": b"same", "new": b"v", "other": b"w"}
    assert seen == [0, 3]


def test_apply_to_without_a_context_writes_the_plain_mapping():
    table = {}
    BatchResult(writes={1: {"k": b"v"}}).apply_to(table)
    assert table == {"k": b"v"}
