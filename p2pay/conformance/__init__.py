"""A conformance tester for p2pay implementations (issue 15, item 4).

`run_conformance` dials an implementation over libp2p and drives it through the cases of
`specs/protocol.md` (`CASES`), like h2spec for HTTP/2; ``p2pay conformance MULTIADDR`` is
its command line. See `p2pay.conformance.cases` for how a run goes.
"""

from p2pay.conformance.cases import CASES, Case, CaseResult, Report, run_conformance, select

__all__ = ["CASES", "Case", "CaseResult", "Report", "run_conformance", "select"]
