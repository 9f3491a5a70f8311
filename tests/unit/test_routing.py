"""Routing policies: round-robin over sorted ids (fair as workers come and go), seeded random, exclusion."""

from __future__ import annotations

from collections import Counter

import pytest

from dynamo_cli.errors import UsageError
from dynamo_cli.routing.policies import NoWorkersError, RandomChoice, RoundRobin, make_policy

# ---- round-robin --------------------------------------------------------------------------------------


def test_round_robin_cycles_through_sorted_ids() -> None:
    rr = RoundRobin()
    picks = [rr.choose([30, 10, 20]) for _ in range(7)]
    assert picks == [10, 20, 30, 10, 20, 30, 10]


def test_round_robin_does_not_depend_on_candidate_order() -> None:
    rr = RoundRobin()
    orders = [[3, 1, 2], [2, 3, 1], [1, 2, 3], [3, 2, 1], [2, 1, 3], [1, 3, 2]]
    assert [rr.choose(o) for o in orders] == [1, 2, 3, 1, 2, 3]


def test_round_robin_is_even_over_many_requests() -> None:
    rr = RoundRobin()
    ids = [5, 9, 2, 7]
    counts = Counter(rr.choose(ids) for _ in range(400))
    assert counts == {i: 100 for i in ids}


def test_round_robin_join_takes_its_turn_without_repeating_anyone() -> None:
    rr = RoundRobin()
    assert [rr.choose([10, 30]) for _ in range(2)] == [10, 30]
    # 20 joins between 10 and 30; the cursor is at 30, so the next turn wraps to 10, then 20, then 30
    assert [rr.choose([10, 20, 30]) for _ in range(4)] == [10, 20, 30, 10]
    # a joiner after the cursor is picked next, before anyone is picked twice
    assert rr.choose([10, 15, 20, 30]) == 15


def test_round_robin_leave_of_the_last_picked_continues_with_the_next() -> None:
    rr = RoundRobin()
    assert [rr.choose([1, 2, 3, 4]) for _ in range(2)] == [1, 2]
    # 2 (the cursor) leaves: the next pick is 3, not 1 again
    assert [rr.choose([1, 3, 4]) for _ in range(4)] == [3, 4, 1, 3]


def test_round_robin_stays_fair_under_churn() -> None:
    rr = RoundRobin()
    members = {1, 2, 3, 4}
    served: Counter[int] = Counter()
    # in every window where membership is fixed, nobody is picked twice before all were picked once
    for step in range(12):
        if step == 4:
            members.discard(3)
        if step == 8:
            members.add(6)
        window = [rr.choose(sorted(members)) for _ in range(len(members))]
        assert sorted(window) == sorted(members), (step, window)
        served.update(window)
    assert served[3] == 4 and served[6] == 4


def test_round_robin_with_one_candidate_always_picks_it() -> None:
    rr = RoundRobin()
    assert {rr.choose([42]) for _ in range(5)} == {42}


# ---- random -------------------------------------------------------------------------------------------


def test_random_with_a_seed_is_reproducible() -> None:
    ids = list(range(10))

    def sequence(seed: int) -> list[int]:
        p = RandomChoice(seed=seed)
        return [p.choose(ids) for _ in range(50)]

    assert sequence(7) == sequence(7)
    assert sequence(7) != sequence(8)  # the seed really drives the choice


def test_random_covers_every_candidate() -> None:
    p = RandomChoice(seed=1)
    ids = [11, 22, 33, 44, 55]
    counts = Counter(p.choose(ids) for _ in range(1000))
    assert set(counts) == set(ids)
    assert min(counts.values()) > 120  # roughly uniform: 200 each expected


def test_random_only_picks_from_the_candidates() -> None:
    p = RandomChoice(seed=3)
    for n in range(1, 8):
        cands = list(range(100, 100 + n))
        assert all(p.choose(cands) in cands for _ in range(20))


# ---- exclusion and no workers -------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [RoundRobin(), RandomChoice(seed=0)], ids=["round-robin", "random"])
def test_exclude_is_never_picked(policy: RoundRobin | RandomChoice) -> None:
    picks = {policy.choose([1, 2, 3, 4], exclude=[2, 4]) for _ in range(50)}
    assert picks == {1, 3}


def test_round_robin_with_exclusion_still_alternates() -> None:
    rr = RoundRobin()
    assert [rr.choose([1, 2, 3], exclude=[2]) for _ in range(4)] == [1, 3, 1, 3]


@pytest.mark.parametrize("policy", [RoundRobin(), RandomChoice(seed=0)], ids=["round-robin", "random"])
def test_no_candidates_raises_no_workers(policy: RoundRobin | RandomChoice) -> None:
    with pytest.raises(NoWorkersError):
        policy.choose([])
    with pytest.raises(NoWorkersError):
        policy.choose([1, 2], exclude=[1, 2])


# ---- make_policy --------------------------------------------------------------------------------------


def test_make_policy_known_modes() -> None:
    assert isinstance(make_policy("round-robin"), RoundRobin)
    p = make_policy("random", seed=5)
    assert isinstance(p, RandomChoice)
    q = RandomChoice(seed=5)
    ids = list(range(20))
    assert [p.choose(ids) for _ in range(20)] == [q.choose(ids) for _ in range(20)]  # the seed is used


def test_make_policy_unknown_mode_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as e:
        make_policy("least-loaded")
    assert "least-loaded" in e.value.message
    assert e.value.hint and "round-robin" in e.value.hint
    assert e.value.exit_code == 2
