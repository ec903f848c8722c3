"""`make bench`: every benchmark in one run, then the summary table and the plot.

Runs bench.serving_bench (raw signature vs gRPC Predict on the local server, with and without
batching) and bench.gateway_bench (gateway overhead and RSS under siege), then bench.report.
"""

from __future__ import annotations

import sys

from bench import gateway_bench, report, serving_bench


def main() -> int:
    for step in (serving_bench.main, gateway_bench.main):
        code = step([])
        if code:
            return code
    return report.main([])


if __name__ == "__main__":
    sys.exit(main())
