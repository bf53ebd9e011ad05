#!/usr/bin/env bash
# make demo: local Ray cluster (dashboard, token auth) -> training job on digits -> registry ->
# Serve app -> one real HTTP prediction. `make down` stops what this started.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
mkdir -p "$MAAS_HOME"
started=$(date +%s)
step() { printf '\n== [%4ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }

step "Ray cluster (token auth on; token in ~/.ray/auth_token)"
ray get-auth-token --generate >/dev/null
if ray_running; then
  echo "reusing the cluster started earlier (pid $(cat "$RAY_PID_FILE"))"
else
  serve_ports_free || exit 1
  # --block keeps `ray start` as the parent of every Ray process: `make down` stops exactly these
  # by sending it SIGTERM, never touching other Ray clusters on the machine. Workers run at normal
  # priority (Ray's default niceness 15 costs the training job ~10% here; docs/keras-on-ray.md).
  RAY_worker_niceness="${RAY_worker_niceness:-0}" setsid nohup ray start --head --block --port="$GCS_PORT" --num-cpus="$(nproc)" \
    --include-dashboard=true --dashboard-host="$DASHBOARD_HOST" --dashboard-port="$DASHBOARD_PORT" \
    >"$MAAS_HOME/ray.log" 2>&1 < /dev/null &
  echo $! >"$RAY_PID_FILE"
fi
# Ready when the dashboard's job API answers (what `ray job submit` needs); curl, not `ray job
# list`, whose own start-up (~1.5 s a call) made the wait coarse.
jobs_api_up() { curl -sf -o /dev/null -H "Authorization: Bearer ${RAY_AUTH_TOKEN:-$(cat ~/.ray/auth_token)}" "$DASHBOARD_URL/api/jobs/"; }
for _ in $(seq 360); do jobs_api_up && break; ray_running || break; sleep 0.25; done
jobs_api_up || { echo "Ray did not start; see $MAAS_HOME/ray.log" >&2; tail -20 "$MAAS_HOME/ray.log" >&2; exit 1; }

step "Training job: ray job submit --working-dir . -- python -m train --config configs/train/digits_mlp.yaml"
set +e  # keep going on failure long enough to show the job's log
ray job submit --working-dir . \
  --runtime-env-json "{\"env_vars\": {\"MAAS_REGISTRY\": \"$MAAS_REGISTRY\", \"MAAS_STORAGE\": \"$MAAS_STORAGE\"}}" \
  -- python -m train --config configs/train/digits_mlp.yaml 2>&1 \
  | tee "$MAAS_HOME/train-job.log" | grep --line-buffered -oE '\[train\] .*' \
  | awk '!seen[$0]++ { print; fflush() }'  # Ray echoes worker lines twice: show each once
job_status=${PIPESTATUS[0]}
set -e
if [ "$job_status" != 0 ]; then
  echo "the training job failed; its log: $MAAS_HOME/train-job.log" >&2; tail -30 "$MAAS_HOME/train-job.log" >&2; exit 1
fi

step "Serve: serve deploy configs/serve/digits.yaml"
serve deploy configs/serve/digits.yaml
ENDPOINT="http://127.0.0.1:${SERVE_PORT}/v1/models/digits_mlp"
for _ in $(seq 480); do curl -sf "$ENDPOINT" >/dev/null && break; sleep 0.25; done
curl -sf "$ENDPOINT" >/dev/null || { echo "the Serve app did not come up; see 'serve status'" >&2; serve status >&2; exit 1; }

step "Prediction over HTTP"
python scripts/demo_request.py --endpoint "$ENDPOINT" --curl-file "$MAAS_HOME/curl.txt" \
  --accuracy-file "$MAAS_HOME/accuracy.txt"
accuracy=$(cat "$MAAS_HOME/accuracy.txt")
echo
echo "took $(( $(date +%s) - started ))s"
echo "test_accuracy=$accuracy"
echo "dashboard: $DASHBOARD_URL   (token: ray get-auth-token)"
echo "endpoint:  ${ENDPOINT}:predict"
echo "stop everything: make down"
echo "try it:"
cat "$MAAS_HOME/curl.txt"
