"""Connecting to Ray the same way from every entry point.

Which cluster a driver joins is decided here, before ``ray.init`` sees an address, because
``ray.init`` itself never gives up on one: it retries a dead GCS for as long as you let it
("Failed to connect to GCS at address ..."). The worst case is Ray's own record of the last
``ray start`` (``/tmp/ray/ray_current_cluster``), which a cluster stopped by signal leaves behind;
``ray.init()`` with no address follows it to nothing. So every candidate address is first checked
with a short TCP connect to its GCS port, and ``ray.init`` only ever gets a live ``host:port`` or
``"local"`` (start a fresh instance).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from maas.errors import ClusterError

# Workers must bind tf.keras to tf_keras before anything imports TensorFlow; Ray sets this
# itself inside workers, but too late. Shipping it in the runtime env makes it reach every process.
# RAY_TRAIN_ENABLE_PRINT_PATCH=0: Ray Train's workers otherwise route print() through the root
# logger and also print it (their stdout is redirected), so every worker line (`[train] epoch ...`)
# reached a local driver twice; without the patch a print goes to the worker's stdout once.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}

# Ray starts workers at niceness 15 so that its own daemons win the CPU; on a machine a local
# instance shares with nothing but the user's job that makes the training worker lose to Ray's
# background processes (measured: ~10% of a 2-core MLP run, docs/keras-on-ray.md). An instance we
# start ourselves runs its workers at the driver's priority unless RAY_worker_niceness says otherwise.
LOCAL_WORKER_NICENESS = "0"

# A local GCS that is down refuses at once; this bound only matters for hosts that drop packets.
CONNECT_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Target:
    """What ``ray.init`` gets: a live ``host:port`` (or ``ray://host:port``), or ``"local"``."""

    address: str
    found_here: bool = False   # found on this machine (Ray's record, a running GCS), not named
    note: str | None = None    # why, when it is not the obvious choice (printed to stderr)


def choose_target(address: str | None, env_address: str | None, record: str | None,
                  answers: Callable[[str], bool],
                  running: Callable[[], Sequence[str]] = tuple,
                  is_local_host: Callable[[str], bool] | None = None) -> Target:
    """Decide which cluster to join; pure, so every case is unit-tested without Ray.

    ``address`` is the ``--address`` argument, ``env_address`` $RAY_ADDRESS, ``record`` Ray's
    record of the last ``ray start``; ``answers(host_port)`` says whether a GCS port accepts a
    TCP connection and ``running()`` lists the GCS addresses of Ray processes on this machine.
    Precedence is Ray's: an argument wins, $RAY_ADDRESS replaces a missing or ``auto`` one.
    ``None`` means "the live recorded cluster, else a new local one"; ``auto`` means "a live
    cluster on this machine, else an error"; ``local`` always starts a new instance.
    """
    is_local_host = is_local_host or _is_local_host
    chosen, source = address, "--address"
    if address in (None, "auto") and env_address:
        chosen, source = env_address, "RAY_ADDRESS"
    if chosen == "local":
        return Target("local")
    if chosen is None:
        if record and answers(record):
            return Target(record, found_here=True)
        note = (f"Ray's record of the last `ray start` names {record}, which does not answer "
                "(a stopped cluster); starting a local Ray instance") if record else None
        return Target("local", note=note)
    if chosen == "auto":
        return _live_here(record, answers, running, "no running Ray cluster found on this machine "
                          "(address 'auto'); start one (`ray start --head`) or pass --address host:port")
    if chosen.startswith(("http://", "https://")):
        return _through_dashboard(chosen, source, record, answers, running, is_local_host)
    if not answers(chosen):
        hint = "" if address == "auto" else f" Without {source}, a local Ray instance is used."
        raise ClusterError(f"no Ray cluster answers at {chosen} (from {source}): nothing accepts "
                           f"connections on that GCS port. Is the cluster running?{hint}")
    return Target(chosen)


def _live_here(record: str | None, answers: Callable[[str], bool],
               running: Callable[[], Sequence[str]], missing: str) -> Target:
    """The recorded cluster if it answers, else the only live GCS running on this machine."""
    if record and answers(record):
        return Target(record, found_here=True)
    live = sorted({a for a in running() if a != record and answers(a)})
    if len(live) == 1:
        return Target(live[0], found_here=True)
    if live:
        raise ClusterError(f"{missing}: several Ray clusters run here ({', '.join(live)}), "
                           "pass --address host:port to pick one")
    raise ClusterError(missing + (f" ({record}, Ray's record of the last `ray start`, does not "
                                  "answer)" if record else ""))


def _through_dashboard(url: str, source: str, record: str | None, answers: Callable[[str], bool],
                       running: Callable[[], Sequence[str]],
                       is_local_host: Callable[[str], bool]) -> Target:
    """An http(s) address names a dashboard (what `ray job submit` uses), which a driver cannot
    join through. Inside a Ray job Ray replaces it with the GCS address, so this is a driver
    started by hand next to a `ray job` setting: join the cluster behind that dashboard when it
    runs on this machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not answers(_host_port(host, port)):
        raise ClusterError(f"the Ray dashboard at {url} (from {source}) does not answer; is the "
                           "cluster running?")
    if not is_local_host(host):
        raise ClusterError(f"{source}={url} is a dashboard URL (what `ray job submit` uses); a "
                           "driver needs the cluster's GCS address: pass --address <head>:6379, "
                           "or run the command on the cluster with `ray job submit`")
    return _live_here(record, answers, running, f"the Ray dashboard at {url} (from {source}) "
                      "answers but no Ray cluster answers on this machine; pass --address host:port")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``ray://host:port`` -> (host, port)."""
    if "://" in address:
        address = address.split("://", 1)[1]
    host, _, port = address.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"'{address}' is not a Ray address (expected host:port, e.g. 127.0.0.1:6379)")
    return host.strip("[]"), int(port)


