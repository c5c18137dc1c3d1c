"""The soak's attribution of ``unknown`` rows (tests/e2e/soak_audit.py): each recovered claim goes
to the first fault after it was made, so a node killed again before its previous crash was
recovered is not charged twice, which the soak's old per-kill measure did."""

from __future__ import annotations

from tests.e2e import procs
from tests.e2e.soak_audit import Recovery, UnknownAccount, attribute, latest_per_claim
from tests.e2e.soak_cluster import Faults, Kill

STEP = 400  # concurrency 8 x batch 50


def _recovery(shard: int, rows: int, at: float, owner: str = "node-0", suppressed: int = 0) -> Recovery:
    return Recovery(
        claim=(1, shard, 1),
        owner=owner,
        after=0,
        upto=0,
        logged_unknown=rows,
        at=at,
        rows=rows,
        suppressed=suppressed,
    )


def _account(recoveries: list[Recovery], faults: Faults, without_line: int = 0) -> UnknownAccount:
    return UnknownAccount(
        step=STEP,
        max_shards=4,
        recoveries=recoveries,
        kills=faults.kills,
        without_line=without_line,
        uncertain_rows=sum(r.rows for r in recoveries),
        uncertain_calls=0,
    )


def test_a_node_killed_again_before_its_crash_was_recovered_is_charged_once() -> None:
    claims = [(1, 0, 1), (1, 1, 1)]
    faults = Faults(
        kills=[
            Kill(at=20.0, node="node-0", naive=1400, naive_claims=claims),
            # Restarted, killed again before anyone recovered the first crash's shards: the old
            # measure counted them again.
            Kill(at=25.0, node="node-0", naive=1400, naive_claims=claims),
        ]
    )
    recoveries = [_recovery(0, 700, at=30.0, owner="node-0"), _recovery(1, 700, at=30.0, owner="node-0")]
    claimed = {(1, 0, 1): 10.0, (1, 1, 1): 11.0}
    assert attribute(recoveries, claimed, faults) == 0
    account = _account(recoveries, faults)
    assert account.per_kill() == [1400, 0]
    figures = account.figures()
    assert figures["unknown_attributed"] == 1400
    assert figures["naive_sum"] == 2800
    # Both naive figures exceed the old formula (400 + 2 x 400); the second counted the first's claims.
    assert figures["naive_kills_over_old_formula"] == 2
    assert figures["naive_over_old_formula_counting_another_faults_claims"] == 1
    assert all(account.checks().values()), figures


def test_a_postgres_restart_before_the_kill_owns_the_claim_it_ended() -> None:
    faults = Faults(kills=[Kill(at=20.0, node="node-0", naive=0, naive_claims=[])], pg_restarts=[15.0])
    recoveries = [_recovery(0, 300, at=16.0, owner="node-0")]
    attribute(recoveries, {(1, 0, 1): 10.0}, faults)
    assert recoveries[0].cause == "pg:0"
    assert _account(recoveries, faults).per_kill() == [0]


def test_a_claim_over_two_steps_fails_unless_its_extra_leads_were_suppressed() -> None:
    faults = Faults(kills=[Kill(at=20.0, node="node-0", naive=0, naive_claims=[])])
    over = [_recovery(0, 2 * STEP + 1, at=30.0)]
    attribute(over, {(1, 0, 1): 10.0}, faults)
    assert _account(over, faults).figures()["claims_over_bound"] == 1
    suppressed = [_recovery(0, 2 * STEP + 1, at=30.0, suppressed=1)]
    attribute(suppressed, {(1, 0, 1): 10.0}, faults)
    assert all(_account(suppressed, faults).checks().values())


def test_rows_that_no_fault_explains_fail_the_check() -> None:
    faults = Faults()
    recoveries = [_recovery(0, 10, at=30.0)]
    attribute(recoveries, {(1, 0, 1): 10.0}, faults)
    assert recoveries[0].cause == "none"
    assert not _account(recoveries, faults).checks()["every unknown row attributed to one fault"]


def test_the_documented_bound_is_two_steps_per_shard_held() -> None:
    options = procs.DaemonOptions(concurrency=8, batch_size=50, max_shards_per_node=4)
    assert options.in_flight_bound(1) == 800
    assert options.in_flight_bound(9) == 3200


def test_a_recovery_that_did_not_commit_is_counted_once() -> None:
    """Its line was written before the claim's commit; the next claim recovers the same claim
    (the epoch rolled back too) and logs the same rows: only the last line counts."""
    first = _recovery(0, 750, at=30.0)
    again = _recovery(0, 750, at=31.0, owner="node-0")
    assert latest_per_claim([again, first]) == [again]
