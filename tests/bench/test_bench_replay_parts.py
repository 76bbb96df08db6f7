"""The replay bench's synthetic mail, streamed from generator processes: no broker needed."""

from __future__ import annotations

from pipeline.bench.replay import synthetic_chunks


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
