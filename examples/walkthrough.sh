#!/usr/bin/env bash
# Two nodes on one machine: a provider and a client on one dev SQLite ledger.
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

# a development ledger (it can mint; walkthrough-sized periods) and two homes
p2pay ledger create ledger.sqlite --dev --min-challenge 1s --min-claim-window 1s
p2pay --home provider init --ledger sqlite:ledger.sqlite
p2pay --home client init --ledger sqlite:ledger.sqlite
p2pay --home client ledger mint "$(p2pay --home client id --json | field peer_id)" "1 token"
p2pay --home provider ledger mint "$(p2pay --home provider id --json | field peer_id)" "1 token"

# the provider stakes collateral and serves "echo" at 1000 yocto a call
p2pay --home provider stake "0.5 token" --penalty "0.1 token" --claim-window 30s
# (it accepts channels with a challenge period of 2 s or more: 60 s unless told)
p2pay --home provider node run --listen /ip4/127.0.0.1/tcp/0 --service echo=1000 --min-challenge 2s >provider.out &
PEER=$(started provider.out)

# the client opens a channel, makes a paid call, and looks at its money
p2pay --home client channel open "$PEER" --deposit "0.001 token" --challenge 2s
p2pay --home client call "$PEER" echo "hello, p2pay" --max-price 1000
p2pay --home client call "$PEER" echo "again" --max-price 1000 --json
p2pay --home client channel list
p2pay --home client balance

# closing: the provider's watcher redeems during the challenge period, then it finalizes
p2pay --home client channel close "$(p2pay --home client channel list --json | field channels 0 channel)" --wait
kill -INT %1 && wait
p2pay --home provider balance
