"""The serve node against a real Orthanc on localhost (Debian ``orthanc`` + ``orthanc-gdcm``).

Orthanc checks the called AE title and knows our node as modality ``spine``; the node runs as a
subprocess (``tests/serve_node.py``, with the real test scorer) so that it can be killed with
SIGKILL and restarted on the same spool. Studies are uploaded with ``POST /instances`` and sent
with ``POST /modalities/spine/store``; results are looked for in Orthanc, in the source study.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import make_gray_dicom
from orthanc import GDCM_PLUGIN, ORTHANC_AET, Orthanc, free_port, orthanc_available, wait_for
from pydicom.uid import JPEG2000Lossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from serve_node import NODE_AET, TEST_SCU_AET

from spine_dfl.serve import status

pytestmark = pytest.mark.skipif(
    not orthanc_available(), reason="needs Debian's orthanc (/usr/sbin/Orthanc); .ci/run installs it as root"
)

TESTS = Path(__file__).parent
RESULT_SERIES_NUMBER = "7702"


@pytest.fixture(scope="module")
def node_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc_server(tmp_path_factory, node_port):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), NODE_AET, node_port, stable_age=1)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def orthanc(orthanc_server):
    """The module's Orthanc, restarted if an earlier test left it dead, so one crash fails one test."""
    if not orthanc_server.is_running:
        orthanc_server.stop()
        orthanc_server.start()
    yield orthanc_server
    if not orthanc_server.is_running:
        pytest.fail(f"Orthanc died during the test; its log ends:\n{orthanc_server.log_tail()}")


