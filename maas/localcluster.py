"""A real multi-node Ray cluster on one machine: a head and worker nodes, each its own
``ray start --block`` on its own ports, so a test (or a user trying fault tolerance out) can kill
one whole node, raylet and every process on it, and add one back.

Each node is started in a session of its own (``start_new_session``): every process Ray starts for
that node (raylet, its workers, agents, a Serve HAProxy) stays in that session, so "kill the node"
is SIGKILL to exactly that session's processes, and stopping the cluster never needs a broad
``ray stop``. Token authentication is on; the registry and checkpoints live under one directory
every node reads (the "shared storage" of a real cluster).

    python -m maas.localcluster up [--workers 2] [--dir DIR]     # prints the addresses, Ctrl-C stops it

Nothing here runs at import time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from maas.errors import ClusterError

BIN = Path(sys.executable).parent
# Serve's HAProxy ingress, as `make demo` and cluster.yaml start Ray: read by the Serve controller
# and the proxies, so every node must have it.
HAPROXY_ENV = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_processes(session: int) -> list[int]:
    """Live processes whose session id is ``session`` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # after "pid (comm)": state, ppid, pgrp, session
            found.append(int(stat.parent.name))
    return found


def command_line(pid: int) -> list[str]:
    """A process's argv as /proc has it ([] when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def kill_session(session: int, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to every process of a session; returns how many were signalled."""
    count = 0
    for pid in session_processes(session):
        try:
            os.kill(pid, sig)
            count += 1
        except ProcessLookupError:
            pass
    return count


@dataclass
class Node:
    """One ``ray start --block`` process and everything it started."""

    name: str
    process: subprocess.Popen
    log: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class LocalCluster:
    """A head and worker nodes on this machine. ``start()`` brings the head up; ``add_worker``
    joins a node and waits until the cluster lists it; ``kill(name)`` SIGKILLs a node's every
    process; ``stop()`` ends all that is left. Use it as a context manager."""

    def __init__(self, work: Path, head_cpus: float = 0, haproxy: bool = True,
                 token: str | None = None, env: dict[str, str] | None = None):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.head_cpus = head_cpus
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.nodes: dict[str, Node] = {}
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token or secrets.token_hex(16),
            "MAAS_REGISTRY": str(self.work / "registry"),
            "MAAS_STORAGE": str(self.work / "runs"),
            "RAY_ADDRESS": self.address,
            "TF_USE_LEGACY_KERAS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "RAY_worker_niceness": "0",
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            **(env or {}),
        }
        if haproxy:
            # HAProxy's own metrics and stats ports (9101, 8404 by default) on free ones: this
            # cluster never collides with a demo or another Serve on the machine.
            self.env.update(HAPROXY_ENV, RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
                            RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()))

    # --- addresses -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # --- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> LocalCluster:
        command = [
            str(BIN / "ray"), "start", "--head", "--block", f"--num-cpus={self.head_cpus}",
            f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
            "--dashboard-host=127.0.0.1", "--include-dashboard=true",
            f"--ray-client-server-port={free_port()}", *self._node_ports(),
            "--resources", json.dumps({"head": 1}),
        ]
        head = self._launch("head", command)
        self._wait_for(head, lambda: self._ids_named("head"), timeout, "the head node did not come up")
        return self

    def add_worker(self, name: str, num_cpus: float = 1, timeout: float = 120) -> Node:
        """Start a worker node (custom resource ``name`` = 1, so work can be pinned to it)."""
        if name in self.nodes and self.nodes[name].alive:
            raise ClusterError(f"node {name!r} is already running")
        # A node killed a moment ago still counts as alive until the head's health checks give
        # up on it (seconds): the new node is the one carrying ``name`` under a new node id.
        before = self._ids_named(name)
        command = [
            str(BIN / "ray"), "start", "--block", f"--address={self.address}",
            f"--num-cpus={num_cpus}", *self._node_ports(), "--resources", json.dumps({name: 1}),
        ]
        node = self._launch(name, command)
        self._wait_for(node, lambda: self._ids_named(name) - before, timeout, f"node {name!r} did not join")
        return node

    def _ids_named(self, name: str) -> set[str]:
        try:
            return {node_id for node_id, named in self.node_names().items() if named == name}
        except ClusterError:  # the dashboard is briefly unreachable
            return set()

    def kill(self, name: str) -> int:
        """SIGKILL every process of node ``name`` (its raylet, workers, agents): a machine that
        dies, not one that shuts down. Returns how many processes were killed."""
        node = self.nodes[name]
        killed = kill_session(node.process.pid)
        node.process.wait(timeout=30)
        return killed

    def stop(self, grace_s: float = 0) -> None:
        """End every node, workers first. With ``grace_s`` 0 (a throw-away cluster: tests,
        benches) every process of every node is SIGKILLed at once; otherwise each node gets
        SIGTERM and ``grace_s`` to drain first. Either way whatever a node left behind in its
        session (a Serve HAProxy holding its ports) is SIGKILLed."""
        order = [n for n in self.nodes if n != "head"] + (["head"] if "head" in self.nodes else [])
        for name in order:
            node = self.nodes[name]
            if node.alive and grace_s > 0:
                node.process.send_signal(signal.SIGTERM)
                try:
                    node.process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    pass
            kill_session(node.process.pid)
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        forget_address_record(self.gcs_port)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers ---------------------------------------------------------------------------

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A ``ray`` CLI call against this cluster."""
        return subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def node_names(self) -> dict[str, str]:
        """Ray node id -> our name for every live node (from the custom resource each carries)."""
        result = self.ray("list", "nodes", "--format=json", "--detail", "--filter", "state=ALIVE",
                          f"--address={self.dashboard}", timeout=30)
        try:
            if result.returncode != 0:
                raise ValueError(result.stderr[-500:])
            listed = json.loads(result.stdout)
        except ValueError as exc:  # refused, or no answer yet while the dashboard starts
            raise ClusterError(f"could not list the cluster's nodes: {exc}") from None
        found = {}
        for node in listed:
            resources = node.get("resources_total") or {}
            for name in self.nodes:
                if resources.get(name):
                    found[node["node_id"]] = name
        return found

    def _node_ports(self) -> list[str]:
        low = free_port_block()
        return [
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--min-worker-port={low}", f"--max-worker-port={low + 199}",
        ]

    def _launch(self, name: str, command: list[str]) -> Node:
        log = self.work / f"{name}.log"
        with open(log, "a") as out:
            process = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        node = Node(name, process, log)
        self.nodes[name] = node
        return node

    def _wait_for(self, node: Node, ready, timeout: float, message: str) -> None:
        """Until ``ready()``; an error at once if the node's `ray start` exits meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.alive:
                raise ClusterError(f"{message}: `ray start` exited (see {node.log})")
            if ready():
                return
            time.sleep(1)
        raise ClusterError(f"{message} within {timeout:.0f} s (see {self.work}/*.log)")


