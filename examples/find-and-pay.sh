#!/usr/bin/env bash
# Find and pay: a client that knows only a bootstrap node finds a provider of "echo"
# and pays it, three homes on one dev SQLite ledger.
# README.md shows this file; tests/cli/test_readme.py runs it.
set -euo pipefail
cd "$(mktemp -d)"
field() {  # read a field of the JSON document on stdin: field offers 0 peer
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

p2pay ledger create ledger.sqlite --dev --min-challenge 1s --min-claim-window 1s
for home in bootstrap provider client; do
  p2pay --home $home init --ledger sqlite:ledger.sqlite
done
p2pay --home provider ledger mint "$(p2pay --home provider id --json | field peer_id)" "1 token"
p2pay --home client ledger mint "$(p2pay --home client id --json | field peer_id)" "1 token"

# a bootstrap node: `node run` with no services (a DHT server and a gossip peer)
p2pay --home bootstrap node run --listen /ip4/127.0.0.1/tcp/0 >bootstrap.out &
BOOTSTRAP=$(started bootstrap.out)

# a provider with a stake announces a signed offer for "echo" (1000 yocto a call)
p2pay --home provider stake "0.5 token" --penalty "0.1 token" --claim-window 30s
p2pay --home provider node run --listen /ip4/127.0.0.1/tcp/0 --service echo=1000 \
  --bootstrap "$BOOTSTRAP" >provider.out &
started provider.out >/dev/null

# the client knows only the bootstrap address: it finds the offer, then calls any provider
p2pay --home client find echo --bootstrap "$BOOTSTRAP" --json
p2pay --home client call any echo hello --max-price 1000 --bootstrap "$BOOTSTRAP"
p2pay --home client channel list

kill -INT %1 %2 && wait
