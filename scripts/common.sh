# Shared settings for make demo / make down. Sourced, not run.
# Token authentication is on: every Ray client (ray job, serve deploy, the dashboard) must present
# the token in ~/.ray/auth_token (created on first use) or $RAY_AUTH_TOKEN.
export RAY_AUTH_MODE=token
export MAAS_HOME="${MAAS_HOME:-$PWD/.demo}"
export MAAS_REGISTRY="${MAAS_REGISTRY:-$MAAS_HOME/registry}"
export MAAS_STORAGE="${MAAS_STORAGE:-$MAAS_HOME/runs}"
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2
# Serve's HAProxy ingress: ~2x the requests/s of the default Python proxy on 2 cores
# (bench/serve_load.py); read by the Serve controller, so it must be set where Ray starts.
export RAY_SERVE_ENABLE_DIRECT_INGRESS=1 RAY_SERVE_ENABLE_HA_PROXY=1
export PATH="$PWD/.venv/bin:$PATH"
GCS_PORT="${GCS_PORT:-6380}"
DASHBOARD_HOST="${DASHBOARD_HOST:-127.0.0.1}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
SERVE_PORT=8000   # http_options.port in configs/serve/digits.yaml
DASHBOARD_URL="http://${DASHBOARD_HOST}:${DASHBOARD_PORT}"
export RAY_ADDRESS="$DASHBOARD_URL"
RAY_PID_FILE="$MAAS_HOME/ray.pid"

ray_running() { [ -s "$RAY_PID_FILE" ] && kill -0 "$(cat "$RAY_PID_FILE")" 2>/dev/null; }

# `ray start` records its GCS address for later `ray.init()` / `serve` / `ray status` calls to join;
# stopped by signal it leaves the record behind, and `ray.init()` with no address would then retry
# the dead address forever. Remove the record only when it names the demo's GCS port and nothing
# answers there any more (so another cluster's record is never touched).
RAY_ADDRESS_FILE="${RAY_TMPDIR:-${TMPDIR:-/tmp}}/ray/ray_current_cluster"
forget_demo_address() {
  local recorded
  recorded=$(cat "$RAY_ADDRESS_FILE" 2>/dev/null) || return 0
  [ "${recorded##*:}" = "$GCS_PORT" ] || return 0
  if (exec 3<>"/dev/tcp/${recorded%:*}/$GCS_PORT") 2>/dev/null; then return 0; fi
  rm -f "$RAY_ADDRESS_FILE" && echo "removed Ray's record of the stopped demo cluster ($recorded)"
}
