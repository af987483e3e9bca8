#!/usr/bin/env bash
# Sets up a Raspberry Pi (Raspberry Pi OS / Debian bookworm, 64-bit preferred) as a gate node:
# Debian packages, a `gate` system user in the audio group, a venv under /opt/gate with
# gate[node] and a LiteRT interpreter, /etc/gate, the CPU governor and the systemd units.
#
#   sudo deploy/pi/setup-pi.sh [--no-start]
#
# Idempotent: every step checks before it acts, and files under /etc/gate that exist are never
# overwritten, so re-running after `git pull` upgrades the code and keeps the node's settings.
# Environment:
#   GATE_NODE_ID   node id and broker user, for a new /etc/gate/gate-node.env (default: hostname)
#   GATE_GOVERNOR  schedutil | ondemand | powersave | performance (default: kept, else schedutil
#                  when offered, else ondemand); see GUIDE.md "Energy"
#   GATE_PREFIX    install root (default /opt/gate)
#   GATE_PYTHON    interpreter for the venv (default /usr/bin/python3: Debian's, which the service
#                  user can always reach, unlike a pyenv or conda under someone's home)
# See deploy/pi/GUIDE.md for choosing the microphone and checking the service.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
deploy=$(dirname "$here")
src=$(dirname "$deploy")
prefix=${GATE_PREFIX:-/opt/gate}
venv=$prefix/venv
python=${GATE_PYTHON:-/usr/bin/python3}
etc=/etc/gate
start=1

for arg in "$@"; do
    case "$arg" in
        --no-start) start=0 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "setup-pi: unknown argument '$arg'" >&2; exit 2 ;;
    esac
done

say() { echo "setup-pi: $*"; }
[ "$(id -u)" -eq 0 ] || { echo "setup-pi: run as root (sudo $0)" >&2; exit 1; }
[ -f "$src/pyproject.toml" ] || { echo "setup-pi: $src is not a gate checkout" >&2; exit 1; }

# --- Debian packages: audio I/O, FLAC, the venv, and tools for checking the microphone and broker.
packages=(python3-venv libportaudio2 libsndfile1 flac alsa-utils mosquitto-clients ca-certificates)
missing=()
for pkg in "${packages[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- The service user: no login, no home; the audio group opens /dev/snd.
if ! getent passwd gate >/dev/null; then
    say "creating system user gate"
    useradd --system --user-group --home-dir /var/lib/gate --no-create-home --shell /usr/sbin/nologin gate
fi
if ! id -nG gate | tr ' ' '\n' | grep -qx audio; then
    usermod -a -G audio gate
fi

# --- The venv. ai-edge-litert has aarch64 wheels (64-bit OS); on 32-bit armv7 only tflite-runtime
# exists, and its 2.14 wheels import only with numpy < 2.
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
say "installing gate[node,wyoming] from $src"
if ! "$venv/bin/python" -m pip install -q --upgrade "${src}[node,wyoming]"; then
    say "gate[node] (ai-edge-litert) failed on $(uname -m); trying tflite-runtime"
    "$venv/bin/python" -m pip install -q --upgrade "${src}[node-tflite,wyoming]" "numpy<2"
fi
# The on-node second stage (kws.second_stage) reads the speech-embedding graphs from this wheel; without
# its dependencies (tflite-runtime would break numpy 2).
say "installing openwakeword==0.5.1 (speech-embedding graphs for kws.second_stage)"
"$venv/bin/python" -m pip install -q --no-deps "openwakeword==0.5.1"
if "$venv/bin/python" -c 'import ai_edge_litert.interpreter' 2>/dev/null; then
    say "interpreter: LiteRT (ai_edge_litert)"
elif "$venv/bin/python" -c 'import tflite_runtime.interpreter' 2>/dev/null; then
    say "interpreter: tflite_runtime"
else
    echo "setup-pi: neither ai_edge_litert nor tflite_runtime imports in $venv" >&2
    exit 1
fi
install -m 0644 "$here/GUIDE.md" "$prefix/GUIDE.md"

# --- /etc/gate: readable by the service's group only (the broker password lives here).
install -d -m 0750 -o root -g gate "$etc"
if [ ! -e "$etc/thresholds.yaml" ]; then
    say "writing $etc/thresholds.yaml (defaults)"
    tmp=$(mktemp)
    "$venv/bin/gate-node" config default > "$tmp"
    install -m 0640 -o root -g gate "$tmp" "$etc/thresholds.yaml"
    rm -f "$tmp"
fi
# As the service user: proves it can run the venv and read /etc/gate, and after an upgrade that
# the schema still accepts the file (better said now than in a restart loop).
runuser -u gate -- "$venv/bin/gate-node" config check "$etc/thresholds.yaml" >/dev/null

if [ ! -e "$etc/gate-node.env" ]; then
    node_id=${GATE_NODE_ID:-$(hostname | tr -c 'A-Za-z0-9_.\n-' '-' | cut -c1-64)}
    say "writing $etc/gate-node.env (node id $node_id)"
    umask 027
    cat > "$etc/gate-node.env" <<EOF
# GATE_SECTION__FIELD overrides for gate-node.service; they win over thresholds.yaml.
GATE_MQTT__NODE_ID=$node_id
# The broker (deploy/mosquitto): user name = node id, password from make-passwords.sh.
#GATE_MQTT__BROKER=mqtts://broker.example:8883
#GATE_MQTT__USERNAME=$node_id
#GATE_MQTT__PASSWORD_FILE=$etc/mqtt.password
#GATE_MQTT__TLS__CA_FILE=$etc/ca.crt
#GATE_LOG_LEVEL=INFO
EOF
    umask 022
    chgrp gate "$etc/gate-node.env"
fi

# --- CPU governor, applied now and at every boot by gate-governor.service.
install -m 0755 "$here/set-governor.sh" /usr/local/sbin/gate-set-governor
cpufreq=/sys/devices/system/cpu/cpufreq/policy0
if [ -n "${GATE_GOVERNOR:-}" ] || [ ! -e "$etc/governor.env" ]; then
    governor=${GATE_GOVERNOR:-ondemand}
    if [ -z "${GATE_GOVERNOR:-}" ] && grep -qw schedutil "$cpufreq/scaling_available_governors" 2>/dev/null; then
        governor=schedutil
    fi
    echo "GATE_GOVERNOR=$governor" > "$etc/governor.env"
fi

# --- systemd units.
# gate-wyoming.service (Home Assistant) is installed but not enabled: GUIDE.md section 6.
install -m 0644 "$deploy/systemd/gate-node.service" "$deploy/systemd/gate-governor.service" \
    "$deploy/systemd/gate-wyoming.service" /etc/systemd/system/
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable gate-governor.service gate-node.service
    if [ -e "$cpufreq" ]; then
        systemctl restart gate-governor.service
    else
        say "no CPU frequency scaling here; governor unit left idle"
    fi
    if [ "$start" = 1 ]; then
        systemctl restart gate-node.service
        say "gate-node started; follow it with: journalctl -u gate-node -f"
    fi
else
    # An image being built in a chroot: enabling only creates the links; the first boot starts it.
    systemctl enable gate-governor.service gate-node.service
    say "systemd is not running here; the units start at next boot"
fi
say "done. Set the broker and credentials in $etc/gate-node.env (see $prefix/GUIDE.md)"
