#!/bin/sh
# The gateway broker's start step: write its configuration from the device variables
# (broker-conf.sh, which the tests run too), make its volume its own, then become mosquitto
# (exec: SIGTERM from balena reaches it, and it saves its store on the way out).
set -eu
conf=/mosquitto/config/mosquitto.conf
/usr/local/bin/broker-conf.sh > "$conf.new"
mv "$conf.new" "$conf"
mkdir -p "${BROKER_DATA:-/mosquitto/data/}"
chown -R "${BROKER_USER:-mosquitto}" "${BROKER_DATA:-/mosquitto/data/}" /mosquitto/config/certs 2>/dev/null || true
exec /usr/sbin/mosquitto -c "$conf"
