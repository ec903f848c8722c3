"""Fair shares: nobody's share is checked while a pool is half free; past that a client holds at
most an equal part of the pool less the reserve, so a newcomer always finds room."""

from __future__ import annotations

import pytest

from gateway.fairness import FairShares, Refusal, client_identity


def take_all(pool: FairShares, client: str) -> int:
    taken = 0
    while pool.try_take(client, 1) is None:
        taken += 1
    return taken


def test_a_client_alone_takes_the_pool_less_the_reserve() -> None:
    pool = FairShares("fetches", 256)
    assert take_all(pool, "a") == 192
    assert pool.try_take("b", 1) is None  # the reserve is there for a newcomer


def test_a_lone_client_below_half_the_pool_is_never_refused() -> None:
    pool = FairShares("fetches", 256)
    for _ in range(100):  # the original experiment: 100 clients behind one address
        assert pool.try_take("one-address", 1) is None


def test_once_others_hold_units_the_flooder_waits_for_its_share() -> None:
    pool = FairShares("fetches", 100)
    assert take_all(pool, "a") == 75
    assert take_all(pool, "b") == 25  # what is left; b is under its share of 37
    refusal = pool.try_take("a", 1)
    assert isinstance(refusal, Refusal)
    assert refusal.over_share
    assert refusal.held == 75
    assert refusal.share == 37
    for _ in range(40):  # a's requests finish one by one
        pool.give_back("a", 1)
    assert pool.try_take("a", 1) is None  # 35 + 1 <= share 37
    assert pool.try_take("b", 1) is None  # b still has room


def test_refusal_says_whose_fault() -> None:
    pool = FairShares("fetches", 8)
    take_all(pool, "a")
    mine = pool.try_take("a", 1)
    assert mine is not None
    assert mine.over_share
    assert "fair share" in mine.describe()
    take_all(pool, "b")
    full = pool.try_take("c", 1)
    assert full is not None
    assert not full.over_share
    assert "all 8 fetches are in use" in full.describe()


def test_holding_gives_back_on_error() -> None:
    pool = FairShares("bytes", 10)

    def fail_while_holding() -> None:
        with pool.holding("a", 4, lambda r: RuntimeError(r.describe())):
            assert pool.in_use == 4
            raise KeyError("boom")

    with pytest.raises(KeyError):
        fail_while_holding()
    assert pool.in_use == 0
    assert pool.held("a") == 0
    with (
        pytest.raises(RuntimeError, match="in use"),
        pool.holding("a", 11, lambda r: RuntimeError(r.describe())),
    ):
        pass


def test_identity_hides_the_key() -> None:
    who = client_identity("secret-key", "10.0.0.1")
    assert who.startswith("key:")
    assert "secret" not in who
    assert client_identity(None, "203.0.113.9") == "addr:203.0.113.9"
    assert client_identity("", None) == "addr:unknown"


def test_a_client_holding_nothing_may_take_more_than_an_equal_split() -> None:
    pool = FairShares("bytes", 100)
    assert pool.try_take("a", 60) is None
    assert pool.try_take("b", 30) is None  # share 37, but b held nothing: its first body fits
    refusal = pool.try_take("b", 8)  # 38 > its share of 37
    assert refusal is not None
    assert refusal.over_share


def test_a_full_pool_refuses_a_client_holding_nothing_as_full_not_over_its_share() -> None:
    pool = FairShares("bytes", 100)
    assert pool.try_take("a", 60) is None
    assert pool.try_take("b", 30) is None
    refusal = pool.try_take("c", 40)  # more than its share of 25, but c holds nothing
    assert refusal is not None
    assert not refusal.over_share  # the pool is full: only a and b can free it (503, not 429)
    assert refusal.reason == "full"
    held_some = pool.try_take("b", 20)  # b holds 30 of its share of 37: over it, and full
    assert held_some is not None
    assert held_some.over_share