def answers(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether something accepts a TCP connection at ``address`` (a GCS port, a dashboard)."""
    try:
        host, port = split_address(address)
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except (OSError, ClusterError):
        return False


def _is_local_host(host: str) -> bool:
    if host in ("localhost", "0.0.0.0", "::", ""):
        return True
    try:
        ip = socket.gethostbyname(host)
        if ipaddress.ip_address(ip).is_loopback:
            return True
        return ip in {socket.gethostbyname(socket.gethostname()), _outbound_ip()}
    except OSError:
        return False


def _outbound_ip() -> str:
    """This machine's address on its default route (no packet is sent for a UDP connect)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
            return sock.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _recorded_address(temp_dir: str | None) -> str | None:
    from ray._private.utils import read_ray_address

    try:
        return read_ray_address(temp_dir) or None
    except OSError:
        return None


def _running_gcs() -> Sequence[str]:
    from ray._private.services import find_gcs_addresses

    try:
        return list(find_gcs_addresses())
    except Exception:  # a process listing that fails is the same as finding none
        return []


def _enable_token_auth_like_ray() -> None:
    """``ray.init()`` turns token auth on for a cluster it finds itself when a token exists and
    RAY_AUTH_MODE is unset (``make demo``'s cluster from a new shell); we pass the address we
    found explicitly, which skips that, so do what it would have done."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """Join ``address`` (or $RAY_ADDRESS, or the live recorded cluster, or start a local
    instance) with our worker env; raises ``ClusterError`` at once when a named cluster is down."""
    import ray

    if ray.is_initialized():
        return
    target = choose_target(address, os.environ.get("RAY_ADDRESS"),
                           _recorded_address(kwargs.get("_temp_dir")), answers, _running_gcs)
    if target.note:
        print(f"[ray] {target.note}", file=sys.stderr, flush=True)
    if target.found_here:
        _enable_token_auth_like_ray()
    if target.address == "local":
        os.environ.setdefault("RAY_worker_niceness", LOCAL_WORKER_NICENESS)
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    runtime_env = kwargs.pop("runtime_env", None) or {}
    env_vars = {**WORKER_ENV, **runtime_env.get("env_vars", {})}
    kwargs.setdefault("log_to_driver", True)
    ray.init(address=target.address, runtime_env={**runtime_env, "env_vars": env_vars}, **kwargs)
