#!/usr/bin/env bash
# Runs the server's API tests (pytest + the official openai client) against `falcon-h1 serve` on
# the fixture model. Creates a virtualenv with openai, pytest and requests on first use.
#   run_server_tests.sh FALCON_H1_BINARY VENV_DIR [pytest args...]
set -euo pipefail
bin=$(realpath "$1")
venv=$(realpath -m "$2")
shift 2
here=$(cd "$(dirname "$0")" && pwd)
if [[ ! -x "$venv/bin/pytest" ]] || ! "$venv/bin/python" -c "import openai, requests, websocket" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check openai pytest requests websocket-client
fi
export FH1_BIN="$bin"
export PYTHONDONTWRITEBYTECODE=1
export FH1_MODEL="$here/../fixtures/server/model"
export FH1_LOG_DIR=$(mktemp -d)
cd "$here"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" .
