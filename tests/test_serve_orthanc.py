"""The serve node against a real Orthanc on localhost (Debian ``orthanc`` + ``orthanc-gdcm``).

Orthanc checks the called AE title and knows our node as modality ``spine``; the node runs as a
subprocess (``tests/serve_node.py``) so that it can be killed with SIGKILL and restarted on the
same spool. Where scoring matters it runs the real ``StudyScorer`` (the session's tiny locator
embedded in a random-init grader, conftest) on synthetic radiographs; the tests about reception
alone use the script's small thumbnail scorer. Studies are uploaded with ``POST /instances`` and
sent with ``POST /modalities/spine/store``; results are looked for in Orthanc, in the source study.
"""

from __future__ import annotations

import io
import shutil
import signal
import sqlite3
import subprocess
import sys
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

from spine_dfl.score import score
from spine_dfl.score.dicom_jobs import checkpoint_sha256
from spine_dfl.serve import status

pytestmark = pytest.mark.skipif(
    not orthanc_available(), reason="needs Debian's orthanc (/usr/sbin/Orthanc); .ci/run installs it as root"
)

TESTS = Path(__file__).parent
SR_SERIES, SC_SERIES = "7701", "7702"


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
def checkpoint(located_grader_checkpoints) -> Path:
    """A per-vertebra grader with the locator embedded: one file, as a site would deploy it."""
    return located_grader_checkpoints["embedded"]


@pytest.fixture(scope="module")
def radiographs(small_cohort) -> list[Path]:
    """Synthetic lateral radiographs the session's tiny locator finds vertebrae in."""
    return sorted((small_cohort / "images").glob("*.dcm"))[:3]


