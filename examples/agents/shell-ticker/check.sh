#!/bin/sh
# The exec health check of shell-ticker, run by the supervisor in the
# package directory (with the agent's PATH, AGENT_ID and AGENT_PID, nothing else): healthy while
# the last tick's promise in `ticker.<AGENT_ID>.alive` holds (the check
# gets the agent's AGENT_ID, so every instance is checked on its own). A ticker that hangs
# (stopped, blocked) still has a process, but its promise runs out.
read -r until 2>/dev/null < "ticker.${AGENT_ID:-solo}.alive" || exit 1
[ "$(date +%s)" -le "$until" ]
