#!/usr/bin/env bash
# make down: stop the Serve app and the Ray cluster that `make demo` started (only that one).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
if ! ray_running; then
  echo "no demo cluster running (nothing in $RAY_PID_FILE)"; rm -f "$RAY_PID_FILE"
  forget_demo_address; exit 0
fi
serve shutdown -y >/dev/null 2>&1 || true
pid=$(cat "$RAY_PID_FILE")
kill -TERM "$pid"   # `ray start --block` drains and stops every process it started
for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
rm -f "$RAY_PID_FILE"
forget_demo_address
echo "stopped the demo Ray cluster (pid $pid); models stay in $MAAS_REGISTRY"
