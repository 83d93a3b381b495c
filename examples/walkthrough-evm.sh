#!/usr/bin/env bash
# Two nodes settling through the Settlement contract on a local EVM chain (anvil).
# Needs the evm extra (pip install -e '.[dev]' has it) and anvil on PATH
# (npm install --prefix .tools @foundry-rs/anvil@1, then .tools/node_modules/.bin on PATH).
# README.md shows this file; tests/cli/test_readme.py runs it.
set -euo pipefail
cd "$(mktemp -d)"
field() {  # read a field of the JSON document on stdin: field channels 0 channel
  python3 -c 'import json, sys
d = json.load(sys.stdin)
for k in sys.argv[1:]:
    d = d[int(k) if k.isdigit() else k]
print(d)' "$@"
}
started() {  # wait (up to 120 s) for a node's `listening` line, print its address
  for _ in $(seq 600); do
    if grep -q '^listening' "$1"; then sed -n 's/^listening //p' "$1" | head -n 1; return; fi
    sleep 0.2
  done
  echo "error: the node never printed 'listening' in 120 s (its output: $PWD/$1)" >&2
  return 1
}

# a local chain that mines a block every second, as a real chain does
PORT=${ANVIL_PORT:-8545}
RPC=http://127.0.0.1:$PORT
anvil --host 127.0.0.1 --port "$PORT" --block-time 1 --silent &
ANVIL=$!
trap 'kill $ANVIL 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
  sleep 0.1
done

# the provider deploys a dev Settlement contract (and its test token) and uses it
p2pay --home provider init
p2pay --home provider ledger deploy "$RPC" --dev --fund-dev-gas --use --min-challenge 1s --min-claim-window 1s
LEDGER=$(p2pay --home provider id --json | field ledger)
p2pay --home client init --ledger "$LEDGER"

# each settles as the EVM address derived from its key (`p2pay id` shows it)
p2pay --home client ledger mint "$(p2pay --home client id --json | field account)" "1 token" --fund-dev-gas
p2pay --home provider ledger mint "$(p2pay --home provider id --json | field account)" "1 token" --fund-dev-gas

# the provider stakes collateral and serves "echo" at 1000 yocto a call
p2pay --home provider stake "0.5 token" --penalty "0.1 token" --claim-window 30s
p2pay --home provider node run --listen /ip4/127.0.0.1/tcp/0 --service echo=1000 --min-challenge 2s >provider.out &
PEER=$(started provider.out)

# opening connects: the provider's hello binds its PeerID to its address
p2pay --home client channel open "$PEER" --deposit "0.001 token" --challenge 2s
p2pay --home client call "$PEER" echo "hello, p2pay" --max-price 1000
p2pay --home client call "$PEER" echo "again" --max-price 1000 --json
p2pay --home client channel list
p2pay --home client balance

# closing: the provider's watcher redeems on chain during the challenge period
p2pay --home client channel close "$(p2pay --home client channel list --json | field channels 0 channel)" --wait
kill -INT %2 && wait %2
p2pay --home provider balance
