# Stop the test sshd that sshd_up.sh started (CI runs every *_down.sh at exit); open sessions end with it.
dir="${OUTLIER_LAB_TEST_SSH_DIR:-/tmp/outlier_lab_sshd_${OUTLIER_LAB_TEST_SSH_PORT:-2222}}"
if [ -f "$dir/sshd.pid" ]; then
    pid="$(cat "$dir/sshd.pid")"
    # Per-connection sshd children outlive the listener, so end them first.
    pkill -TERM -P "$pid" 2>/dev/null
    kill -TERM "$pid" 2>/dev/null
    rm -f "$dir/sshd.pid"
fi
true
