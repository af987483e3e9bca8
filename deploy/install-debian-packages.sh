#!/usr/bin/env bash
# Installs the Debian packages listed in deploy/debian-packages.txt that are not installed yet.
# Idempotent and quiet when nothing is missing. Uses apt-get as root, sudo -n otherwise, and when
# neither is possible prints the exact command for the user and fails.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
list="$here/debian-packages.txt"

wanted=()
nonfree=()
section=main
while IFS= read -r line; do
    case "$line" in
        *"needs contrib/non-free"*) section=nonfree; continue ;;
        "#"*|"") continue ;;
    esac
    pkg="${line%%#*}"; pkg="${pkg//[[:space:]]/}"
    [ -n "$pkg" ] || continue
    wanted+=("$pkg")
    [ "$section" = nonfree ] && nonfree+=("$pkg")
done < "$list"

# python3 -m venv needs ensurepip, which Debian ships separately.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then wanted+=(python3-venv); fi

missing=()
for pkg in "${wanted[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "gate setup: these Debian packages are missing: ${missing[*]}" >&2
    echo "gate setup: install them as root:  apt-get install -y ${missing[*]}" >&2
    [ ${#nonfree[@]} -gt 0 ] && echo "gate setup: (${nonfree[*]} need contrib/non-free: run deploy/enable-debian-nonfree.sh as root first)" >&2
    exit 1
fi

need_nonfree=0
for pkg in "${missing[@]}"; do
    for nf in "${nonfree[@]:-}"; do [ "$pkg" = "$nf" ] && need_nonfree=1; done
done
if [ "$need_nonfree" = 1 ] && [ -x "$here/enable-debian-nonfree.sh" ]; then
    $SUDO "$here/enable-debian-nonfree.sh"
fi
echo "gate setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