@pytest.fixture(scope="module")
def synth_images(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("synth")
    subprocess.run(
        [sys.executable, "-m", "spine_dfl", "synth", str(out / "cohort"), "--patients", "2", "--seed", "3"],
        check=True, capture_output=True, timeout=120,
    )
    return sorted((out / "cohort" / "images").glob("*.dcm"))


class NodeProcess:
    """``tests/serve_node.py`` in a subprocess on one spool; restartable, killable."""

    def __init__(self, spool: Path, port: int, orthanc: Orthanc) -> None:
        self.spool, self.port, self.orthanc = spool, port, orthanc
        self.process: subprocess.Popen | None = None

    def start(self, *, stable_age: float = 1.0, score_delay: float = 0.0) -> None:
        command = [
            sys.executable, str(TESTS / "serve_node.py"), "--spool", str(self.spool), "--port", str(self.port),
            "--send-to", f"{ORTHANC_AET}@127.0.0.1:{self.orthanc.dicom_port}",
            "--stable-age", str(stable_age), "--score-delay", str(score_delay),
        ]
        self.spool.mkdir(parents=True, exist_ok=True)
        with open(self.spool.parent / "node.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=TESTS)
        wait_for(self._echo, 30, what="the node to answer C-ECHO")

    def _echo(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"node exited with {self.process.returncode}: see {self.spool.parent / 'node.log'}")
        ae = AE(ae_title=TEST_SCU_AET)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 2
        assoc = ae.associate("127.0.0.1", self.port, ae_title=NODE_AET)
        if not assoc.is_established:
            return False
        assoc.release()
        return True

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def query(self, sql: str) -> list[tuple]:
        db = sqlite3.connect(f"file:{self.spool / 'queue.sqlite'}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()


@pytest.fixture
def node(tmp_path, orthanc, node_port):
    process = NodeProcess(tmp_path / "spool", node_port, orthanc)
    yield process
    process.stop()


def result_ids(orthanc: Orthanc, study_uid: str) -> list[str]:
    """Orthanc IDs of the result instances (series 7702) in the study."""
    study_id = orthanc.study_id(study_uid)
    if study_id is None:
        return []
    series = orthanc.get(f"/studies/{study_id}/series?expand")
    return [
        instance
        for item in series
        if item["MainDicomTags"].get("SeriesNumber") == RESULT_SERIES_NUMBER
        for instance in item["Instances"]
    ]


def wait_for_one_result(orthanc: Orthanc, study_uid: str, timeout: float = 60.0) -> pydicom.Dataset:
    """Wait for a result in the study, check no second one follows, return it as a dataset."""
    wait_for(lambda: result_ids(orthanc, study_uid), timeout, what="a result in the source study")
    time.sleep(1.5)
    ids = result_ids(orthanc, study_uid)
    assert len(ids) == 1, f"expected exactly one result, Orthanc holds {len(ids)}"
    return pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{ids[0]}/file")))


def referenced(result: pydicom.Dataset) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID) for item in result.SourceImageSequence}


def make_study(directory: Path, count: int, size: int = 64, **attributes) -> list[Path]:
    study_uid, series_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(count)
    paths = []
    for index in range(count):
        path = directory / f"image{index:04d}.dcm"
        make_gray_dicom(
            path, rng.integers(0, 4095, (size, size)), StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
            InstanceNumber=index + 1, PatientID="SERVE-TEST", **attributes,
        )
        paths.append(path)
    return paths


def upload_all(orthanc: Orthanc, paths: list[Path]) -> list[dict]:
    return [orthanc.upload(path) for path in paths]


# -- the acceptance scenarios ----------------------------------------------------------------------
def test_happy_path_one_result_per_study_in_the_source_study(orthanc, node, synth_images):
    node.start()
    sources = {}
    for path in synth_images:
        answer = orthanc.upload(path)
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        sources[str(dataset.StudyInstanceUID)] = (answer["ParentStudy"], str(dataset.SOPInstanceUID))
    assert len(sources) == 2
    for orthanc_study, _ in sources.values():
        orthanc.store_to_node([orthanc_study])
    results = {}
    for study_uid, (_, sop_uid) in sources.items():
        results[study_uid] = result = wait_for_one_result(orthanc, study_uid)
        assert result.StudyInstanceUID == study_uid and referenced(result) == {sop_uid}
        assert result.Manufacturer == "spine-dfl"
    if shutil.which("dciodvfy"):
        for result in results.values():
            target = node.spool.parent / "result.dcm"
            result.save_as(target)
            checked = subprocess.run(["dciodvfy", str(target)], capture_output=True, text=True, timeout=60)
            errors = [line for line in checked.stderr.splitlines() if line.startswith("Error")]
            assert not errors, errors
    # a PACS routing the results back, and the same study sent again: nothing new is made
    first_study = next(iter(sources))
    orthanc.store_to_node(result_ids(orthanc, first_study) + [sources[first_study][0]])
    time.sleep(2.5)
    assert len(result_ids(orthanc, first_study)) == 1
    summary = status(node.spool)
    assert summary["states"]["done"] == 2 and summary["instances"] == 2
    assert node.query("SELECT MAX(generation) FROM studies") == [(0,)]


def test_a_study_split_over_two_associations_is_scored_once_and_a_late_instance_supersedes(
    orthanc, node, tmp_path
):
    node.start(stable_age=3.0)
    paths = make_study(tmp_path / "split", 3)
    answers = upload_all(orthanc, paths)
    orthanc.store_to_node([answers[0]["ID"]])
    orthanc.store_to_node([answers[1]["ID"]])
    study_uid = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    sop_uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    result = wait_for_one_result(orthanc, study_uid)
    assert referenced(result) == set(sop_uids[:2])
    assert node.query("SELECT generation, COUNT(*) FROM results GROUP BY generation") == [(0, 1)]
    # a late instance after the study is done: a second, superseding result with new UIDs
    orthanc.store_to_node([answers[2]["ID"]])
    wait_for(lambda: len(result_ids(orthanc, study_uid)) == 2, 30, what="the superseding result")
    latest = [pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{i}/file"))) for i in result_ids(orthanc, study_uid)]
    assert {frozenset(referenced(r)) for r in latest} == {frozenset(sop_uids[:2]), frozenset(sop_uids)}
    assert node.query("SELECT state, generation FROM studies") == [("done", 1)]


def test_a_jpeg2000_instance_is_accepted(orthanc, node, synth_images):
    if not GDCM_PLUGIN.is_file():
        pytest.skip("Orthanc transcodes to JPEG 2000 only with its GDCM plugin (Debian orthanc-gdcm)")
    node.start()
    source = pydicom.dcmread(synth_images[0])  # a study of its own: the happy path scored the synthetic one
    source.StudyInstanceUID, source.SeriesInstanceUID = generate_uid(), generate_uid()
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    source.save_as(buffer, enforce_file_format=True)
    original = orthanc.upload(buffer.getvalue())
    encoded_study = orthanc.transcode_study(original["ParentStudy"], JPEG2000Lossless)
    (instance,) = orthanc.get(f"/studies/{encoded_study}/instances")
    dataset = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{instance['ID']}/file")))
    assert dataset.file_meta.TransferSyntaxUID == JPEG2000Lossless
    orthanc.store_to_node([instance["ID"]])
    result = wait_for_one_result(orthanc, str(dataset.StudyInstanceUID))
    assert referenced(result) == {str(dataset.SOPInstanceUID)}
    (spooled,) = node.spool.glob(f"instances/*/{dataset.SOPInstanceUID}.dcm")
    assert pydicom.dcmread(spooled, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG2000Lossless


def test_a_corrupt_instance_fails_alone_with_its_reason(orthanc, node, tmp_path):
    node.start()
    paths = make_study(tmp_path / "corrupt", 3)
    broken = pydicom.dcmread(paths[1])
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 3]  # truncated pixel data
    broken.save_as(paths[1])
    upload_all(orthanc, paths)
    study_uid = str(broken.StudyInstanceUID)
    orthanc.store_to_node([orthanc.study_id(study_uid)])
    result = wait_for_one_result(orthanc, study_uid)
    good = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (paths[0], paths[2])}
    assert referenced(result) == good
    failures = node.query("SELECT sop_uid, error FROM instances WHERE error IS NOT NULL")
    assert [sop for sop, _ in failures] == [str(broken.SOPInstanceUID)]
    assert "cannot decode" in failures[0][1] and str(broken.SOPInstanceUID) not in failures[0][1]
    assert status(node.spool)["failed_instances"] == 1


def test_kill9_while_receiving_then_restart_loses_nothing(orthanc, node, tmp_path):
    node.start(stable_age=5.0)
    paths = make_study(tmp_path / "big", 150, size=256)
    upload_all(orthanc, paths)
    study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    job = orthanc.store_to_node([orthanc.study_id(study_uid)], asynchronous=True)
    spooled = lambda: len(list(node.spool.glob("instances/*/*.dcm")))  # noqa: E731
    wait_for(lambda: spooled() >= 10, 60, interval=0.02, what="the first instances to arrive")
    node.kill9()
    assert spooled() < len(paths), "the kill must land while receiving"
    wait_for(lambda: orthanc.get(f"/jobs/{job['ID']}")["State"] == "Failure", 60, what="Orthanc's job to fail")
    node.start(stable_age=5.0)
    orthanc.post(f"/jobs/{job['ID']}/resubmit", {})  # what a PACS does with a failed transfer
    result = wait_for_one_result(orthanc, study_uid, timeout=90)
    assert len(referenced(result)) == len(paths)
    assert node.query("SELECT COUNT(*) FROM instances") == [(len(paths),)]
    assert spooled() == len(paths) and not list(node.spool.glob("instances/*/.*.tmp"))


def test_kill9_while_scoring_then_restart_sends_one_result(orthanc, node, tmp_path):
    node.start(score_delay=30.0)
    paths = make_study(tmp_path / "scoring", 2)
    upload_all(orthanc, paths)
    study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    orthanc.store_to_node([orthanc.study_id(study_uid)])
    wait_for(lambda: node.query("SELECT state FROM studies") == [("scoring",)], 30, what="scoring to start")
    node.kill9()
    node.start()
    result = wait_for_one_result(orthanc, study_uid)
    assert len(referenced(result)) == 2
    assert node.query("SELECT state, generation FROM studies") == [("done", 0)]


def test_results_arrive_when_orthanc_comes_back(orthanc, node, tmp_path):
    node.start(score_delay=1.0)
    paths = make_study(tmp_path / "down", 2)
    upload_all(orthanc, paths)
    study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    orthanc.store_to_node([orthanc.study_id(study_uid)])
    orthanc.stop()
    try:
        failed_sending = "SELECT attempts FROM studies WHERE state = 'sending' AND last_error LIKE 'sending failed%'"
        wait_for(lambda: node.query(failed_sending), 60, what="a failed sending attempt")
    finally:
        orthanc.start()
    result = wait_for_one_result(orthanc, study_uid)
    assert len(referenced(result)) == 2
    assert node.query("SELECT state FROM studies") == [("done",)]


def test_orthanc_calling_with_a_wrong_ae_title_is_refused(orthanc, node, tmp_path):
    node.start()
    (path,) = make_study(tmp_path / "intruder", 1)
    answer = orthanc.upload(path)
    with pytest.raises(urllib.error.HTTPError):  # Orthanc reports the refused association as a failed store
        body = {"Resources": [answer["ID"]], "Synchronous": True, "LocalAet": "INTRUDER"}
        orthanc.post("/modalities/spine/store", body)
    assert not list(node.spool.glob("instances/*/*.dcm"))
    orthanc.store_to_node([answer["ID"]])  # the same instance from the allowed AE title is taken
    wait_for(lambda: list(node.spool.glob("instances/*/*.dcm")), 20, what="the instance from ORTHANC")
