from pipeline.runtime.batch import BatchResult


def test_apply_to_sets_and_deletes_every_partitions_entries():
    table = {"gone": b"old", "kept": b"same"}
    result = BatchResult(writes={0: {"new": b"v", "gone": None}, 3: {"absent": None, "other": b"w"}})
    result.apply_to(table)
    assert table == {"kept": b"same", "new": b"v", "other": b"w"}
