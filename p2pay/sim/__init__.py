"""Multi-peer simulations of p2pay markets (simulations/README.md).

Every simulated peer runs the real node, watcher and ledger rules; only the clock
(trio's MockClock) and the network (in-memory, or real libp2p on 127.0.0.1) are
simulated. Use it from the command line (``p2pay simulate SCENARIO``) or as a library::

    from p2pay.sim import load_scenario, run_scenario
    report = run_scenario(load_scenario("simulations/scenarios/honest.toml"))
    assert report["invariants_ok"]

To add a behaviour, subclass `PeerBehaviour` (hooks documented in
`p2pay.sim.behaviours`) and `register` it; scenario files then name it by ``kind``.

Imports go one way (no module of the package imports one that imports it back): `params`
(values and `ScenarioError`) <- `scenario` and `behaviours` <- `cheaters` and `discovery`
<- `registry` (every behaviour, registered by name) <- `engine` <- `run`; `invariants` <-
`discovery` and `report`.
"""

from p2pay.sim.behaviours import DownPeriod, PeerBehaviour, RawSession
from p2pay.sim.engine import SimPeer, Simulation
from p2pay.sim.params import ScenarioError
from p2pay.sim.registry import BEHAVIOURS, register
from p2pay.sim.run import run_scenario, run_simulation
from p2pay.sim.scenario import Scenario, load_scenario, parse_scenario

__all__ = [
    "BEHAVIOURS",
    "DownPeriod",
    "PeerBehaviour",
    "RawSession",
    "Scenario",
    "ScenarioError",
    "SimPeer",
    "Simulation",
    "load_scenario",
    "parse_scenario",
    "register",
    "run_scenario",
    "run_simulation",
]
