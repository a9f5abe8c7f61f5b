#!/bin/sh
# A plain shell agent: no SDK, no NATS. OPMAS watches it by process
# liveness (heartbeat.enabled = false) and ships what it prints to
# OPMAS_LOGS; a level word at the start of a line sets the line's level.
# It stops on SIGTERM (the supervisor's stop signal).

interval="${TICK_INTERVAL:-5}"
n=0
trap 'echo "INFO ticker ${AGENT_ID:-?} stopping after $n ticks"; exit 0' TERM INT
echo "INFO ticker ${AGENT_ID:-?} started on ${OPMAS_NODE:-unknown node}, every ${interval}s"
while :; do
    n=$((n + 1))
    echo "INFO tick $n $(date -u +%Y-%m-%dT%H:%M:%SZ) load $(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo ?)"
    if [ $((n % 10)) -eq 0 ]; then
        echo "WARN tick $n: ten more ticks, nothing happened" >&2
    fi
    # sleep in the background and wait, so a TERM is handled at once
    sleep "$interval" &
    wait $!
done
