# Start (or reuse) the Hugging Face hub emulator (tests/services/hub_server.py) on 127.0.0.1; source it (CI does).
# Exports OUTLIER_LAB_TEST_HUB_{URL,ROOT,PID} for tests/hub_service.py, which publishes test repositories into ROOT
# (the server reads it on every request). Stop it with tests/services/hub_down.sh.
_outlier_lab_hub_up() {
    local port="${OUTLIER_LAB_TEST_HUB_PORT:-8700}"
    local root="${OUTLIER_LAB_TEST_HUB_ROOT:-/tmp/outlier_lab_hub_${port}}"
    local here
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    mkdir -p "$root"
    chmod 700 "$root"
    local pid=""
    [ -f "$root/server.pid" ] && pid="$(cat "$root/server.pid" 2>/dev/null)"
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$root/port"
        # stdio redirected so an upstream `| tee` can end; the server needs the standard library only.
        "$(command -v python3 || command -v python)" "$here/hub_server.py" --root "$root" --port "$port" \
            --cdn-port "${OUTLIER_LAB_TEST_HUB_CDN_PORT:-0}" --port-file "$root/port" \
            </dev/null >"$root/server.log" 2>&1 &
        pid=$!
        echo "$pid" > "$root/server.pid"
        local tries=0
        until [ -s "$root/port" ]; do
            tries=$((tries + 1))
            if [ "$tries" -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then
                echo "hub_up: the hub emulator did not come up on 127.0.0.1:$port (see $root/server.log)" >&2
                return 1
            fi
            sleep 0.1
        done
    fi
    export OUTLIER_LAB_TEST_HUB_URL="http://127.0.0.1:$port"
    export OUTLIER_LAB_TEST_HUB_ROOT="$root"
    export OUTLIER_LAB_TEST_HUB_PID="$pid"
}
_outlier_lab_hub_up
