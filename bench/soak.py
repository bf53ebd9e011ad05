"""A soak of the shipped app (issue 15, item 9): configs/serve/digits.yaml (HAProxy ingress, two
Ingress replicas, registry polling every 10 s) on a one-node Ray of its own (2 CPUs), N minutes of
mixed traffic from 24 keep-alive clients (single-row and 64-row TF Serving REST, single-row V2, one
request in eight invalid and expected to get its 400), a new version registered every 2 minutes
(polling swaps every replica to it), the resident memory of every Serve replica, proxy and
HAProxy process summed every 10 s, p99 latency per minute. Goals: memory growth after the first
minute <= 5%, the last minute's p99 <= 1.5x the first's, no 5xx.

    flock /tmp/maas-ray.lock .venv/bin/python bench/soak.py [--minutes 10] [--swap-every 120]

Last line: RESULT minutes=.. rss_growth_pct=.. p99_first_ms=.. p99_last_ms=.. errors_5xx=..
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maas.faults import deploy_shipped_app, rss_mib, serving_processes  # noqa: E402
from maas.localcluster import LocalCluster  # noqa: E402
from maas.soak import republish, result_line, run_soak  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--swap-every", type=float, default=120, help="seconds between new versions")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between memory samples")
    parser.add_argument("--bucket", type=float, default=60, help="seconds per p99 bucket")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before memory counts")
    parser.add_argument("--clients", type=int, default=24)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="maas-soak-"))
    with LocalCluster(work, head_cpus=2) as cluster:
        import os

        os.environ.update({k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
        app = deploy_shipped_app(cluster)

        def sample() -> tuple[float, int]:
            pids = serving_processes(cluster)
            return sum(rss_mib(pid) for pid in pids), len(pids)

        print(f"[soak] app up on {app.url}; serving processes: "
              f"{sorted(set(serving_processes(cluster).values()))}", flush=True)
        figures = run_soak(app.url, args.minutes * 60, sample,
                           lambda: republish(cluster.env["MAAS_REGISTRY"]),
                           swap_every_s=args.swap_every, sample_every_s=args.sample_every,
                           bucket_s=args.bucket, warmup_s=args.warmup, clients=args.clients,
                           log=lambda line: print(line, flush=True))
    print(f"requests {figures['requests']}, failed {figures['failed']} {figures['failures_by_status']}")
    print(f"versions registered during the run: {figures['swaps']}")
    print("p99 per bucket (ms): " + ", ".join(str(p) for p in figures["p99_per_bucket_ms"]))
    print("memory (s, MiB, processes): " + ", ".join(f"{t:.0f}:{m:.0f}/{n}" for t, m, n in figures["memory"]))
    print(result_line(figures))


if __name__ == "__main__":
    main()
