"""The sans-IO core of p2pay: no I/O, no clock, no randomness of its own.

Everything here is deterministic: functions take ``now`` and return decisions and
events. The node, ledgers, CLI and simulator are adapters around it.
"""
