#!/usr/bin/env bash
# A plain shell agent: no SDK, no NATS client. It sends its heartbeats
# itself (see `beat` below), and OPMAS also checks, through the exec health
# check `check.sh`, that it still ticks: every tick
# writes into `ticker.<AGENT_ID>.alive` (in the working directory, the package) the
# time until which the next tick is due, with room to spare. What it prints
# is shipped to OPMAS_LOGS; a level word at the start of a line sets the
# line's level. It stops on SIGTERM (the supervisor's stop signal).

# One heartbeat: a short connection to the first NATS server of $NATS_URL
# through bash's /dev/tcp, speaking NATS's text protocol: read the server's
# INFO, send CONNECT (with the URL's user:password or token), PUB the beat on
# $OPMAS_HEARTBEAT_SUBJECT, PING, and wait for the PONG (the server has
# handled the PUB by then). Plain TCP only: a server that wants TLS refuses
# it, and the supervisor sees the heartbeat missing. A beat that cannot be
# sent is simply missed.
beat() {
    [ -n "${OPMAS_HEARTBEAT_SUBJECT:-}" ] && [ -n "${NATS_URL:-}" ] || return 0
    local url="${NATS_URL%%,*}" auth="" connect='{"verbose":false}' body line
    url="${url#*://}"
    case "$url" in *@*) auth="${url%%@*}" url="${url#*@}" ;; esac
    local host="${url%%:*}" port="${url##*:}"
    [ "$port" = "$url" ] && port=4222
    case "$auth" in
        *:*) connect="{\"verbose\":false,\"user\":\"${auth%%:*}\",\"pass\":\"${auth#*:}\"}" ;;
        ?*) connect="{\"verbose\":false,\"auth_token\":\"$auth\"}" ;;
    esac
    body="{\"agent_id\":\"$AGENT_ID\",\"at\":\"$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)\",\"status\":\"tick $n\"}"
    {
        exec 3<>"/dev/tcp/$host/$port" || return 0
        read -r -t 2 line <&3 # INFO
        printf 'CONNECT %s\r\nPUB %s %d\r\n%s\r\nPING\r\n' \
            "$connect" "$OPMAS_HEARTBEAT_SUBJECT" "${#body}" "$body" >&3
        read -r -t 2 line <&3 # PONG (or -ERR)
        exec 3<&-
    } 2>/dev/null
}

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
    beat
    echo "INFO tick $n $(date -u +%Y-%m-%dT%H:%M:%SZ) load $(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo ?)"
    if [ $((n % 10)) -eq 0 ]; then
        echo "WARN tick $n: ten more ticks, nothing happened" >&2
    fi
    # sleep in the background and wait, so a TERM is handled at once
    sleep "$interval" &
    wait $!
done
