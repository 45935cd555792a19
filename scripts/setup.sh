#!/usr/bin/env bash
# Creates the virtual environment .venv (or $VENV) and installs the pinned requirements.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
# Packages whose declared dependencies would pull in what we do not need (see the file).
"$VENV/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt
echo "installed into $VENV"