class NodeProcess:
    """``tests/serve_node.py`` in a subprocess on one spool; restartable, killable."""

    def __init__(self, spool: Path, port: int, orthanc: Orthanc) -> None:
        self.spool, self.port, self.orthanc = spool, port, orthanc
        self.process: subprocess.Popen | None = None

    def start(self, checkpoint: Path | None, *, stable_age: float = 1.0, score_delay: float = 0.0,
              hold_after: int | None = None) -> None:
        """With ``checkpoint`` the real scorer, else the script's thumbnail scorer (reception tests)."""
        command = [
            sys.executable, str(TESTS / "serve_node.py"), "--spool", str(self.spool), "--port", str(self.port),
            "--send-to", f"{ORTHANC_AET}@127.0.0.1:{self.orthanc.dicom_port}",
            "--stable-age", str(stable_age), "--score-delay", str(score_delay),
        ] + (["--checkpoint", str(checkpoint)] if checkpoint is not None else [])
        command += ["--hold-after", str(hold_after)] if hold_after is not None else []
        self.spool.mkdir(parents=True, exist_ok=True)
        with open(self.spool.parent / "node.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=TESTS)
        # the node imports torch and loads the model first: minutes on a busy machine
        wait_for(self._echo, 180, what="the node to answer C-ECHO")

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
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def query(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        db = sqlite3.connect(f"file:{self.spool / 'queue.sqlite'}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql, parameters).fetchall()
        finally:
            db.close()


@pytest.fixture
def node(tmp_path, orthanc, node_port):
    process = NodeProcess(tmp_path / "spool", node_port, orthanc)
    yield process
    process.stop()


def result_ids(orthanc: Orthanc, study_uid: str, series_number: str = SC_SERIES) -> list[str]:
    """Orthanc IDs of the result instances of one kind (SR 7701, SC 7702) in the study."""
    study_id = orthanc.study_id(study_uid)
    if study_id is None:
        return []
    series = orthanc.get(f"/studies/{study_id}/series?expand")
    return [
        instance
        for item in series
        if item["MainDicomTags"].get("SeriesNumber") == series_number
        for instance in item["Instances"]
    ]


def fetch(orthanc: Orthanc, orthanc_id: str) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{orthanc_id}/file")))


def study_done(node: NodeProcess, study_uid: str) -> bool:
    """The node has sent every result of the study (Orthanc acknowledged each before it is marked)."""
    return node.query("SELECT state FROM studies WHERE study_uid = ?", (study_uid,)) == [("done",)]


def wait_for_results(orthanc: Orthanc, node: NodeProcess, study_uid: str, count: int = 1,
                     kinds: tuple[str, ...] = (SR_SERIES, SC_SERIES),
                     timeout: float = 180.0) -> dict[str, list[pydicom.Dataset]]:
    """Wait until the node has sent every result of the study, check there are ``count`` of each
    kind in Orthanc, return them by kind."""
    wait_for(lambda: study_done(node, study_uid), timeout, what="the node to send the study's results")
    found = {kind: result_ids(orthanc, study_uid, kind) for kind in kinds}
    assert {kind: len(ids) for kind, ids in found.items()} == {kind: count for kind in kinds}
    return {kind: [fetch(orthanc, orthanc_id) for orthanc_id in ids] for kind, ids in found.items()}


def referenced(result: pydicom.Dataset) -> set[str]:
    """Source images a result references: an SC's SourceImageSequence, an SR's evidence."""
    if "SourceImageSequence" in result:
        return {str(item.ReferencedSOPInstanceUID) for item in result.SourceImageSequence}
    return {str(sop.ReferencedSOPInstanceUID) for study in result.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}


def _items(sequence) -> list:
    """Every content item of an SR content tree, depth first."""
    out = []
    for item in sequence:
        out.append(item)
        out += _items(item.get("ContentSequence", []))
    return out


def sr_grades(sr: pydicom.Dataset) -> list[tuple[str, str, float]]:
    """Per measurement group: (tracking identifier, predicted grade, its probability)."""
    groups = []
    for item in _items(sr.ContentSequence):
        if item.ValueType != "CONTAINER" or item.ConceptNameCodeSequence[0].CodeValue != "125007":
            continue
        members = {child.ConceptNameCodeSequence[0].CodeValue: child for child in item.ContentSequence}
        if "PREDGRADE" not in members:  # an image-level group (level identification, training distribution)
            continue
        groups.append((str(members["112039"].TextValue), str(members["PREDGRADE"].ConceptCodeSequence[0].CodeMeaning),
                       float(members["122157"].MeasuredValueSequence[0].NumericValue)))
    return groups


def algorithm_parameters(sr: pydicom.Dataset) -> set[str]:
    """TID 4019 Algorithm Parameters (DCM 111002) anywhere in the SR."""
    return {str(item.TextValue) for item in _items(sr.ContentSequence)
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "111002"}


def assert_dciodvfy_accepts(result: pydicom.Dataset, folder: Path) -> None:
    if not shutil.which("dciodvfy"):
        return
    target = folder / f"{result.SOPInstanceUID}.dcm"
    result.save_as(target)
    checked = subprocess.run(["dciodvfy", str(target)], capture_output=True, text=True, timeout=60)
    errors = [line for line in checked.stderr.splitlines() if line.startswith("Error")]
    assert not errors, errors


def make_study(directory: Path, count: int, size: int = 64, **attributes) -> list[Path]:
    """``count`` noise images in one new study (for the tests about reception alone)."""
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


def radiograph_study(sources: list[Path]) -> tuple[str, list[bytes], list[str]]:
    """Copies of synthetic radiographs as one new study (new study, series and SOP UIDs, one patient):
    its Study UID, the encoded instances and their SOP UIDs."""
    study_uid, series_uid = generate_uid(), generate_uid()
    encoded, sop_uids = [], []
    for number, path in enumerate(sources, start=1):
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.InstanceNumber = study_uid, series_uid, number
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.PatientID, dataset.PatientName = "SERVE-TEST", "Serve^Test"
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        encoded.append(buffer.getvalue())
        sop_uids.append(str(dataset.SOPInstanceUID))
    return study_uid, encoded, sop_uids


def upload_all(orthanc: Orthanc, paths_or_bytes: list) -> list[dict]:
    return [orthanc.upload(item) for item in paths_or_bytes]


# -- the acceptance scenarios ----------------------------------------------------------------------
def test_happy_path_one_sr_and_one_sc_per_study_with_the_grades_of_spine_dfl_score(
    orthanc, node, checkpoint, radiographs, tmp_path
):
    node.start(checkpoint)
    sources = {}
    for path in radiographs[:2]:
        answer = orthanc.upload(path)
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        sources[str(dataset.StudyInstanceUID)] = (answer["ParentStudy"], str(dataset.SOPInstanceUID))
    assert len(sources) == 2
    for orthanc_study, _ in sources.values():
        orthanc.store_to_node([orthanc_study])
    # what `spine-dfl score --dicom-out` gives for the same files
    score(checkpoint, radiographs[:2], tmp_path / "batch", dicom_out=tmp_path / "batch_dicom", workers=0,
          progress=False)
    assert len(list((tmp_path / "batch_dicom").glob("*_SR.dcm"))) == 2
    sha = checkpoint_sha256(checkpoint)
    for study_uid, (_, sop_uid) in sources.items():
        results = wait_for_results(orthanc, node, study_uid)
        (sr,), (sc,) = results[SR_SERIES], results[SC_SERIES]
        for result in (sr, sc):
            assert result.StudyInstanceUID == study_uid and referenced(result) == {sop_uid}
            assert result.Manufacturer == "spine-dfl"
            assert_dciodvfy_accepts(result, tmp_path)
        batch_sr = pydicom.dcmread(tmp_path / "batch_dicom" / f"{sop_uid}_SR.dcm")
        node_grades, batch_grades = sr_grades(sr), sr_grades(batch_sr)
        assert batch_grades and [g[:2] for g in node_grades] == [g[:2] for g in batch_grades]
        np.testing.assert_allclose([g[2] for g in node_grades], [g[2] for g in batch_grades], atol=1e-4)
        assert f"checkpoint sha256 {sha}" in algorithm_parameters(sr) == algorithm_parameters(batch_sr)
    # a PACS routing the results back, and the same study sent again: nothing new is made
    first_study = next(iter(sources))
    routed_back = result_ids(orthanc, first_study, SR_SERIES) + result_ids(orthanc, first_study, SC_SERIES)
    # the store is synchronous and the node decides on each instance before it answers: once it
    # returns, a study left done at generation 0 has nothing more to score or send
    orthanc.store_to_node(routed_back + [sources[first_study][0]])
    assert node.query("SELECT state, generation FROM studies WHERE study_uid = ?", (first_study,)) == [("done", 0)]
    assert len(result_ids(orthanc, first_study, SR_SERIES)) == len(result_ids(orthanc, first_study)) == 1
    summary = status(node.spool)
    assert summary["states"]["done"] == 2 and summary["instances"] == 2
    assert node.query("SELECT MAX(generation) FROM studies") == [(0,)]


def test_a_study_split_over_two_associations_is_scored_once_and_a_late_instance_supersedes(
    orthanc, node, checkpoint, radiographs, tmp_path
):
    node.start(checkpoint, stable_age=3.0)
    study_uid, encoded, sop_uids = radiograph_study(radiographs)
    answers = upload_all(orthanc, encoded)
    orthanc.store_to_node([answers[0]["ID"]])
    orthanc.store_to_node([answers[1]["ID"]])
    results = wait_for_results(orthanc, node, study_uid, count=2)
    assert {frozenset(referenced(r)) for r in results[SC_SERIES]} == {frozenset([sop]) for sop in sop_uids[:2]}
    assert set().union(*(referenced(r) for r in results[SR_SERIES])) == set(sop_uids[:2])
    assert node.query("SELECT generation, COUNT(*) FROM results GROUP BY generation") == [(0, 4)]
    # a late instance after the study is done: superseding results of all three, with new UIDs
    orthanc.store_to_node([answers[2]["ID"]])
    wait_for(lambda: node.query("SELECT state, generation FROM studies") == [("done", 1)], 180,
             what="the superseding results to be sent")
    assert len(result_ids(orthanc, study_uid)) == len(result_ids(orthanc, study_uid, SR_SERIES)) == 5
    by_series: dict[str, set[str]] = {}
    for orthanc_id in result_ids(orthanc, study_uid):
        sc = fetch(orthanc, orthanc_id)
        by_series.setdefault(str(sc.SeriesInstanceUID), set()).update(referenced(sc))
    assert sorted(map(sorted, by_series.values())) == sorted([sorted(sop_uids[:2]), sorted(sop_uids)])


def test_a_jpeg2000_instance_is_accepted(orthanc, node, checkpoint, radiographs, tmp_path):
    if not GDCM_PLUGIN.is_file():
        pytest.skip("Orthanc transcodes to JPEG 2000 only with its GDCM plugin (Debian orthanc-gdcm)")
    node.start(checkpoint)
    _, (encoded,), _ = radiograph_study(radiographs[:1])
    original = orthanc.upload(encoded)
    encoded_study = orthanc.transcode_study(original["ParentStudy"], JPEG2000Lossless)
    (instance,) = orthanc.get(f"/studies/{encoded_study}/instances")
    dataset = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{instance['ID']}/file")))
    assert dataset.file_meta.TransferSyntaxUID == JPEG2000Lossless
    orthanc.store_to_node([instance["ID"]])
    results = wait_for_results(orthanc, node, str(dataset.StudyInstanceUID))
    assert referenced(results[SR_SERIES][0]) == referenced(results[SC_SERIES][0]) == {str(dataset.SOPInstanceUID)}
    (spooled,) = node.spool.glob(f"instances/*/{dataset.SOPInstanceUID}.dcm")
    assert pydicom.dcmread(spooled, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG2000Lossless


def test_a_corrupt_instance_fails_alone_with_its_reason(orthanc, node, checkpoint, radiographs, tmp_path):
    node.start(checkpoint)
    study_uid, encoded, sop_uids = radiograph_study(radiographs)
    broken = pydicom.dcmread(io.BytesIO(encoded[1]))
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 3]  # truncated pixel data
    buffer = io.BytesIO()
    broken.save_as(buffer, enforce_file_format=True)
    encoded[1] = buffer.getvalue()
    upload_all(orthanc, encoded)
    orthanc.store_to_node([orthanc.study_id(study_uid)])
    results = wait_for_results(orthanc, node, study_uid, count=2)
    good = {sop_uids[0], sop_uids[2]}
    assert set().union(*(referenced(r) for r in results[SC_SERIES])) == good
    assert set().union(*(referenced(r) for r in results[SR_SERIES])) == good
    failures = node.query("SELECT sop_uid, error FROM instances WHERE error IS NOT NULL")
    assert [sop for sop, _ in failures] == [sop_uids[1]]
    assert "pixel data" in failures[0][1].lower() and sop_uids[1] not in failures[0][1]
    assert status(node.spool)["failed_instances"] == 1


def test_kill9_while_receiving_then_restart_loses_nothing(orthanc, node, tmp_path):
    node.start(None, stable_age=5.0, hold_after=10)  # reception alone: the thumbnail scorer
    paths = make_study(tmp_path / "big", 150, size=256)
    upload_all(orthanc, paths)
    study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    job = orthanc.store_to_node([orthanc.study_id(study_uid)], asynchronous=True)
    spooled = lambda: len(list(node.spool.glob("instances/*/*.dcm")))  # noqa: E731
    received = "SELECT COUNT(*) FROM instances"
    wait_for(lambda: node.query(received) == [(10,)], 60, interval=0.02, what="ten instances, then the node holds")
    node.kill9()  # the 11th C-STORE is under way
    assert spooled() == 10
    job_state = lambda: orthanc.get(f"/jobs/{job['ID']}")["State"]  # noqa: E731
    wait_for(lambda: job_state() == "Failure", 60, what="Orthanc's job to fail")
    node.start(None, stable_age=5.0)
    orthanc.post(f"/jobs/{job['ID']}/resubmit", {})  # what a PACS does with a failed transfer
    wait_for(lambda: job_state() == "Success", 120, what="Orthanc's resubmitted job to finish")
    wait_for(lambda: study_done(node, study_uid), 180, what="the node to send the study's results")
    assert node.query(received) == [(len(paths),)]
    assert spooled() == len(paths) and not list(node.spool.glob("instances/*/.*.tmp"))
    # the ten may have been scored before the rest came back (the restart outlasts the stable age):
    # one result per generation, the last of them of every instance
    ((generation,),) = node.query("SELECT generation FROM studies")
    results = [fetch(orthanc, orthanc_id) for orthanc_id in result_ids(orthanc, study_uid, SC_SERIES)]
    assert len(results) == generation + 1
    assert max(len(referenced(result)) for result in results) == len(paths)


def test_kill9_while_scoring_then_restart_sends_one_result(orthanc, node, checkpoint, radiographs, tmp_path):
    node.start(checkpoint, score_delay=30.0)
    study_uid, encoded, sop_uids = radiograph_study(radiographs[:2])
    upload_all(orthanc, encoded)
    orthanc.store_to_node([orthanc.study_id(study_uid)])
    wait_for(lambda: node.query("SELECT state FROM studies") == [("scoring",)], 60, what="scoring to start")
    node.kill9()
    node.start(checkpoint)
    results = wait_for_results(orthanc, node, study_uid, count=2)
    for kind in (SR_SERIES, SC_SERIES):
        assert set().union(*(referenced(r) for r in results[kind])) == set(sop_uids)
    assert node.query("SELECT state, generation FROM studies") == [("done", 0)]


def test_results_arrive_when_orthanc_comes_back(orthanc, node, checkpoint, radiographs, tmp_path):
    node.start(checkpoint, score_delay=1.0)
    study_uid, encoded, sop_uids = radiograph_study(radiographs[:1])
    upload_all(orthanc, encoded)
    orthanc.store_to_node([orthanc.study_id(study_uid)])
    orthanc.stop()
    try:
        failed_sending = "SELECT attempts FROM studies WHERE state = 'sending' AND last_error LIKE 'sending failed%'"
        wait_for(lambda: node.query(failed_sending), 60, what="a failed sending attempt")
    finally:
        orthanc.start()
    results = wait_for_results(orthanc, node, study_uid)
    assert referenced(results[SR_SERIES][0]) == referenced(results[SC_SERIES][0]) == set(sop_uids)
    assert node.query("SELECT state FROM studies") == [("done",)]


def test_orthanc_calling_with_a_wrong_ae_title_is_refused(orthanc, node, tmp_path):
    node.start(None)
    (path,) = make_study(tmp_path / "intruder", 1)
    answer = orthanc.upload(path)
    with pytest.raises(urllib.error.HTTPError):  # Orthanc reports the refused association as a failed store
        body = {"Resources": [answer["ID"]], "Synchronous": True, "LocalAet": "INTRUDER"}
        orthanc.post("/modalities/spine/store", body)
    assert not list(node.spool.glob("instances/*/*.dcm"))
    orthanc.store_to_node([answer["ID"]])  # the same instance from the allowed AE title is taken
    wait_for(lambda: list(node.spool.glob("instances/*/*.dcm")), 20, what="the instance from ORTHANC")
