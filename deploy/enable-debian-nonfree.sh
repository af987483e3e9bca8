#!/bin/sh
# Enable Debian's contrib and non-free components for bookworm (deb822 sources), then refresh.
# The mbrola voices and pico2wave (libttspico-utils) used for synthetic training speech live there.
# Idempotent: a stanza that already lists both components is left untouched, so running this
# twice changes nothing. apt-get update runs when the file changed, when no non-free package
# list has been fetched yet (components enabled by hand, never updated), or with NONFREE_UPDATE=1.
set -eu

SOURCES=${DEBIAN_SOURCES:-/etc/apt/sources.list.d/debian.sources}

if [ ! -f "$SOURCES" ]; then
    echo "enable-debian-nonfree: $SOURCES not found (expected a deb822 Debian sources file)" >&2
    exit 1
fi

tmp=$(mktemp "${SOURCES}.XXXXXX")
trap 'rm -f "$tmp"' EXIT

# Only stanzas whose Suites name bookworm are touched; each "Components:" line there gets
# whichever of contrib / non-free it lacks appended, keeping everything it already had.
awk '
function flush_stanza(   i, n) {
    for (i = 1; i <= nlines; i++) {
        line = lines[i]
        if (bookworm && line ~ /^Components:/) {
            n = split(line, words, /[ \t]+/)
            has_contrib = 0; has_nonfree = 0
            for (w = 2; w <= n; w++) {
                if (words[w] == "contrib") has_contrib = 1
                if (words[w] == "non-free") has_nonfree = 1
            }
            if (!has_contrib) line = line " contrib"
            if (!has_nonfree) line = line " non-free"
        }
        print line
    }
    nlines = 0; bookworm = 0
}
/^[ \t]*$/ { flush_stanza(); print; next }
{
    lines[++nlines] = $0
    if ($0 ~ /^Suites:/ && $0 ~ /bookworm/) bookworm = 1
}
END { flush_stanza() }
' "$SOURCES" > "$tmp"

if cmp -s "$tmp" "$SOURCES"; then
    echo "enable-debian-nonfree: contrib and non-free already enabled in $SOURCES" >&2
    if [ "${NONFREE_UPDATE:-0}" = 1 ] || ! ls /var/lib/apt/lists/*_non-free_binary-*_Packages* >/dev/null 2>&1; then
        apt-get update
    fi
    exit 0
fi

chmod --reference="$SOURCES" "$tmp"
# The backup goes outside sources.list.d: apt would warn about a *.bak file in there on every run.
backup=/var/backups/$(basename "$SOURCES").before-nonfree
cp "$SOURCES" "$backup" 2>/dev/null || backup="none (cannot write /var/backups)"
mv "$tmp" "$SOURCES"
trap - EXIT
echo "enable-debian-nonfree: added contrib non-free to $SOURCES (backup: $backup)" >&2
apt-get update
