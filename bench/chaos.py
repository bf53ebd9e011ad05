"""Serving under faults (issue 15, item 4): the shipped app (configs/serve/digits.yaml, two Ingress
replicas in HAProxy mode) on a real three-node cluster on this machine (a head that runs only
Serve's controller and HAProxy, two 1-CPU worker nodes; maas.localcluster), under steady
single-row traffic from 24 concurrent keep-alive clients (maas.loadprobe, TF Serving REST and V2
alternating), then, one after the other:

  replica_killed     SIGKILL to one Ingress replica's process
  controller_killed  SIGKILL to the Serve controller (Ray restarts it; the data plane goes on)
  node_killed        SIGKILL to every process of a worker node that hosts a replica (raylet,
                     workers, agents), then a replacement node joins

Per fault: requests in the window (the fault plus --after seconds), failed ones (any answer but
200: 5xx, resets, refusals), the longest stretch with no successful answer, and the seconds until
the config's replica count is running again (live processes).

    flock /tmp/maas-ray.lock .venv/bin/python bench/chaos.py [--after 20] [--clients 24] [--cases ...]

Last line: RESULT replica_failed_pct=.. replica_gap_s=.. controller_failed=.. node_failed_pct=..
node_gap_s=.. ...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maas.faults import (  # noqa: E402
    deploy_shipped_app,
    fault_line,
    kill_controller,
    kill_replica,
    node_hosting_a_replica,
    run_fault,
    single_row_shots,
)
from maas.loadprobe import LoadProbe, summary  # noqa: E402
from maas.localcluster import local_cluster  # noqa: E402

CASES = ("replica_killed", "controller_killed", "node_killed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--after", type=float, default=20.0, help="seconds measured from each fault")
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="maas-chaos-"))
    results = {}
    with local_cluster(work, workers=2, worker_cpus=1) as cluster:
        import os

        os.environ.update({k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
        app = deploy_shipped_app(cluster)
        print(f"[chaos] app up on {app.url}: {len(app.replicas())} replicas; nodes "
              f"{sorted(set(cluster.node_names().values()))}", flush=True)
        with LoadProbe(app.url, single_row_shots(), clients=args.clients) as probe:
            probe.wait_answered(200)
            calm = time.monotonic()
            time.sleep(5)
            steady = summary(probe.answers, calm, time.monotonic())
            print(f"[chaos] steady: {steady['rps']:.0f} req/s, p99 {steady['p99_ms']:.1f} ms, "
                  f"failed {steady['failed']}", flush=True)
            need = app.min_replicas
            for case in args.cases:
                if case == "replica_killed":
                    result = run_fault(probe, case, lambda: kill_replica(app)["replica_id"],
                                       lambda: app.wait_replicas(need), args.after)
                elif case == "controller_killed":
                    result = run_fault(probe, case, lambda: kill_controller(cluster),
                                       lambda: app.wait_replicas(need), args.after)
                else:
                    victim = node_hosting_a_replica(app)

                    def kill_node(victim: str = victim) -> str:
                        cluster.kill(victim)
                        return victim

                    def back(victim: str = victim) -> float:
                        waited = app.wait_replicas(need, timeout=180)
                        cluster.add_worker(victim, num_cpus=1)  # the replacement machine
                        return waited

                    result = run_fault(probe, case, kill_node, back, args.after)
                results[case] = result
                print("[chaos] " + fault_line(result), flush=True)
                time.sleep(3)
    print()
    print(f"{'fault':<20} {'requests':>8} {'failed':>7} {'failed %':>9} {'longest gap s':>14} "
          f"{'replicas back s':>16} {'p99 ms':>8}")
    for case, r in results.items():
        print(f"{case:<20} {r['requests']:>8} {r['failed']:>7} {r['failed_pct']:>9.2f} "
              f"{r['longest_gap_s']:>14.2f} {r['recovery_s']:>16.1f} {r['p99_ms']:>8.1f}")
    line = ["RESULT", f"steady_rps={steady['rps']:.0f}"]
    for case, r in results.items():
        short = case.split("_")[0]
        line += [f"{short}_failed={r['failed']}", f"{short}_failed_pct={r['failed_pct']:.2f}",
                 f"{short}_gap_s={r['longest_gap_s']:.2f}", f"{short}_back_s={r['recovery_s']:.1f}"]
    print(" ".join(line))


if __name__ == "__main__":
    main()
