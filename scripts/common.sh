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

# Serve needs the app's port and, in HAProxy mode, 9101 (HAProxy's metrics) and 8404 (its stats
# page). A Serve that was killed (SIGKILL, a crashed node) leaves its HAProxy running and holding
# them; the next Serve's HAProxy then exits at start-up and the app never answers. Say so up front.
serve_ports_free() {
  local port holder free=0
  for port in "$SERVE_PORT" 9101 8404; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      holder=$(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'users:.*' | head -1)
      echo "port $port is in use${holder:+ ($holder)}; Serve needs it (8000: the app; 9101 and 8404:" \
        "its HAProxy). An HAProxy left by a killed Serve holds 9101 and 8404: stop that process" \
        "(kill PID), or run 'make down' if a demo is still up." >&2
      free=1
    fi
  done
  return $free
}
