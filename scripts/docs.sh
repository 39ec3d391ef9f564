#!/usr/bin/env bash
# Regenerate the reference under docs/reference/ from the code (the CLI, the [tool.envlock] keys, the exit-code
# table, the modules' docstrings). tests/unit/test_docs.py fails when the committed files differ from what this
# writes; run it after changing a command, an option, a key, an error or a module.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} exec .venv/bin/python -m envlock.cli.docgen docs/reference
