"""The replay bench's building blocks that need no broker: tenants spread over partitions, and the
synthetic mail streamed from generator processes."""

from __future__ import annotations

from collections import Counter

from aiokafka.partitioner import murmur2

from pipeline.bench.replay import balanced_tenants, synthetic_chunks


def _partition(tenant: str, partitions: int) -> int:
    return (murmur2(tenant.encode()) & 0x7FFFFFFF) % partitions


def test_tenants_fill_every_partition_equally():
    for count, partitions in ((8, 4), (2, 2), (4, 4), (6, 4)):
        tenants = balanced_tenants(count, partitions)
        assert len(set(tenants)) == count
        per_partition = Counter(_partition(t, partitions) for t in tenants)
        assert max(per_partition.values()) - min(per_partition.values()) <= 1
        assert len(per_partition) == min(count, partitions)


def test_synthetic_chunks_give_every_mail_once_per_tenant_in_order_and_the_same_for_a_seed():
    tenants = ["a", "b", "c"]

    def collect(seed: int) -> dict[str, list[tuple[str, bytes]]]:
        mails: dict[str, list] = {t: [] for t in tenants}
        for tenant, chunk in synthetic_chunks(7_001, tenants, seed, processes=2):
            mails[tenant] += chunk
        return mails

    first = collect(7)
    assert sorted(len(m) for m in first.values()) == [2_333, 2_334, 2_334]
    for tenant, mails in first.items():
        assert [ref for ref, _ in mails] == [f"synth-{tenant}#{n}" for n in range(len(mails))]
        assert len({raw for _, raw in mails}) == len(mails)
        assert all(raw.startswith(b"Message-ID: <") for _, raw in mails)
    assert collect(7) == first
    assert collect(8)["a"] != first["a"]
