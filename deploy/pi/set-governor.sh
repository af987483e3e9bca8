#!/bin/sh
# Puts every CPU frequency policy under GOVERNOR (installed as /usr/local/sbin/gate-set-governor,
# run at boot by gate-governor.service). Fails, naming what the kernel offers, rather than
# leaving a half-applied choice.
set -eu
gov=${1:?usage: gate-set-governor GOVERNOR}
cpufreq=${GATE_CPUFREQ_DIR:-/sys/devices/system/cpu/cpufreq}

found=0
for policy in "$cpufreq"/policy*; do
    [ -d "$policy" ] || continue
    found=1
    if ! grep -qw -- "$gov" "$policy/scaling_available_governors"; then
        echo "gate-set-governor: $(basename "$policy") does not offer '$gov'" \
             "(available: $(cat "$policy/scaling_available_governors"))" >&2
        exit 1
    fi
done
if [ "$found" = 0 ]; then
    echo "gate-set-governor: no cpufreq policies under $cpufreq: this kernel does not scale frequency" >&2
    exit 1
fi
for policy in "$cpufreq"/policy*; do
    echo "$gov" > "$policy/scaling_governor"
done
echo "gate-set-governor: $gov"
