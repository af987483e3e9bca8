#!/bin/sh
# mosquitto 2.0 drops to its own user right after reading the config, so the password file and
# the key it opens later must belong to that user; the host's copies stay root's 0600 files.
set -eu
install -d -o mosquitto -g mosquitto -m 0700 /var/lib/mosquitto /etc/mosquitto/certs
install -o mosquitto -g mosquitto -m 0600 /run/gate/gate.passwd /etc/mosquitto/gate.passwd
install -o mosquitto -g mosquitto -m 0600 /run/gate/server.key /etc/mosquitto/certs/server.key
install -o mosquitto -g mosquitto -m 0644 /run/gate/server.crt /etc/mosquitto/certs/server.crt
exec /usr/sbin/mosquitto -c /etc/mosquitto/mosquitto.conf
