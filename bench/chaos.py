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

First, case 2 of the issue: training through a node loss (an undisturbed 2-worker run, then the
same run with rank 1's whole node SIGKILLed after epoch 3 and a replacement joining 5 s later;
--no-training skips it). Per serving fault: requests in the window (the fault plus --after
seconds), failed ones (any answer but 200: 5xx, resets, refusals), the longest stretch with no
successful answer, and the seconds until the config's replica count is running again (live
processes).

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
    kill_node_of_rank,
    kill_replica,
    node_hosting_a_replica,
    progress,
    registered_epochs,
    replicas_on,
    run_fault,
    single_row_shots,
    train_job,
)
from maas.loadprobe import LoadProbe, summary  # noqa: E402
from maas.localcluster import local_cluster  # noqa: E402

CASES = ("replica_killed", "controller_killed", "node_killed")
EPOCHS = 8


def training_through_node_loss() -> dict:
    """Case 2: an undisturbed 2-worker run, then the same run (same seed) with rank 1's whole
    node SIGKILLed after epoch 3 and a replacement node joining 5 s later."""
    from maas.registry import Registry

    with local_cluster(Path(tempfile.mkdtemp(prefix="maas-chaos-train-")), workers=2, worker_cpus=1,
                       haproxy=False, token=TOKEN) as cluster:
        started = time.monotonic()
        calm = train_job(cluster, "calm", "digits_calm", EPOCHS)
        out, _ = calm.communicate(timeout=900)
        calm_s = time.monotonic() - started
        if calm.returncode != 0:
            raise SystemExit(f"the undisturbed run failed:\n{out[-3000:]}")
        started = time.monotonic()
        disturbed = train_job(cluster, "node-loss", "digits_node_loss", EPOCHS)
        killed = kill_node_of_rank(cluster, "node-loss", rank=1, epoch=3)
        time.sleep(5)
        cluster.add_worker(killed["node"], num_cpus=1)
        out, _ = disturbed.communicate(timeout=900)
        lost_s = time.monotonic() - started
        if disturbed.returncode != 0:
            raise SystemExit(f"the run through a node loss failed:\n{out[-3000:]}")
        registry = Registry(cluster.env["MAAS_REGISTRY"])
        a, b = registry.get("digits_calm"), registry.get("digits_node_loss")
        restarted = [line["epoch"] for line in progress(cluster, "node-loss", 1)
                     if line["pid"] != killed["pid"]]
        return {"killed_after_epoch": killed["epoch"],
                "resumed_at_epoch": restarted[0] if restarted else None,
                "epochs_once": registered_epochs(b) == list(range(1, EPOCHS + 1)),
                "calm_accuracy": a.metadata["metrics"]["test_accuracy"],
                "accuracy": b.metadata["metrics"]["test_accuracy"],
                "calm_s": round(calm_s, 1), "wall_s": round(lost_s, 1)}
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
    parser.add_argument("--no-training", action="store_true",
                        help="skip case 2 (training through a node loss)")
    args = parser.parse_args()
    training = None if args.no_training else training_through_node_loss()
    if training is not None:
        print(f"[chaos] training: {training}", flush=True)
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
    if training is not None:
        t = training
        print(f"\ntraining (2 workers, {EPOCHS} epochs): node of rank 1 killed after epoch "
              f"{t['killed_after_epoch']}, resumed at epoch {t['resumed_at_epoch']}, every epoch once: "
              f"{t['epochs_once']}, test accuracy "
              f"{t['accuracy']:.4f} against {t['calm_accuracy']:.4f} undisturbed, {t['wall_s']} s against "
              f"{t['calm_s']} s")
        line += [f"train_epochs_once={int(t['epochs_once'])}",
                 f"train_acc_delta={t['accuracy'] - t['calm_accuracy']:+.4f}",
                 f"train_extra_s={t['wall_s'] - t['calm_s']:.1f}"]
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
