"""Serving under faults (issue 15, item 4): the shipped app (configs/serve/digits.yaml, two Ingress
replicas in HAProxy mode) on a real three-node cluster on this machine (a head that runs only
Serve's controller and HAProxy, two 1-CPU worker nodes; maas.localcluster), and then the same
for configs/serve/ha.yaml (one replica per node), each on a fresh cluster, under steady
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
import secrets
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
    replicas_on,
    run_fault,
    single_row_shots,
)
from maas.loadprobe import LoadProbe, summary  # noqa: E402
from maas.localcluster import local_cluster  # noqa: E402

CASES = ("replica_killed", "controller_killed", "node_killed")
CONFIGS = ("configs/serve/digits.yaml", "configs/serve/ha.yaml")


# One token for every cluster of the run: Ray's client caches the first token it reads in this process.
TOKEN = secrets.token_hex(16)


def run_cases(config: Path, cases: list[str], after: float, clients: int) -> dict[str, dict]:
    """A fresh three-node cluster, ``config`` deployed on it, every fault in turn under load."""
    import os

    results: dict[str, dict] = {}
    with local_cluster(Path(tempfile.mkdtemp(prefix="maas-chaos-")), workers=2, worker_cpus=1,
                       token=TOKEN) as cluster:
        os.environ.update({k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
        app = deploy_shipped_app(cluster, path=REPO / config)
        names = cluster.node_names()
        print(f"[chaos] {config} up on {app.url}: replicas on "
              f"{sorted(names.get(r['node_id'], '?') for r in app.replicas())}", flush=True)
        with LoadProbe(app.url, single_row_shots(), clients=clients) as probe:
            probe.wait_answered(200)
            calm = time.monotonic()
            time.sleep(5)
            results["steady"] = summary(probe.answers, calm, time.monotonic())
            print(f"[chaos] steady: {results['steady']['rps']:.0f} req/s, p99 "
                  f"{results['steady']['p99_ms']:.1f} ms", flush=True)
            need = app.min_replicas
            for case in cases:
                app.wait_replicas(need)
                if case == "replica_killed":
                    victim: dict = {}

                    def kill(victim: dict = victim) -> str:
                        victim.update(kill_replica(app))
                        return victim["replica_id"]

                    result = run_fault(probe, case, kill,
                                       lambda victim=victim: app.wait_replicas(
                                           need, gone=frozenset([victim["replica_id"]])), after)
                elif case == "controller_killed":
                    result = run_fault(probe, case, lambda: kill_controller(cluster),
                                       lambda: app.wait_replicas(need), after)
                else:
                    node = node_hosting_a_replica(app)
                    lost = replicas_on(app, node)

                    def kill_node(node: str = node, lost: frozenset = lost) -> str:
                        cluster.kill(node)
                        return f"{node} with {len(lost)} replica(s)"

                    def back(node: str = node, lost: frozenset = lost) -> float:
                        # the replacement machine joins at once (ha.yaml's one replica per node
                        # needs it); the figure is the time until the replicas run again
                        started = time.monotonic()
                        cluster.add_worker(node, num_cpus=1)
                        app.wait_replicas(need, timeout=180, gone=lost)
                        return time.monotonic() - started

                    result = run_fault(probe, case, kill_node, back, after)
                results[case] = result
                print("[chaos] " + fault_line(result), flush=True)
                if result["failure_examples"]:
                    print(f"[chaos]   e.g. {result['failure_examples']}", flush=True)
                time.sleep(3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--after", type=float, default=20.0, help="seconds measured from each fault")
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    args = parser.parse_args()
    every = {config: run_cases(Path(config), args.cases, args.after, args.clients) for config in args.configs}
    print()
    print(f"{'config':<28} {'fault':<18} {'requests':>8} {'failed':>7} {'failed %':>9} "
          f"{'longest gap s':>14} {'back s':>16} {'p99 ms':>8}")
    for config, results in every.items():
        for case in args.cases:
            r = results[case]
            print(f"{config:<28} {case:<18} {r['requests']:>8} {r['failed']:>7} {r['failed_pct']:>9.2f} "
                  f"{r['longest_gap_s']:>14.2f} {r['recovery_s']:>16.1f} {r['p99_ms']:>8.1f}")
    line = ["RESULT"]
    for config, results in every.items():
        tag = Path(config).stem
        line.append(f"{tag}_steady_rps={results['steady']['rps']:.0f}")
        for case in args.cases:
            r, short = results[case], case.split("_")[0]
            line += [f"{tag}_{short}_failed_pct={r['failed_pct']:.2f}",
                     f"{tag}_{short}_gap_s={r['longest_gap_s']:.2f}",
                     f"{tag}_{short}_back_s={r['recovery_s']:.1f}"]
    print(" ".join(line))


if __name__ == "__main__":
    main()
