#!/bin/sh
# The exec health check of shell-ticker, run by the supervisor in the
# package directory (with the agent's PATH and nothing else): healthy while
# the last tick's promise in `ticker.alive` holds. A ticker that hangs
# (stopped, blocked) still has a process, but its promise runs out.
read -r until 2>/dev/null < ticker.alive || exit 1
[ "$(date +%s)" -le "$until" ]
