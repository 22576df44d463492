# Start a real OpenSSH server on 127.0.0.1 for the Fabric launcher tests; source it (CI does) or run it.
# Idempotent: a server already answering on the port is reused. Exports OUTLIER_LAB_TEST_SSH_{HOST,PORT,USER,KEY,
# KNOWN_HOSTS,DIR,PID} for tests/support/ssh_server.py. Facts behind the steps, measured on the CI machine kind (Debian
# 12, root, no systemd): the privilege-separation dir /run/sshd must exist without systemd; StrictModes no, or keys
# under /tmp are refused; sshd is ready (in about 0.2 s) when ssh-keyscan returns a key, which is also the
# known_hosts line; stopping the listener's PID leaves open sessions' per-connection sshd children running.
_outlier_lab_sshd_up() {
    local port="${OUTLIER_LAB_TEST_SSH_PORT:-2222}"
    local dir="${OUTLIER_LAB_TEST_SSH_DIR:-/tmp/outlier_lab_sshd_${port}}"
    if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ] || ! command -v rsync >/dev/null 2>&1; then
        # policy-rc.d stops the package's postinst from starting a system sshd on port 22.
        local made_policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
        fi
        # Another service script may hold the dpkg lock at the same moment: wait for it instead of failing.
        apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
            openssh-server openssh-client rsync >/dev/null 2>&1 || { echo "sshd_up: apt-get install failed" >&2; return 1; }
        [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    fi
    mkdir -p /run/sshd "$dir"
    chmod 700 "$dir"
    [ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/host_ed25519"
    [ -f "$dir/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/client_ed25519"
    cp "$dir/client_ed25519.pub" "$dir/authorized_keys"
    # With UsePAM no, a locked account ('!' password field) is refused; '*' unlocks it without a password.
    if grep -q "^$(id -un):!" /etc/shadow 2>/dev/null; then usermod -p '*' "$(id -un)"; fi
    cat > "$dir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
MaxStartups 100:30:200
MaxSessions 50
ClientAliveInterval 0
CONF
    local pid=""
    [ -f "$dir/sshd.pid" ] && pid="$(cat "$dir/sshd.pid" 2>/dev/null)"
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null || ! ssh-keyscan -T 2 -p "$port" -t ed25519 127.0.0.1 >/dev/null 2>&1; then
        # Absolute paths because sshd re-execs itself; stdio redirected so an upstream `| tee` can end.
        "$(command -v sshd || echo /usr/sbin/sshd)" -D -f "$dir/sshd_config" -E "$dir/sshd.log" </dev/null >/dev/null 2>&1 &
        pid=$!
        echo "$pid" > "$dir/sshd.pid"
        local tries=0
        until ssh-keyscan -T 2 -p "$port" -t ed25519 127.0.0.1 > "$dir/known_hosts" 2>/dev/null && [ -s "$dir/known_hosts" ]; do
            tries=$((tries + 1))
            if [ "$tries" -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then
                echo "sshd_up: sshd did not come up on 127.0.0.1:$port (see $dir/sshd.log)" >&2; return 1
            fi
            sleep 0.1
        done
    else
        ssh-keyscan -T 2 -p "$port" -t ed25519 127.0.0.1 > "$dir/known_hosts" 2>/dev/null
    fi
    export OUTLIER_LAB_TEST_SSH_HOST=127.0.0.1
    export OUTLIER_LAB_TEST_SSH_PORT="$port"
    export OUTLIER_LAB_TEST_SSH_USER="$(id -un)"
    export OUTLIER_LAB_TEST_SSH_KEY="$dir/client_ed25519"
    export OUTLIER_LAB_TEST_SSH_KNOWN_HOSTS="$dir/known_hosts"
    export OUTLIER_LAB_TEST_SSH_DIR="$dir"
    export OUTLIER_LAB_TEST_SSH_PID="$pid"
}
_outlier_lab_sshd_up
