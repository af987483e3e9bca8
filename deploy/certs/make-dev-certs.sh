#!/usr/bin/env bash
# Development PKI for gate: a CA, a broker certificate and optional client certificates.
#
#   make-dev-certs.sh [-n NAME]... [-c CLIENT]... OUTDIR
#
#   -n NAME    extra subjectAltName of the broker (DNS name or IPv4 address); localhost and
#              127.0.0.1 are always included. Compose workers need "-n mosquitto".
#   -c CLIENT  also issue a client certificate with CN=CLIENT (mutual TLS; CN = MQTT user name)
#
# OUTDIR gets ca.crt, ca.key, server.crt, server.key and CLIENT.crt/CLIENT.key. An existing CA is
# reused, so re-running adds names or clients without invalidating what nodes already trust.
# Keys are created 0600 and never belong in git (deploy/certs/.gitignore). Production brokers
# should get their certificate from a real CA; this is for labs, CI and tests.
set -euo pipefail

usage() { echo "usage: $0 [-n NAME]... [-c CLIENT]... OUTDIR" >&2; exit 2; }

names=()
clients=()
while getopts "n:c:h" opt; do
    case "$opt" in
        n) names+=("$OPTARG") ;;
        c) clients+=("$OPTARG") ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
out=$1
days=${CERT_DAYS:-825}

mkdir -p "$out"
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# P-256: fast handshakes on a Pi Zero, and every TLS stack in use here accepts it.
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -s "$out/ca.key" ] || [ ! -s "$out/ca.crt" ]; then
    newkey "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -sha256 -days 3650 -subj "/CN=gate dev CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$out/ca.crt"
fi

# issue NAME CN EXTENSIONS: a key and a certificate signed by the CA.
issue() {
    local name=$1 cn=$2 ext=$3
    newkey "$out/$name.key"
    openssl req -new -key "$out/$name.key" -subj "/CN=$cn" -out "$work/$name.csr"
    printf '%s\n' "$ext" > "$work/$name.ext"
    openssl x509 -req -in "$work/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
        -CAcreateserial -CAserial "$work/ca.srl" -sha256 -days "$days" \
        -extfile "$work/$name.ext" -out "$out/$name.crt" 2>/dev/null
}

san="DNS:localhost,IP:127.0.0.1"
for n in "${names[@]+"${names[@]}"}"; do
    if [[ $n =~ ^[0-9]+(\.[0-9]+){3}$ ]]; then san+=",IP:$n"; else san+=",DNS:$n"; fi
done
issue server "${names[0]:-localhost}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san"

for c in "${clients[@]+"${clients[@]}"}"; do
    [[ $c =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || { echo "$0: client name '$c' is not a node id" >&2; exit 2; }
    issue "$c" "$c" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
done

chmod 0644 "$out"/*.crt
echo "certificates in $out: ca.crt server.crt (SAN $san)${clients[*]:+ clients: ${clients[*]}}"
