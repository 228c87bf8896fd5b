"""The fair-share rule on its own: weighted water-filling, caps, priority tiers, ties over time."""

from __future__ import annotations

from msgbatch.fairness import SHARED, Holdings, Lane, forget_idle, interleaved, plan, record_grant, water_fill
from msgbatch.models import HIGH, LOW, NORMAL


def test_water_fill_gives_each_slot_to_the_fewest_held_per_weight() -> None:
    assert water_fill(8, [("a", 0, 3.0, None), ("b", 0, 1.0, None)]) == {"a": 6, "b": 2}
    # Catching up first: b holds nothing, a already 9 (3 per weight).
    assert water_fill(4, [("a", 9, 3.0, None), ("b", 0, 1.0, None)]) == {"b": 3, "a": 1}
    # A cap (room) stops one; the rest goes to the others, and slots nobody may take stay unused.
    assert water_fill(10, [("a", 0, 5.0, 2), ("b", 0, 1.0, 3)]) == {"a": 2, "b": 3}
    assert water_fill(0, [("a", 0, 1.0, None)]) == {}
    assert water_fill(3, [("only", 7, 1.0, None)]) == {"only": 3}


def test_ties_between_whole_slots_go_to_the_least_served() -> None:
    # 5 slots at 3:1 cannot split exactly: with equal holdings per weight, the one served less gets it.
    claimants = [("a", 3, 3.0, None), ("b", 1, 1.0, None)]
    assert water_fill(1, claimants, served=[10.0, 9.0]) == {"b": 1}
    assert water_fill(1, claimants, served=[9.0, 10.0]) == {"a": 1}
    # Over many single grants with one slot freeing at a time, grants follow the weights.
    served = {(SHARED, "a"): 0.0, (SHARED, "b"): 0.0}
    held = {"a": 4, "b": 1}
    grants = {"a": 0, "b": 0}
    for turn in range(400):
        finished = "a" if turn % 4 else "b"  # requests finish in proportion to what runs
        if held[finished] == 0:
            finished = "a" if finished == "b" else "b"
        held[finished] -= 1
        weights = {"a": 3.0, "b": 1.0}
        claim = [(ws, held[ws], weights[ws], None) for ws in ("a", "b")]
        (winner,) = water_fill(1, claim, served=[served[SHARED, "a"], served[SHARED, "b"]])
        held[winner] += 1
        grants[winner] += 1
        record_grant(served, SHARED, winner, 1, weights[winner])
    assert 2.7 <= grants["a"] / grants["b"] <= 3.3


def test_a_workspace_joins_level_with_the_least_served_and_leaves_when_idle() -> None:
    served: dict[tuple[str, str], float] = {}
    record_grant(served, "gpu", "a", 30, 3.0)
    record_grant(served, "gpu", "b", 2, 1.0)  # new: starts at 10 (a's), not at 0
    record_grant(served, "other", "c", 1, 1.0)  # each pool keeps its own record
    assert served == {("gpu", "a"): 10.0, ("gpu", "b"): 12.0, ("other", "c"): 1.0}
    forget_idle(served, "gpu", {"b"})
    assert served == {("gpu", "b"): 12.0, ("other", "c"): 1.0}


def lane(seq: int, workspace: str, priority: int = NORMAL, pool: str = SHARED, key: int = 0) -> Lane:
    return Lane(seq, workspace, priority, key, pool)


def test_plan_shares_by_weight_then_priority_then_equally() -> None:
    lanes = [
        lane(1, "a", LOW),
        lane(2, "a", HIGH),
        lane(3, "a", HIGH),
        lane(4, "b"),
        lane(5, "b", key=0),
        lane(5, "b", key=1),
    ]
    weights = {"a": 3.0, "b": 1.0}
    takes = plan({SHARED: 16}, lanes, Holdings(), weights.__getitem__, lambda ws: None)
    # a gets 12 (weight 3) for its two high batches only; b gets 4 over its two batches, and batch
    # 5's share is split between its two models.
    assert takes == {lanes[1]: 6, lanes[2]: 6, lanes[3]: 2, lanes[4]: 1, lanes[5]: 1}


def test_plan_fills_each_pool_from_its_own_lanes_and_caps() -> None:
    lanes = [lane(1, "a", pool="fast"), lane(1, "a", pool="slow", key=1), lane(2, "b", pool="fast")]
    held = Holdings()
    held.add("fast", "a", 1, 2)
    takes = plan({"fast": 4, "slow": 1}, lanes, held, lambda ws: 1.0, lambda ws: 3)
    # In "fast", a holds 2 of its cap of 3: it may take 1 more; b takes 3 (its cap). "slow": a's.
    assert takes == {lanes[0]: 1, lanes[2]: 3, lanes[1]: 1}


def test_a_claim_starts_its_requests_in_turn_by_weight() -> None:
    class Job:
        def __init__(self, workspace: str, n: int) -> None:
            self.workspace, self.n = workspace, n

    jobs = [Job("a", i) for i in range(6)] + [Job("b", i) for i in range(2)]
    order = interleaved(jobs, {"a": 3.0, "b": 1.0}.__getitem__)
    assert [(j.workspace, j.n) for j in order] == [
        ("a", 0), ("a", 1), ("b", 0), ("a", 2), ("a", 3), ("a", 4), ("b", 1), ("a", 5),
    ]  # fmt: skip
    assert interleaved(jobs[:3], lambda ws: 1.0) == jobs[:3]
