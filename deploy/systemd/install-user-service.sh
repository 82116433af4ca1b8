#!/usr/bin/env bash
# Install llm-gateway as a systemd user service for this checkout: the virtualenv if it is missing, a config
# folder (~/.config/llm-gateway with gateway.yaml and env), the unit, enabled and started.
#   deploy/systemd/install-user-service.sh               # install, enable, start
#   deploy/systemd/install-user-service.sh --no-start    # install and enable only
#   deploy/systemd/install-user-service.sh --print-unit  # print the unit this checkout gets, change nothing
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
UNIT_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
CONFIG_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/llm-gateway"

render_unit() {
    sed "s|@REPO@|$REPO|g" "$REPO/deploy/systemd/llm-gateway.service.in"
}

case "${1:-}" in
    --print-unit) render_unit; exit 0 ;;
    --no-start|"") ;;
    *) echo "usage: $0 [--no-start | --print-unit]" >&2; exit 2 ;;
esac

if [ ! -x "$REPO/.venv/bin/python" ]; then
    echo "Creating the virtualenv (the first build compiles llama.cpp: several minutes)..."
    make -C "$REPO" .venv/.runtime
fi
mkdir -p "$UNIT_DIR" "$CONFIG_DIR"
if [ ! -e "$CONFIG_DIR/gateway.yaml" ]; then
    cp "$REPO/config/gateway.yaml" "$CONFIG_DIR/gateway.yaml"
    echo "Wrote $CONFIG_DIR/gateway.yaml (every setting, commented): edit it, then restart the service."
fi
if [ ! -e "$CONFIG_DIR/env" ]; then
    printf '# GATEWAY_* variables override gateway.yaml, e.g.\n# GATEWAY_PORT=11435\n' > "$CONFIG_DIR/env"
fi
render_unit > "$UNIT_DIR/llm-gateway.service"
systemctl --user daemon-reload
if [ "${1:-}" = "--no-start" ]; then
    systemctl --user enable llm-gateway.service
else
    systemctl --user enable --now llm-gateway.service
fi
echo "Installed $UNIT_DIR/llm-gateway.service."
echo "Logs: journalctl --user -u llm-gateway -f    Status: deploy/systemd/service-status-user.sh"
if [ "$(loginctl show-user "$USER" --property=Linger --value 2>/dev/null || echo no)" != "yes" ]; then
    echo "To keep it running after you log out and start it at boot: sudo loginctl enable-linger $USER"
fi