def forget_address_record(gcs_port: int) -> None:
    """Remove Ray's record of the last `ray start` (``/tmp/ray/ray_current_cluster``) if it names
    ``gcs_port``: stopped by signal, `ray start` leaves it behind, and a later ``ray.init()``
    would follow it to nothing. Another cluster's record is never touched."""
    record = Path("/tmp/ray/ray_current_cluster")
    try:
        if record.read_text().strip().endswith(f":{gcs_port}"):
            record.unlink()
    except OSError:
        pass


_next_worker_port = [21000]


def free_port_block(size: int = 200) -> int:
    """The start of ``size`` consecutive free ports below the ephemeral range, one block per node
    (worker processes of two nodes must not race for the same port)."""
    while _next_worker_port[0] + size < 32000:
        low = _next_worker_port[0]
        _next_worker_port[0] += size
        if all(_port_free(p) for p in (low, low + size // 2, low + size - 1)):
            return low
    raise ClusterError("no free block of worker ports between 21000 and 32000")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@contextmanager
def local_cluster(work: Path, workers: int = 2, worker_cpus: float = 1, **kwargs) -> Iterator[LocalCluster]:
    """A started cluster with ``workers`` worker nodes named node1, node2, ..."""
    cluster = LocalCluster(work, **kwargs)
    try:
        cluster.start()
        for index in range(1, workers + 1):
            cluster.add_worker(f"node{index}", num_cpus=worker_cpus)
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maas.localcluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a head and worker nodes; Ctrl-C stops exactly them")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--worker-cpus", type=float, default=1)
    up.add_argument("--dir", type=Path, default=Path(".local-cluster"))
    args = parser.parse_args(argv)
    with local_cluster(args.dir.resolve(), args.workers, args.worker_cpus) as cluster:
        print(f"head at {cluster.address}, dashboard {cluster.dashboard}; nodes: "
              f"{', '.join(cluster.nodes)}; registry and checkpoints under {args.dir}/")
        print("in another shell:")
        print(f"  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={cluster.env['RAY_AUTH_TOKEN']} "
              f"RAY_ADDRESS={cluster.dashboard} MAAS_REGISTRY={cluster.env['MAAS_REGISTRY']} "
              f"MAAS_STORAGE={cluster.env['MAAS_STORAGE']}")
        print("Ctrl-C stops the cluster.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            print("stopping the cluster ...", flush=True)
            cluster.stop(grace_s=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
