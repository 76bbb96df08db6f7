from collections import Counter

from pipeline.bench.pipeline import bench_tenants, partition_of


def test_the_bench_tenants_fill_every_partition_evenly():
    tenants = bench_tenants(4, per_partition=2)
    assert len(set(tenants)) == 8
    assert Counter(partition_of(t.encode(), 4) for t in tenants) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_partition_of_agrees_with_faust_s_partitioner():
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"a", b"tenant", b"default", b"tenant-07"):
        assert partition_of(key, 4) == DefaultPartitioner()(key, [0, 1, 2, 3], [0, 1, 2, 3])
