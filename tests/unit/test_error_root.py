"""One error root: every exception class p2pay defines derives from `P2payError`.

So ``except P2payError`` catches everything p2pay raises on purpose. Two checks:

* every p2pay module is imported, then every subclass of ``BaseException`` whose module is
  in p2pay must be a `P2payError` (this sees classes at module level, in classes, and any
  made while importing);
* the source of every module is parsed, and every ``class`` statement anywhere (also in a
  function body, which the first check cannot see before the function runs) whose bases
  resolve to an exception must have a base that is a `P2payError`.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import pkgutil
import sys
from pathlib import Path

import p2pay
from p2pay.core.errors import P2payError

ROOT = Path(p2pay.__file__).resolve().parent


def _module_names() -> list[str]:
    names = ["p2pay"]
    for info in pkgutil.walk_packages(p2pay.__path__, "p2pay."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # importing it runs the command line
            names.append(info.name)
    return sorted(names)


def _all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    todo = [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_exception_defined_in_p2pay_is_a_p2pay_error() -> None:
    for name in _module_names():
        importlib.import_module(name)
    ours = {
        cls
        for cls in _all_subclasses(BaseException)
        if cls.__module__ == "p2pay" or cls.__module__.startswith("p2pay.")
    }
    # the walk did see the package's exceptions (those of every layer), not nothing
    seen = {f"{cls.__module__}.{cls.__qualname__}" for cls in ours}
    for expected in (
        "p2pay.core.errors.DecodeError",
        "p2pay.net.base.StreamClosed",
        "p2pay.persist.StoreFailed",
        "p2pay.sim.params.ScenarioError",
        "p2pay.store.base.StoreClosed",
        "p2pay.ledger.evm.ChainUnavailable",
        "p2pay.cli.home.CliError",
        "p2pay.testing.LedgerConformanceError",
    ):
        assert expected in seen, expected
    outside = sorted(
        f"{cls.__module__}.{cls.__qualname__}" for cls in ours if not issubclass(cls, P2payError)
    )
    assert outside == [], f"exceptions not derived from P2payError: {outside}"


def _resolve(node: ast.expr, namespace: dict[str, object]) -> object:
    """The object a base-class expression names (``Name`` or dotted ``Attribute``), or
    None when it cannot be resolved from the module's globals and the builtins."""
    if isinstance(node, ast.Name):
        if node.id in namespace:
            return namespace[node.id]
        return getattr(builtins, node.id, None)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, namespace)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def test_every_class_statement_deriving_from_an_exception_has_a_p2pay_error_base() -> None:
    checked = 0
    bad: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if parts[-1] == "__main__":
            continue
        module = sys.modules.get(name) or importlib.import_module(name)
        namespace = vars(module)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ClassDef) or namespace.get(node.name) is P2payError:
                continue  # (the root itself)
            bases = [_resolve(b, namespace) for b in node.bases]
            if not any(isinstance(b, type) and issubclass(b, BaseException) for b in bases):
                continue
            checked += 1
            if not any(isinstance(b, type) and issubclass(b, P2payError) for b in bases):
                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}")
    assert checked >= 40  # every error class of the package was looked at
    assert bad == [], f"exception classes without a P2payError base: {bad}"


def test_rebased_errors_keep_their_other_bases_and_their_text() -> None:
    """Callers that caught them by their old bases still do; ``str()`` is unchanged."""
    from p2pay.net.base import AddressInUse, ConnectError, ListenError, NetError, StreamClosed
    from p2pay.net.framing import renew_error
    from p2pay.persist import StoreFailed
    from p2pay.sim.scenario import ScenarioError
    from p2pay.store.base import StoreError
    from p2pay.testing import LedgerConformanceError

    closed = StreamClosed("end of stream")
    assert isinstance(closed, NetError) and str(closed) == "end of stream"
    renewed = renew_error(closed)
    assert type(renewed) is StreamClosed and str(renewed) == "end of stream"
    assert str(renew_error(OSError("broken pipe"))) == "broken pipe"
    assert str(ConnectError("no known address")) == "no known address"
    busy = AddressInUse("cannot listen", addr="/ip4/127.0.0.1/tcp/1")
    assert isinstance(busy, ListenError) and busy.addr == "/ip4/127.0.0.1/tcp/1"
    assert str(busy) == "cannot listen"
    failed = StoreFailed("INTERNAL: disk I/O error")
    assert isinstance(failed, StoreError) and str(failed) == "INTERNAL: disk I/O error"
    bad_scenario = ScenarioError("peers (a).count: an int")
    assert isinstance(bad_scenario, ValueError) and str(bad_scenario) == "peers (a).count: an int"
    conformance = LedgerConformanceError("'withdraw' failed")
    assert isinstance(conformance, AssertionError) and str(conformance) == "'withdraw' failed"
