"""What the capture compactor, busy, takes from serving: a stand-in for a serving machine flat out
(pairs of processes passing a message back and forth over pipes, some CPU work at each end, one
pair more than cores: wake-ups and hand-offs, as a request's path through HAProxy and a replica),
measured alone and beside one busy loop lowered and placed as the compactor is:

- ``own_session``: nice 19 in a session of its own (how the compactor was started until
  session 29);
- ``compactor``: ``maas.capture_compactor.PLACEMENT`` and ``_lower_priority`` (nice 19, a process
  group of its own in the starter's session), as ``capture_compactor.start`` runs it.

Where the kernel groups tasks by session for CPU time (``sched_autogroup_enabled``), nice counts
only inside a session: a lowered process alone in its session competes as an equal. Rounds
alternate the three, side by side.

    .venv/bin/python bench/compactor_priority.py [--seconds 4] [--rounds 3] [--work-us 40]

No Ray. Last line: RESULT own_session_ratio=.. compactor_ratio=.. (the stand-in's messages a second
beside the busy loop over alone, median of the rounds; 1.0: it took nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maas.capture_compactor import PLACEMENT  # noqa: E402 - after the repository is on the path

PAIR = r"""
import os, sys, time
work_us, seconds = float(sys.argv[1]), float(sys.argv[2])
to_peer, from_us = os.pipe()
to_us, from_peer = os.pipe()

def work():
    until = time.perf_counter() + work_us / 1e6
    while time.perf_counter() < until:
        pass

if os.fork() == 0:  # the peer: answers each message after its share of work, until EOF
    os.close(from_us), os.close(to_us), sys.stdout.close()
    while os.read(to_peer, 1):
        work()
        os.write(from_peer, b"x")
    os._exit(0)
os.close(to_peer), os.close(from_peer)
end, messages = time.monotonic() + seconds, 0
while time.monotonic() < end:
    os.write(from_us, b"x")
    work()
    os.read(to_us, 1)
    messages += 1
os.close(from_us)
print(messages)
"""
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
NICE_19 = "import os\nos.nice(19)\n"
AS_COMPACTOR = (f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
                "from maas.capture_compactor import _lower_priority\n_lower_priority()\n")
BESIDE = {"alone": None, "own_session": (NICE_19, {"start_new_session": True}),
          "compactor": (AS_COMPACTOR, PLACEMENT)}


def messages_per_s(beside: tuple[str, dict] | None, seconds: float, work_us: float) -> float:
    busy = None
    if beside is not None:
        lowering, placement = beside
        busy = subprocess.Popen([sys.executable, "-c", lowering + BUSY.format(seconds=seconds + 5)],
                                **placement)
        time.sleep(1.0)  # past its imports: busy from here on
    try:
        pairs = [subprocess.Popen([sys.executable, "-c", PAIR, str(work_us), str(seconds)],
                                  stdout=subprocess.PIPE, text=True)
                 for _ in range((os.cpu_count() or 2) + 1)]
        return sum(int(pair.communicate(timeout=seconds + 60)[0]) for pair in pairs) / seconds
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-us", type=float, default=40.0, help="CPU work at each end of a message")
    args = parser.parse_args()
    grouped = Path("/proc/sys/kernel/sched_autogroup_enabled")
    print(f"{os.cpu_count()} cores; sched_autogroup_enabled="
          f"{grouped.read_text().strip() if grouped.exists() else 'absent'}")
    ratios: dict[str, list[float]] = {"own_session": [], "compactor": []}
    for number in range(args.rounds):
        order = list(BESIDE) if number % 2 == 0 else list(BESIDE)[::-1]
        rates = {name: messages_per_s(BESIDE[name], args.seconds, args.work_us) for name in order}
        for name in ratios:
            ratios[name].append(rates[name] / rates["alone"])
        print(f"round {number + 1}: alone {rates['alone']:.0f} messages/s; beside a busy loop at nice 19 "
              f"in a session of its own {ratios['own_session'][-1]:.3f}x, placed as the compactor "
              f"{ratios['compactor'][-1]:.3f}x", flush=True)
    medians = {name: statistics.median(values) for name, values in ratios.items()}
    print(f"RESULT own_session_ratio={medians['own_session']:.3f} compactor_ratio={medians['compactor']:.3f}")


if __name__ == "__main__":
    main()
