"""The retrain lock: one holder at a time, in a real S3 endpoint and on a local disk; expiry frees it."""

from __future__ import annotations

import threading

import pytest

from pipelines.lock import BucketLock, LockHeld


def _race(uri: str, n: int = 8) -> list[str]:
    """n contenders start together; returns the outcome of each."""
    barrier = threading.Barrier(n)
    outcomes: list[str] = []

    def contend(i: int) -> None:
        lock = BucketLock(uri, ttl_s=60, owner=f"run-{i}")
        barrier.wait()
        try:
            lock.acquire()
            outcomes.append("won")
        except LockHeld:
            outcomes.append("held")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


@pytest.mark.integration
def test_s3_lock_has_exactly_one_winner_and_expires(s3_env):
    s3_env.create_bucket("locks")
    outcomes = _race("s3://locks/retrain.lock")
    assert outcomes.count("won") == 1 and outcomes.count("held") == 7
    with pytest.raises(LockHeld, match="held by run-"):
        BucketLock("s3://locks/retrain.lock", owner="late").acquire()

    stale = BucketLock("s3://locks/stale.lock", ttl_s=-1, owner="crashed").acquire()  # already expired
    with BucketLock("s3://locks/stale.lock", owner="next") as fresh:
        assert fresh.owner == "next"
        stale.release()  # the crashed holder's late release must not free the new holder's lock
        with pytest.raises(LockHeld, match="held by next"):
            BucketLock("s3://locks/stale.lock").acquire()
    BucketLock("s3://locks/stale.lock").acquire().release()  # released by its holder: free again


def test_local_lock(tmp_path):
    for k in range(5):  # every contender either wins or is told who holds it: none reads a half-written lock
        outcomes = _race(str(tmp_path / f"retrain-{k}.lock"))
        assert outcomes.count("won") == 1 and outcomes.count("held") == 7, outcomes
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"retrain-{k}.lock" for k in range(5)]  # no temp left
    BucketLock(str(tmp_path / "x.lock"), ttl_s=-1).acquire()
    BucketLock(str(tmp_path / "x.lock")).acquire()  # expired lock is taken over


@pytest.mark.parametrize("content", ["", "garbage", '{"owner": "x"}', "[]"])
def test_something_else_at_the_lock_path_is_refused_by_name_and_kept(tmp_path, content):
    path = tmp_path / "retrain.lock"
    path.write_text(content)
    with pytest.raises(LockHeld, match=r"retrain.lock: not a lock this pipeline wrote .*delete it if"):
        BucketLock(str(path)).acquire()
    BucketLock(str(path)).release()  # not ours: left alone
    assert path.read_text() == content
