"""The README's commands and code are real: each block is a tested file, quoted verbatim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_quotes_the_tested_files_verbatim() -> None:
    walkthrough = (ROOT / "examples" / "walkthrough.sh").read_text()
    evm_walkthrough = (ROOT / "examples" / "walkthrough-evm.sh").read_text()
    library = (ROOT / "examples" / "library.py").read_text()
    find_and_pay = (ROOT / "examples" / "find-and-pay.sh").read_text()
    find_and_pay_py = (ROOT / "examples" / "find-and-pay.py").read_text()
    assert walkthrough in _blocks("bash"), "README must quote examples/walkthrough.sh exactly"
    assert find_and_pay in _blocks("bash"), "README must quote examples/find-and-pay.sh exactly"
    assert evm_walkthrough in _blocks("bash"), "README must quote walkthrough-evm.sh exactly"
    assert library in _blocks("python"), "README must quote examples/library.py exactly"
    assert find_and_pay_py in _blocks("python"), "README must quote find-and-pay.py exactly"


def test_readme_shows_install_demo_and_test_commands() -> None:
    commands = "\n".join(_blocks("sh"))
    assert "pip install -e '.[dev]'" in commands
    assert "p2pay demo" in commands
    assert re.search(r"^pytest$", commands, flags=re.M)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_library_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "library.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "b'hi' cost 1000 yocto; spent so far 1000" in out.stdout


def test_find_and_pay_library_example_runs() -> None:
    """Three nodes on libp2p in one process: the client finds the staked provider's offer
    through the bootstrap node and pays a call."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "find-and-pay.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    provider = re.search(r"^offer of (12D3KooW\w+) 1000 yocto, stake 5\d{23}$", out.stdout, re.M)
    assert provider is not None, out.stdout
    assert f"b'hi' from {provider.group(1)} cost 1000 yocto" in out.stdout


@pytest.mark.slow
def test_two_node_walkthrough_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        ["bash", str(ROOT / "examples" / "walkthrough.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "hello, p2pay" in out.stdout
    assert '"price": "1000"' in out.stdout
    # the provider's watcher redeemed both calls
    assert "redeemed 0.000000000000000000002 token (2000 yocto)" in out.stdout


@pytest.mark.slow
def test_find_and_pay_runs(tmp_path: Path) -> None:
    """Three homes: a bootstrap node, a provider, a client that knows only the first."""
    out = subprocess.run(
        ["bash", str(ROOT / "examples" / "find-and-pay.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    provider = re.search(r'"peer": "(12D3KooW\w+)"', out.stdout)
    assert provider is not None, out.stdout  # find --json listed the provider's offer
    assert '"price": "1000"' in out.stdout
    assert "\nhello\n" in out.stdout  # the answer of call any
    # the channel list shows the call paid: 1000 yocto spent
    listing = out.stdout.rsplit("\nhello\n", 1)[1].splitlines()
    header = next(line for line in listing if line.startswith("┃"))
    row = next(line for line in listing if "payer" in line)
    columns = [cell.strip() for cell in header.strip("┃").split("┃")]
    cells = [cell.strip() for cell in row.strip("│").split("│")]
    assert cells[columns.index("spent")] == "1000"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_evm_walkthrough_runs(tmp_path: Path) -> None:
    """Two CLI nodes settle through the contract on anvil, as the README shows."""
    import shutil

    pytest.importorskip("web3", reason="the evm extra is not installed")
    env = _env()
    anvil = os.environ.get("P2PAY_ANVIL") or shutil.which("anvil")
    if anvil is None:
        pytest.skip("anvil not found: npm install @foundry-rs/anvil (.ci/run does)")
    env["PATH"] = f"{Path(anvil).parent}{os.pathsep}{env['PATH']}"
    env["ANVIL_PORT"] = str(_free_port())
    out = subprocess.run(
        ["bash", str(ROOT / "examples" / "walkthrough-evm.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "deployed dev ledger evm:http://127.0.0.1:" in out.stdout
    assert "hello, p2pay" in out.stdout and '"price": "1000"' in out.stdout
    # the provider's watcher redeemed both calls on chain
    assert "redeemed 0.000000000000000000002 token (2000 yocto)" in out.stdout
    # the provider ends with its 1 token, minus its 0.5 token stake, plus the 2000 yocto
    assert "500000000000000000002000" in out.stdout.rsplit("account ", 1)[-1]


@pytest.mark.slow
def test_readme_simulation_command_runs(tmp_path: Path) -> None:
    import json

    (command,) = [line for b in _blocks("sh") for line in b.splitlines() if "simulate" in line]
    args = command.split()[1:]  # drop "p2pay"
    args[args.index("--out") + 1] = str(tmp_path / "sim")
    out = subprocess.run(
        [sys.executable, "-m", "p2pay", *args, "-q", "--no-plots"],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "sim" / "report.json").read_text())
    assert report["invariants"] and all(inv["ok"] for inv in report["invariants"])
    assert report["requests"]["ok"] > 1000
