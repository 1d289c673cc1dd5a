#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
echo "membraned is not built yet; checking the example policies instead"
bin/membrane policy check examples/
