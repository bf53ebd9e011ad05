"""Where a serving replica spends its time under load: py-spy samples the Serve replica that hosts
the model (configs/serve/digits.yaml, HAProxy ingress, as bench/serve_load.py starts it) while wrk
loads it, for each variant asked: the shipped config (`plain`), audit at 100% (`audit`), capture
at 100% (`capture`). Prints each variant's requests/s, the replica's CPU per request, and the share
of the replica's samples that ran in our audit, capture and caller code.

    flock /tmp/maas-ray.lock .venv/bin/python bench/profile_replica.py [plain audit capture]
        [--rows 1|64] [--seconds 12] [--rate 400] [--gil] [--keep DIR]

py-spy comes with Ray's dashboard dependencies; it attaches with ptrace (root, or
kernel.yama.ptrace_scope=0). `--keep DIR` writes each variant's collapsed stacks there (the input of
flamegraph.pl or speedscope). One run: sampling shares are noisy at a few thousand samples.

Last line: RESULT rows=.. <variant>_rps=.. <variant>_replica_us=.. <variant>_audit_share=..
<variant>_capture_share=.. per variant.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import serve_load  # noqa: E402 - a sibling script, importable once its folder is on the path

from maas.localcluster import command_line, session_processes  # noqa: E402

EDITS = {"plain": None, "audit": serve_load.audit_everything, "capture": serve_load.capture_everything}
# Each kind of our own work: a frame of one of these functions, or of code in one of these files.
KINDS = {
    "audit": (("Dataplane._audit", "Dataplane._write_audit"), ("maas/audit.py",)),
    "capture": ((), ("maas/serving/capture.py", "maas/capture.py", "maas/capture_spool.py")),
    "caller": (("Dataplane._caller",), ()),
}


def replica_pid(server: subprocess.Popen) -> int:
    for pid in session_processes(server.pid):
        command = " ".join(command_line(pid))
        if "ServeReplica" in command and "Ingress" in command:
            return pid
    raise RuntimeError("no Ingress replica among the server's processes")


def shares(collapsed: str) -> tuple[int, dict[str, float]]:
    """(samples, the share of samples with a frame of each kind on the stack)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        samples, frames = int(number), stack.split(";")
        total += samples
        for kind, (functions, files) in KINDS.items():
            if any(f.split(" (")[0] in functions or any(name in f for name in files) for f in frames):
                counts[kind] += samples
    return total, {kind: counts[kind] / max(total, 1) for kind in KINDS}


def profile(variant: str, root: str, work: Path, body: str, seconds: int, rate: int,
            native: bool = False, gil: bool = False) -> dict[str, float]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    port = serve_load.free_port()
    server = serve_load.start_ours(root, port, work, True, 0, EDITS[variant])
    url = f"http://127.0.0.1:{port}/v1/models/digits_mlp:predict"
    try:
        serve_load.wait_ready(url, body)
        serve_load.run_wrk(url, body, 3, work)  # warm-up
        out = work / f"{variant}.txt"
        sampler = subprocess.Popen([spy, "record", "--pid", str(replica_pid(server)), "--duration",
                                    str(max(1, seconds - 2)), "--rate", str(rate), "--format", "raw",
                                    *(["--native"] if native else ["--nonblocking"]),
                                    *(["--gil"] if gil else []), "-o", str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        load = serve_load.run_wrk(url, body, seconds, work, server.pid)
        _, error = sampler.communicate(timeout=60)
        if sampler.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed: {error.strip()[-500:]}")
    finally:
        serve_load.stop(server)
    total, found = shares(out.read_text())
    print(f"{variant}: {load['rps']:.0f} req/s, replica {load['us_replica']:.0f} us CPU a request, "
          f"{total} samples: " + ", ".join(f"{k} {v:.1%}" for k, v in found.items()), flush=True)
    return {"rps": load["rps"], "replica_us": load["us_replica"], "samples": total, "stacks": out,
            **{f"{k}_share": v for k, v in found.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="*", default=["plain", "audit", "capture"], choices=list(EDITS))
    parser.add_argument("--rows", type=int, choices=(1, 64), default=1, help="rows a request")
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--rate", type=int, default=400, help="py-spy samples a second")
    parser.add_argument("--native", action="store_true",
                        help="C frames too (the garbage collector, the allocator); pauses the replica at "
                             "each sample, so its requests/s read low: compare shares, not speed")
    parser.add_argument("--gil", action="store_true",
                        help="only samples of the thread holding the GIL: a frame's time waiting for it "
                             "(another thread holds it) drops out")
    parser.add_argument("--keep", type=Path, help="a folder for each variant's collapsed stacks")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    body = serve_load.request_bodies()["one" if args.rows == 1 else "many"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = f"{tmp}/registry"
        serve_load.publish_model(root)
        for variant in args.variants:
            results[variant] = profile(variant, root, work, body, args.seconds, args.rate, args.native,
                                       args.gil)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(results[variant]["stacks"], args.keep / f"{variant}-{args.rows}row.txt")
    line = f"RESULT rows={args.rows}"
    for variant, r in results.items():
        line += (f" {variant}_rps={r['rps']:.0f} {variant}_replica_us={r['replica_us']:.0f}"
                 f" {variant}_audit_share={r['audit_share']:.3f}"
                 f" {variant}_capture_share={r['capture_share']:.3f}")
    print(line)


if __name__ == "__main__":
    main()
