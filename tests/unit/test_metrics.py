"""Metrics across worker processes: policy blocks survive the published form and add up."""

from __future__ import annotations

from proxy.metrics import RECENT_BLOCKS, Metrics, PolicyBlock, Totals


def test_policy_blocks_are_counted_by_rule_newest_first() -> None:
    metrics = Metrics()
    metrics.policy_blocked("min_age", "a-1.0.tar.gz")
    metrics.policy_blocked("min_age", "a-2.0.tar.gz")
    metrics.policy_blocked("protected", "acme-tools")
    own = metrics.own()
    assert own.policy_blocks == {"min_age": 2, "protected": 1}
    assert [b.what for b in own.recent_blocks] == ["acme-tools", "a-2.0.tar.gz", "a-1.0.tar.gz"]


def test_policy_blocks_of_every_worker_add_up_and_the_latest_are_kept() -> None:
    one = Totals(policy_blocks={"min_age": 1}, recent_blocks=[PolicyBlock(1.0, "min_age", "old")])
    two = Totals(
        policy_blocks={"protected": RECENT_BLOCKS},
        recent_blocks=[
            PolicyBlock(2.0 + n, "protected", f"name-{n}") for n in reversed(range(RECENT_BLOCKS))
        ],
    )
    totals = Totals()
    for worker in (one, two):
        totals.add(Totals.from_json(worker.to_json()))
    assert totals.policy_blocks == {"min_age": 1, "protected": RECENT_BLOCKS}
    assert [b.what for b in totals.recent_blocks] == [
        f"name-{n}" for n in reversed(range(RECENT_BLOCKS))
    ]
