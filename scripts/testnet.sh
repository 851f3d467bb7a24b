#!/usr/bin/env bash
# Start an N-validator CometBFT testnet on loopback (127.0.0.1), each validator with its own
# KOFO clearance ledger app over ABCI. Ctrl-C stops every process it started.
#
#   scripts/testnet.sh                 # 4 validators under /tmp/kofo-testnet, ports from 26600
#   scripts/testnet.sh 7 /tmp/net 27000
#   APP=kvstore scripts/testnet.sh 4   # CometBFT's kvstore example instead (benchmark baseline)
#
# Validator i listens on base+10*i (p2p), base+10*i+1 (RPC), base+10*i+2 (ABCI). The cometbft
# binary comes from .nodes/bin (scripts/install-nodes.sh), $KOFO_COMETBFT or /tmp/nodes/bin.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VALIDATORS="${1:-4}"
HOME_DIR="${2:-/tmp/kofo-testnet}"
BASE_PORT="${3:-26600}"
PYTHON="${PYTHON:-${ROOT}/.venv/bin/python}"
[[ -x "${PYTHON}" ]] || PYTHON="$(command -v python3)"

exec "${PYTHON}" -m kofo.clearance.consensus.testnet \
    --validators "${VALIDATORS}" --root "${HOME_DIR}" --base-port "${BASE_PORT}" --app "${APP:-kofo}"
