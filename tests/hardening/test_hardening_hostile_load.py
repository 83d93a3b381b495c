"""Load with hostility (issue 14, item 6): 200 honest paying clients beside 64
session-hoarding identities and one window-flooding payer, all on loopback libp2p
against one provider in this process (`benchmarks.hostile_load`).

Asserted only what must hold on any machine, whatever its load (no timing). The scenario
is ordered by events, not by clocks: the honest clients start once the hoarders fill the
provider's sessions and the flooder floods, and the hostile peers go on after them until
the flooder was cut off and hoarders evicted (every wait bounded, by minutes); an honest
call waits for its answer as long (`PATIENCE`), so a starved machine only runs slower.

* every honest call is eventually served: OVERLOADED refusals and connections lost
  before admission are retried (at most `MAX_ATTEMPTS` attempts each), then served; a
  call that times out is a failure (never retried);
* memory stays bounded: no stream ever held more than `MAX_STREAM_BUFFER` bytes in the
  provider's muxer, nor more than ``max_frame`` + 9 + 64 KiB in its frame reader (bytes
  buffered, measured in the objects, not RSS);
* the flooder was cut off (its window violation detected) and the hoarders were evicted
  to make room, never a paying session in flight;
* nothing lost or made up: per honest channel, nothing stays reserved at the provider;
  the client's own accounting is the prices on the receipts `call` returned, plus at most
  one price per call whose connection was lost after its request left (a call retried
  after ConnectionLost, seen on a starved machine); and what the provider charged is what
  the client accepted plus at most what it still holds outstanding. The client cannot
  know whether such a request was admitted: it keeps its price outstanding until a
  re-send or its watcher settles it (protocol.md 14.2; these clients run no watcher), or
  a later receipt's `spent` takes its charge as a jump (14.3 rule 7). The provider may
  have served and charged it, its answer lost with the connection: seen in newcomers'
  runs beside CPU hogs, the provider charging 4,000 against 3,000 on the receipts, with
  1,000 outstanding at the client, or taken by a jump (client spent 4,000).
"""

from __future__ import annotations

import pytest

from benchmarks.hostile_load import MAX_ATTEMPTS, run_hostile_load
from p2pay.net.framing import READ_SIZE
from p2pay.net.p2p import MAX_STREAM_BUFFER
from p2pay.node import NodeConfig

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.slow]


async def test_two_hundred_honest_clients_beside_hoarders_and_a_flooder() -> None:
    result = await run_hostile_load(honest=200, calls=3)
    summary = result["summary"]
    print("\nhostile load:", summary)
    assert summary["hostile_ready"], summary  # the honest clients came under attack
    assert summary["failed"] == [], summary
    assert summary["served"] == summary["honest_calls"] == 600
    assert summary["attempts_max"] <= MAX_ATTEMPTS
    assert summary["max_muxer_buffer"] <= MAX_STREAM_BUFFER
    assert summary["max_reader_buffer"] <= NodeConfig().max_frame + 9 + READ_SIZE
    assert summary["floods_cut_off"] >= 1
    assert summary["hoarder_sessions"] > 0 and summary["sessions_evicted"] > 0
    assert result["clients"].keys() == result["receipts"].keys()
    for channel, paid in result["receipts"].items():
        spent, reserved = result["stored"][channel]
        client_spent, outstanding = result["clients"][channel]
        lost = result["lost_calls"].get(channel, 0)
        where = (channel.hex(), spent, paid, client_spent, outstanding, lost)
        assert reserved == 0, where
        # beyond the receipts' prices, only the calls lost after their request left: a
        # later receipt's spent may take one's charge as a jump (14.3 rule 7), or it
        # stays outstanding
        assert outstanding % 1_000 == 0 and (client_spent - paid) % 1_000 == 0, where
        assert paid <= client_spent <= client_spent + outstanding <= paid + 1_000 * lost, where
        # the provider charged what the client accepted, plus at most what it still holds
        # outstanding (claimable)
        assert client_spent <= spent <= client_spent + outstanding, where
    assert sum(result["receipts"].values()) == 600 * 1_000
