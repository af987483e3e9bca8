#!/bin/sh
# Starts as root only to hand the broker password (a root 0600 file on the host) to the service
# user, then runs gate-cloud as that user: leaving uid 0 clears every capability, and
# no-new-privs keeps setuid binaries from handing any back.
set -eu
install -o gate-cloud -g gate-cloud -m 0400 /run/secrets/cloud.password /run/gate/mqtt.password
exec setpriv --reuid=gate-cloud --regid=gate-cloud --init-groups --no-new-privs -- gate-cloud "$@"
