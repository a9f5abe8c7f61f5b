#!/bin/sh
# A plain shell agent: no SDK, no NATS. OPMAS watches its process and,
# through the exec health check `check.sh`, that it still ticks: every tick
# writes into `ticker.<AGENT_ID>.alive` (in the working directory, the package) the
# time until which the next tick is due, with room to spare. What it prints
# is shipped to OPMAS_LOGS; a level word at the start of a line sets the
# line's level. It stops on SIGTERM (the supervisor's stop signal).

interval="${TICK_INTERVAL:-5}"
# Seconds the next tick may take: twice the interval (its whole seconds,
# so 0.5 counts as 0) plus 4.
slack=$((2 * ${interval%%.*} + 4))
n=0
alive="ticker.${AGENT_ID:-solo}.alive"   # one per instance
trap 'rm -f "$alive"; echo "INFO ticker ${AGENT_ID:-?} stopping after $n ticks"; exit 0' TERM INT
echo "INFO ticker ${AGENT_ID:-?} started on ${OPMAS_NODE:-unknown node}, every ${interval}s"
while :; do
    n=$((n + 1))
    echo $(($(date +%s) + slack)) > "$alive.new" && mv -f "$alive.new" "$alive"
    echo "INFO tick $n $(date -u +%Y-%m-%dT%H:%M:%SZ) load $(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo ?)"
    if [ $((n % 10)) -eq 0 ]; then
        echo "WARN tick $n: ten more ticks, nothing happened" >&2
    fi
    # sleep in the background and wait, so a TERM is handled at once
    sleep "$interval" &
    wait $!
done
