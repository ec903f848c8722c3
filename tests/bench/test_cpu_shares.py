"""bench.cpu_shares' bookkeeping: settings, per-round ratios, the table, CPU time read from /proc.
(The cgroup runs themselves need root and minutes: `python -m bench.cpu_shares`.)"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from bench import cpu_shares


def test_a_setting_reads_intra_inter_batch() -> None:
    setting = cpu_shares.Setting.parse("4/2/1")
    assert (setting.intra, setting.inter, setting.batch) == (4, 2, 1)
    assert setting.name == "4/2/1"
    with pytest.raises(ValueError, match="values to unpack"):
        cpu_shares.Setting.parse("4/2")


def loads(images_per_s: float, cpu_ms: float = 60.0) -> dict[str, Any]:
    run = {"images_per_s": images_per_s, "p50_ms": 10.0, "p99_ms": 20.0, "errors": 0}
    run["server_cpu_ms_per_image"] = cpu_ms
    return dict.fromkeys(cpu_shares.LOADS, run)


def test_ratios_are_taken_within_a_round_then_their_median() -> None:
    # The machine's load moves both settings of a round alike: the ratios are 2, 2 and 5, so
    # their median is 2, while the ratio of the medians (20 / 5) would say 4.
    pairs = [(10, 20), (5, 10), (4, 20)]
    records = [
        {"round": i, "scenario": "alone", "setting": name, "loads": loads(value)}
        for i, pair in enumerate(pairs)
        for name, value in zip(("1/1/1", "2/2/1"), pair, strict=True)
    ]
    rows = {row["setting"]: row for row in cpu_shares.summarize(records, reference="1/1/1")}
    assert rows["2/2/1"]["c1"]["vs_reference"] == 2.0
    assert rows["2/2/1"]["c1"]["images_per_s_median"] == 20
    assert rows["2/2/1"]["c1"]["images_per_s_min"] == 10
    table = cpu_shares.markdown(list(rows.values())).splitlines()
    assert len(table) == 4
    assert table[3].startswith("| alone | 2/2/1 | 20.0 (2.0) | 10 / 20 | 60 |")


def test_cpu_seconds_counts_every_thread_of_a_process() -> None:
    before = cpu_shares.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert cpu_shares.cpu_seconds(os.getpid()) - before >= 0.2
