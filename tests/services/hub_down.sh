#!/usr/bin/env bash
# Stop the hub emulator that hub_up.sh started (CI runs every *_down.sh at exit).
root="${OUTLIER_LAB_TEST_HUB_ROOT:-/tmp/outlier_lab_hub_${OUTLIER_LAB_TEST_HUB_PORT:-8700}}"
if [ -f "$root/server.pid" ]; then
    kill -TERM "$(cat "$root/server.pid")" 2>/dev/null
    rm -f "$root/server.pid" "$root/port"
fi
true
