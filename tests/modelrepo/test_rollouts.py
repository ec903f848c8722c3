"""The rollout contract: weight rules, the client bucket, the pick, the file sync writes."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from modelrepo.rollouts import (
    BUCKETS,
    ModelRollout,
    WeightsError,
    check_split,
    client_bucket,
    parse_rollouts,
    pick,
    render_rollouts,
)
from tests.support import REPO_ROOT


def test_weights_are_integers_0_to_100_adding_up_to_100() -> None:
    assert check_split({"2": 10, "1": 90}, "m") == {1: 90, 2: 10}
    assert check_split({1: 100, 2: 0}, "m") == {1: 100, 2: 0}


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({}, "must map versions"),
        ([90, 10], "must map versions"),
        ({"1": 90, "2": 20}, "add up to 110; they must add up to 100"),
        ({"1": 0, "2": 0}, "add up to 0"),
        ({"1": -10, "2": 110}, "from 0 to 100, got -10"),
        ({"1": 90.0, "2": 10}, "from 0 to 100, got 90.0"),
        ({"1": True, "2": 99}, "got True"),
        ({"1": "90", "2": 10}, "got '90'"),
        ({"01": 90, "2": 10}, "'01' is not a version"),
        ({"0": 90, "2": 10}, "'0' is not a version"),
        ({"x": 100}, "'x' is not a version"),
        ({"1": 90, 1: 10}, "version 1 is given twice"),
    ],
)
def test_bad_weights_are_refused_with_the_rule(raw: object, says: str) -> None:
    with pytest.raises(WeightsError, match=r"^where: ") as info:
        check_split(raw, "where")
    assert says in str(info.value)


def test_the_bucket_is_sha256_of_model_and_key_not_pythons_hash() -> None:
    # Pinned values: any change of the function moves every client on every dyno.
    assert client_bucket("shapes", "client-1") == 5
    assert client_bucket("shapes", "client-2") == 39
    assert client_bucket("other", "client-1") == 85
    # The same in a process with another hash seed (Python's hash() would differ).
    code = "from modelrepo.rollouts import client_bucket as b; print(b('shapes', 'client-1'))"
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.strip() == "5"


def test_buckets_are_uniform_enough() -> None:
    counts = Counter(client_bucket("shapes", f"k{i}") for i in range(100_000))
    assert set(counts) == set(range(BUCKETS))
    # 1,000 expected per bucket, sd ~31.5: 6 sd either way.
    assert min(counts.values()) > 810, counts.most_common()[-3:]
    assert max(counts.values()) < 1190, counts.most_common(3)


def test_versions_own_consecutive_buckets_in_ascending_order() -> None:
    split = {1: 90, 2: 10}
    assert [pick(split, b) for b in range(BUCKETS)] == [1] * 90 + [2] * 10
    three = {1: 50, 2: 30, 3: 20}
    assert Counter(pick(three, b) for b in range(BUCKETS)) == {1: 50, 2: 30, 3: 20}


def test_a_weight_of_0_is_0() -> None:
    for split in ({1: 100, 2: 0}, {1: 0, 2: 100}, {1: 0, 2: 100, 3: 0}):
        picked = Counter(pick(split, b) for b in range(BUCKETS))
        assert picked == {v: 100 for v, w in split.items() if w == 100}, split
    # Nor does a version with weight 0 take over when the others are unavailable.
    assert pick({1: 100, 2: 0}, 5, exclude=frozenset({1})) is None


def test_a_growing_canary_keeps_the_clients_it_has() -> None:
    for before, after in ((10, 50), (50, 100), (1, 2)):
        old = {b for b in range(BUCKETS) if pick({1: 100 - before, 2: before}, b) == 2}
        new = {b for b in range(BUCKETS) if pick({1: 100 - after, 2: after}, b) == 2}
        assert old <= new
        assert (len(old), len(new)) == (before, after)


def test_unavailable_versions_leave_their_buckets_to_the_others_in_proportion() -> None:
    split = {1: 50, 2: 30, 3: 20}
    without_3 = Counter(pick(split, b, frozenset({3})) for b in range(BUCKETS))
    assert without_3 == {1: 63, 2: 37}  # 50:30 is 62.5:37.5 of 100 buckets
    assert {pick(split, b, frozenset({1, 2})) for b in range(BUCKETS)} == {3}
    assert pick(split, 0, frozenset({1, 2, 3})) is None


def test_the_file_round_trips_and_is_checked() -> None:
    models = {
        "shapes": ModelRollout({1: 90, 2: 10}, {"stable": {1: 0, 2: 100}}),
        "cats": ModelRollout(),
    }
    text = render_rollouts(models)
    assert parse_rollouts(text) == {"shapes": models["shapes"]}  # empty entries are left out
    bad = text.replace('"2": 10', '"2": 11')
    with pytest.raises(WeightsError, match=r"shapes\.default: the weights add up to 101"):
        parse_rollouts(bad)
    with pytest.raises(WeightsError, match="format 1"):
        parse_rollouts('{"models": {}}')
