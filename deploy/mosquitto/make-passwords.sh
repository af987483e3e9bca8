#!/usr/bin/env bash
# Broker accounts for gate: one per node (user name = node id) and one for the cloud workers.
#
#   make-passwords.sh [-u CLOUD_USER] OUTDIR NODE_ID...
#
# OUTDIR/secrets/<user>.password  the plain password, 0600: copy it to that node as
#                                  /etc/gate/mqtt.password (mqtt.password_file)
# OUTDIR/gate.passwd               the broker's hashed password file (/etc/mosquitto/gate.passwd)
#
# A user's existing secret is kept, so adding a node never rotates the others; delete a secret
# and re-run to rotate it. gate.passwd is rebuilt from the secrets each run, so removing a node is
# deleting its secret. Passwords reach mosquitto_passwd through a file (-U), never argv, where
# any local user could read them in ps.
set -euo pipefail

usage() { echo "usage: $0 [-u CLOUD_USER] OUTDIR NODE_ID..." >&2; exit 2; }

cloud=cloud
while getopts "u:h" opt; do
    case "$opt" in
        u) cloud=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
out=$1
shift

# Same rule as a node id (gate_core/wire.py): no '/', '+' or '#', which would widen a %u ACL pattern.
for user in "$cloud" "$@"; do
    [[ $user =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || { echo "$0: '$user' is not a valid node id" >&2; exit 2; }
done
for node in "$@"; do
    # The ACL's pattern rules apply to the cloud user too; a node of that name would share them.
    [ "$node" != "$cloud" ] || { echo "$0: a node cannot be named '$cloud' (the cloud user)" >&2; exit 2; }
done

umask 077
mkdir -p "$out/secrets"
for user in "$cloud" "$@"; do
    secret="$out/secrets/$user.password"
    if [ ! -s "$secret" ]; then
        # 24 random bytes, base64 without '/' '+' '=' so the file is safe to paste anywhere.
        head -c 24 /dev/urandom | base64 | tr -d '\n/+=' > "$secret"
    fi
done

plain=$(mktemp "$out/.gate.passwd.XXXXXX")
trap 'rm -f "$plain"' EXIT
for secret in "$out"/secrets/*.password; do
    user=$(basename "$secret" .password)
    printf '%s:%s\n' "$user" "$(cat "$secret")" >> "$plain"
done
mosquitto_passwd -U "$plain"
chmod 0640 "$plain"
mv "$plain" "$out/gate.passwd"
trap - EXIT
echo "$out/gate.passwd: $(wc -l < "$out/gate.passwd") users; secrets in $out/secrets/"
