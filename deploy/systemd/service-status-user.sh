#!/usr/bin/env bash
# The user service's state, its last log lines, and what the gateway itself says on /health.
set -uo pipefail
systemctl --user --no-pager status llm-gateway.service
echo
journalctl --user -u llm-gateway --no-pager -n 20
echo
PORT="$(sed -n 's/^GATEWAY_PORT=//p' "${XDG_CONFIG_HOME:-$HOME/.config}/llm-gateway/env" 2>/dev/null | tail -1)"
URL="http://127.0.0.1:${PORT:-11435}/health"
echo "GET $URL"
curl -fsS --max-time 5 "$URL" && echo || echo "(no answer)"
