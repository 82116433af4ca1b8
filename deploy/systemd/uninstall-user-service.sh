#!/usr/bin/env bash
# Stop and remove the user service. The config folder (~/.config/llm-gateway) and the models stay.
set -euo pipefail
UNIT="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user/llm-gateway.service"
systemctl --user disable --now llm-gateway.service 2>/dev/null || true
rm -f "$UNIT"
systemctl --user daemon-reload
echo "Removed $UNIT; the settings in ${XDG_CONFIG_HOME:-$HOME/.config}/llm-gateway are kept."
