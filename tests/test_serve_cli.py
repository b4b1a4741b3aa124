"""``spine-dfl serve`` as a user runs it: it starts, answers C-ECHO, ``serve status`` prints the queue,
SIGTERM stops it with exit status 0; bad arguments are one line and exit status 2."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from orthanc import free_port, wait_for
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from spine_dfl.cli import main

CALLER = "CLITEST"


def _echo(port: int, process: subprocess.Popen, log: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"spine-dfl serve exited with {process.returncode}:\n{log.read_text()}")
    ae = AE(ae_title=CALLER)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title="SPINEDFL")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return status is not None and status.Status == 0x0000


@pytest.fixture(scope="module")
def running_node(located_grader_checkpoints, tmp_path_factory):
    """``spine-dfl serve`` with the grader and a separate locator, listening on a free port."""
    folder = tmp_path_factory.mktemp("serve_cli")
    spool, port, log = folder / "spool", free_port(), folder / "serve.log"
    command = [sys.executable, "-m", "spine_dfl", "serve", "start", str(located_grader_checkpoints["grader"]),
               "--locator", str(located_grader_checkpoints["locator"]), "--spool", str(spool),
               "--port", str(port), "--host", "127.0.0.1", "--send-to", "PACS@127.0.0.1:1", "--allow", CALLER,
               "--stable-age", "1", "--device", "cpu"]
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _echo(port, process, log), 180, what="spine-dfl serve to answer C-ECHO")
        yield {"process": process, "spool": spool, "port": port, "log": log}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_answers_echo_reports_status_and_stops_on_sigterm(running_node, located_grader_checkpoints, capsys):
    spool = running_node["spool"]
    assert main(["serve", "status", "--spool", str(spool)]) == 0
    printed = capsys.readouterr().out
    assert "studies: received 0  ready 0  scoring 0  sending 0  done 0  failed 0" in printed
    assert "instances: 0 received, 0 failed" in printed and "oldest waiting study: none" in printed
    # the spool and the port are the running node's: a second node says so in one line
    for argv, expected in [
        (["--spool", str(spool), "--port", str(free_port())], "another node is using this spool"),
        (["--spool", str(spool.parent / "other"), "--port", str(running_node["port"])], "port in use"),
    ]:
        code = main(["serve", "start", str(located_grader_checkpoints["embedded"]), *argv, "--host", "127.0.0.1",
                     "--send-to", "PACS@127.0.0.1:1", "--device", "cpu"])
        assert code == 2 and expected in capsys.readouterr().err
    process = running_node["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert "Traceback" not in running_node["log"].read_text()


def test_a_checkpoint_that_cannot_serve_is_one_line_and_exit_2(located_grader_checkpoints, tmp_path, capsys):
    common = ["--spool", str(tmp_path / "spool"), "--port", str(free_port()), "--send-to", "PACS@127.0.0.1:1",
              "--device", "cpu"]
    assert main(["serve", "start", str(located_grader_checkpoints["grader"]), *common]) == 2
    assert "needs the vertebra locator" in capsys.readouterr().err
    assert main(["serve", "start", str(located_grader_checkpoints["locator"]), *common]) == 2
    assert "locator" in capsys.readouterr().err
    assert main(["serve", "start", str(located_grader_checkpoints["embedded"]), "--spool", str(tmp_path / "s"),
                 "--send-to", "nonsense"]) == 2
    assert "AET@HOST:PORT" in capsys.readouterr().err
    assert main(["serve", "start", "--spool", str(tmp_path / "s")]) == 2
    assert "required: checkpoint, --send-to" in capsys.readouterr().err
    assert main(["serve", "status", "--spool", str(tmp_path / "nowhere")]) == 2
    assert "no node queue here" in capsys.readouterr().err
    assert not (tmp_path / "spool").exists() or not list((tmp_path / "spool").rglob("*.dcm"))
