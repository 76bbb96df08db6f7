"""Which generation a replay makes and compares with (pure; the real-broker runs of
`threadline replay` are in tests/integration/test_pipeline.py)."""

from __future__ import annotations

import pytest

from pipeline.streams.replay import KnownGenerations, ReplayRefused, generations_named, plan_generations


def known(outputs=(), started=()) -> KnownGenerations:
    return KnownGenerations(frozenset(outputs), frozenset(started))


def test_the_new_generation_is_one_above_every_known_one_and_compares_with_the_newest_output():
    # The issue: the settings still say 0 after a replay made generation 1.
    assert plan_generations(known(outputs={0, 1}, started={0, 1}), current=0) == (1, 2)
    assert plan_generations(known(outputs={0}, started={0}), current=0) == (0, 1)
    # A generation that started but emitted nothing (a crashed replay) is not reused either.
    assert plan_generations(known(outputs={0, 1}, started={0, 1, 2}), current=0) == (1, 3)
    # Nothing on the cluster yet: the settings' generation is the one to compare with.
    assert plan_generations(known(), current=4) == (4, 5)


def test_an_existing_or_lower_generation_is_refused():
    cluster = known(outputs={0, 1, 2}, started={0, 1, 2})
    with pytest.raises(ReplayRefused, match=r"generation 1 already exists \(generations on the cluster: 0, 1, 2\)"
                                            r".*leave out --generation to get 3"):
        plan_generations(cluster, current=0, new=1)
    with pytest.raises(ReplayRefused, match="generation 0 already exists"):
        plan_generations(known(), current=0, new=0)  # the live generation of the settings
    with pytest.raises(ReplayRefused, match="generation 3 is below the newest generation 5"):
        plan_generations(known(outputs={0, 5}), current=0, new=3)
    with pytest.raises(ReplayRefused, match="--from-generation 7 is the new generation itself"):
        plan_generations(cluster, current=0, new=7, old=7)


def test_a_requested_new_generation_and_generation_to_compare_with_are_kept():
    assert plan_generations(known(outputs={0, 1}), current=0, new=10) == (1, 10)
    assert plan_generations(known(outputs={0, 1}), current=0, old=0) == (0, 2)


def test_generations_are_read_from_consumer_groups_and_faust_topics_of_the_app_ids_only():
    names = ["threadline-g0", "threadline-g3-correlation-index-changelog", "threadline-g12-__assignor-__leader",
             "threadline-reader-5d0c", "threadline-g", "other-g7", "threadline-staging-g9", "x.mail.correlated"]
    assert generations_named(names, ["threadline"]) == {0, 3, 12}
    assert generations_named(names, ["threadline", "other"]) == {0, 3, 7, 12}
