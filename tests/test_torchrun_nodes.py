"""``torchrun`` across two "nodes" on this machine: two launchers of one process each, c10d rendezvous.

Each node is ``python -m torch.distributed.run --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d
--rdzv-endpoint 127.0.0.1:PORT`` in its own subprocess, as the README's two-machine command runs on two
hosts. The run must equal one process, and losing one node must end the other cleanly: exit 1 in bounded
time with a message naming the checkpoint, which one process then continues.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from metacli.cli import app
from metacli.engine.parallel import collective_error_detail
from metacli.errors import SpecError
from metacli.runlayer.checkpoint import load
from metacli.runlayer.distributed import DEFAULT_TIMEOUT_S, collective_timeout
from tests.test_distributed import SINUSOID, assert_close, checkpoint, rows

NODE_TIMEOUT_S = 20
"""METACLI_DIST_TIMEOUT of the nodes: a collective waiting on a silent peer gives up after this long, so a
node that misses its peer's death still ends well inside the tests' bounds."""


def free_port() -> int:
    """A TCP port nothing listens on now (the rendezvous store binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_nodes(cwd: Path, *args: str) -> list[subprocess.Popen[str]]:
    """Two torchrun launchers of ``metacli train ARGS``, one process each, meeting at a c10d rendezvous.

    Node i writes its output (its launcher's and its worker's) to ``cwd/node<i>.log``.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cwd / "cache")}
    env.update(METACLI_DIST_TIMEOUT=str(NODE_TIMEOUT_S))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    head = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    head += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "nodes"]
    return [
        subprocess.Popen(
            [*head, "-m", "metacli", "train", *args],
            cwd=cwd,
            env=env,
            stdout=(cwd / f"node{i}.log").open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


def node_processes(launcher: subprocess.Popen[str]) -> list[int]:
    """The launcher's pid and its workers' (torchrun starts each worker in a session of its own, so a
    signal to the launcher's process group does not reach them)."""
    children: list[int] = []
    for task in Path(f"/proc/{launcher.pid}/task").glob("*"):
        try:
            children += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:  # the thread ended meanwhile
            pass
    return [*children, launcher.pid]


def kill_node(launcher: subprocess.Popen[str]) -> None:
    """SIGKILL a node's launcher and workers, as a machine that dies takes all of them at once."""
    for pid in node_processes(launcher):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def nodes_cleanup() -> Iterator[list[subprocess.Popen[str]]]:
    """Launchers registered here are killed with their workers after the test, whatever its outcome."""
    launched: list[subprocess.Popen[str]] = []
    yield launched
    for node in launched:
        if node.poll() is None:
            kill_node(node)
        node.wait(timeout=30)


def wait_all(nodes: list[subprocess.Popen[str]], seconds: float) -> list[int]:
    """Every node's exit code; fails the test when one is still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    for node in nodes:
        try:
            node.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a node still runs after {seconds} s (a hang)")
    return [node.returncode for node in nodes]


def train_here(*args: str) -> None:
    """``metacli train ARGS`` as one process, in this one (no second torch import on the busy cores)."""
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output


def test_two_nodes_of_one_process_equal_one_process(
    tmp_path: Path, nodes_cleanup: list[subprocess.Popen[str]]
) -> None:
    """10 float64 steps on two nodes end where one process ends, to round-off (both nodes exit 0)."""
    args = [*SINUSOID, "--set", "train.meta_iters=10"]
    nodes_cleanup += start_nodes(tmp_path, *args, "--out", "two")
    train_here(*args, "--out", str(tmp_path / "one"))
    codes = wait_all(nodes_cleanup, 120)
    logs = "\n".join((tmp_path / f"node{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], logs
    two, one = checkpoint(tmp_path / "two"), checkpoint(tmp_path / "one")
    assert two["done"] == one["done"] == 10
    assert_close(two["state"]["meta"], one["state"]["meta"], tol=1e-12)
    assert [r["query_loss"] for r in rows(tmp_path / "two")] == pytest.approx(
        [r["query_loss"] for r in rows(tmp_path / "one")], rel=1e-12, abs=0
    )
    summary = (tmp_path / "two" / "summary.json").read_text()
    assert '"ranks": 2' in summary


def test_a_killed_node_stops_the_other_cleanly_and_one_process_resumes(
    tmp_path: Path, nodes_cleanup: list[subprocess.Popen[str]]
) -> None:
    """SIGKILL the node without rank 0 after the first checkpoint: rank 0's node exits 1 within the bound,
    saying that a process was lost and which checkpoint is kept; the checkpoint loads and one process
    continues it to the end."""
    args = [*SINUSOID, "--set", "train.meta_iters=100000", "--set", "train.checkpoint_every=5"]
    nodes_cleanup += start_nodes(tmp_path, *args, "--out", "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 90
    while not last.is_file():
        assert all(n.poll() is None for n in nodes_cleanup), "a node ended before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 90 s"
        time.sleep(0.05)
    logs = [(tmp_path / f"node{i}.log").read_text() for i in range(2)]
    writer = [i for i, log in enumerate(logs) if "training maml on sinusoid into run" in log]
    assert len(writer) == 1, logs  # rank 0 alone announces the run
    survivor, victim = nodes_cleanup[writer[0]], nodes_cleanup[1 - writer[0]]
    kill_node(victim)
    killed_at = time.monotonic()
    code = wait_all([survivor], 2 * NODE_TIMEOUT_S + 30)[0]
    waited = time.monotonic() - killed_at
    out = " ".join((tmp_path / f"node{writer[0]}.log").read_text().split())
    assert code != 0, out
    assert waited < NODE_TIMEOUT_S + 30, waited
    assert "error: the run stopped: another process of this torchrun launch died or stopped answering" in out
    saved = load(last, torch.device("cpu"))  # whole: the safe loader reads every entry
    step = int(saved["done"])
    assert step >= 5 and step % 5 == 0
    assert f"run/checkpoints/last.pt (step {step}) is kept: continue with 'metacli train --resume run'" in out
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "run" / "summary.json").exists()
    with pytest.warns(UserWarning, match=r"changed settings: train.meta_iters: 100000 -> \d+"):
        train_here("--resume", str(tmp_path / "run"), "--set", f"train.meta_iters={step + 3}", "-q")
    assert [r["step"] for r in rows(tmp_path / "run")] == list(range(1, step + 4))
    assert checkpoint(tmp_path / "run")["done"] == step + 3


def test_the_collective_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METACLI_DIST_TIMEOUT", raising=False)
    assert collective_timeout().total_seconds() == DEFAULT_TIMEOUT_S == 1800
    monkeypatch.setenv("METACLI_DIST_TIMEOUT", " 12.5 ")
    assert collective_timeout().total_seconds() == 12.5
    for bad in ("0", "-3", "ten", "nan", "inf"):
        monkeypatch.setenv("METACLI_DIST_TIMEOUT", bad)
        with pytest.raises(SpecError, match="positive number of seconds"):
            collective_timeout()


@pytest.mark.parametrize(
    ("message", "detail"),
    [
        (
            "\n[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
            "[127.0.0.1]:27545: Connection reset by peer. This is typically caused by a remote worker "
            "hanging or bugs in the application.",
            "Read error [127.0.0.1]:27545: Connection reset by peer",
        ),
        (
            "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 8000ms for "
            "recv operation to complete",
            "Timed out waiting 8000ms for recv operation to complete",
        ),
        ("", "no message"),
    ],
)
def test_a_collectives_error_is_cut_to_its_cause(message: str, detail: str) -> None:
    assert collective_error_detail(message) == detail
