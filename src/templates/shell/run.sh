#!/bin/sh
# {{name}}: prints a line every `every_secs` seconds (from its config), re-reads
# its config on SIGHUP and stops on SIGTERM. A level word at the start of a
# line (INFO, WARN, ERROR) sets the line's level in OPMAS_LOGS.

every=10
load_config() {
    # The config is a JSON object in $OPMAS_AGENT_CONFIG_FILE; a real agent
    # would use jq or its language's JSON parser.
    if [ -n "${OPMAS_AGENT_CONFIG_FILE:-}" ] && [ -r "$OPMAS_AGENT_CONFIG_FILE" ]; then
        value=$(sed -n 's/.*"every_secs":[ ]*\([0-9][0-9]*\).*/\1/p' "$OPMAS_AGENT_CONFIG_FILE")
        [ -n "$value" ] && every=$value
    fi
    echo "INFO ${AGENT_ID:-{{name}}} config loaded: every ${every}s"
}

load_config
trap 'load_config' HUP
trap 'echo "INFO ${AGENT_ID:-{{name}}} stopping"; exit 0' TERM INT
n=0
while :; do
    n=$((n + 1))
    echo "INFO ${GREETING:-hello} from ${AGENT_ID:-{{name}}}, round $n"
    # sleep in the background and wait, so signals are handled at once
    sleep "$every" &
    wait $!
done
