"""The serve node's parts without Orthanc: queue states, durable spool, SCP rules, retry, status.

Network tests here talk to an in-process Node over real sockets with a pynetdicom SCU.
"""

from __future__ import annotations

import json
import time
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import make_gray_dicom
from orthanc import free_port
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification
from serve_node import NODE_AET, TEST_SCU_AET, score_study_as_sc

from spine_dfl.serve import Node, RetryPolicy, format_status, result_uid_seed, status, study_tag
from spine_dfl.serve.queue import WorkQueue
from spine_dfl.serve.scp import decodable_transfer_syntaxes
from spine_dfl.serve.sender import Destination
from spine_dfl.serve.spool import OUT_OF_RESOURCES, SUCCESS, Spool, valid_uid


# -- queue -----------------------------------------------------------------------------------------
def test_queue_walks_a_study_through_every_state(tmp_path):
    queue = WorkQueue(tmp_path / "q.sqlite")
    assert queue.add_instance("1.2.3.1", "1.2.3", "a.dcm", now=100.0)
    assert not queue.add_instance("1.2.3.1", "1.2.3", "a.dcm", now=101.0), "a duplicate is not added again"
    assert queue.promote_stable(60.0, now=150.0) == 0, "not stable yet"
    assert queue.promote_stable(60.0, now=161.0) == 1
    claim = queue.claim(30.0, now=161.0)
    assert (claim.state, claim.generation) == ("scoring", 0)
    assert queue.claim(30.0, now=162.0) is None, "leased"
    assert queue.finish_scoring(claim, ["r.dcm"], {}, now=163.0)
    send = queue.claim(30.0, now=163.0)
    assert send.state == "sending" and queue.unsent_results("1.2.3", 0) == ["r.dcm"]
    queue.mark_sent("1.2.3", 0, "r.dcm")
    queue.finish_sending(send, now=164.0)
    assert queue.query("SELECT state FROM studies") == [("done",)]


def test_an_expired_lease_is_claimed_again_after_a_crash(tmp_path):
    queue = WorkQueue(tmp_path / "q.sqlite")
    queue.add_instance("1.2.3.1", "1.2.3", "a.dcm", now=0.0)
    queue.promote_stable(1.0, now=5.0)
    first = queue.claim(30.0, now=5.0)
    queue.close()  # the worker's process dies here, leaving the study in "scoring"
    queue = WorkQueue(tmp_path / "q.sqlite")
    assert queue.claim(30.0, now=20.0) is None
    again = queue.claim(30.0, now=36.0)
    assert (again.study_uid, again.state) == (first.study_uid, "scoring")


def test_a_late_instance_supersedes_with_a_new_generation(tmp_path):
    queue = WorkQueue(tmp_path / "q.sqlite")
    queue.add_instance("1.2.3.1", "1.2.3", "a.dcm", now=0.0)
    queue.promote_stable(1.0, now=2.0)
    claim = queue.claim(30.0, now=2.0)
    queue.add_instance("1.2.3.2", "1.2.3", "b.dcm", now=3.0)  # arrives while scoring
    assert not queue.finish_scoring(claim, ["r.dcm"], {}, now=4.0), "a result without b.dcm is dropped"
    assert queue.query("SELECT state, generation FROM studies") == [("received", 1)]
    queue.promote_stable(1.0, now=5.0)
    claim = queue.claim(30.0, now=5.0)
    assert queue.finish_scoring(claim, ["r1.dcm"], {}, now=6.0)
    queue.finish_sending(queue.claim(30.0, now=6.0), now=7.0)
    queue.add_instance("1.2.3.3", "1.2.3", "c.dcm", now=8.0)  # arrives after done
    assert queue.query("SELECT state, generation FROM studies") == [("received", 2)]


def test_retry_policy_backs_off_then_parks():
    policy = RetryPolicy(max_attempts=4, base_delay=1.0, max_delay=3.0)
    assert [policy.delay_after(n) for n in range(1, 5)] == [1.0, 2.0, 3.0, None]
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_destination_parses_and_refuses_nonsense():
    assert Destination.parse("PACS@10.0.0.1:104") == Destination("PACS", "10.0.0.1", 104)
    for bad in ("PACS@host", "@host:1", "PACS@host:99999", "A" * 17 + "@h:1"):
        with pytest.raises(ValueError, match="AET@HOST:PORT"):
            Destination.parse(bad)


def test_result_uid_seed_depends_on_the_instance_set_not_its_order():
    seed = result_uid_seed("1.2.3", ["1.2.3.2", "1.2.3.1"], "v1")
    assert seed == result_uid_seed("1.2.3", ["1.2.3.1", "1.2.3.2"], "v1")
    assert seed != result_uid_seed("1.2.3", ["1.2.3.1"], "v1")
    assert seed != result_uid_seed("1.2.3", ["1.2.3.1", "1.2.3.2"], "v2")


# -- spool -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("uid", ["../1.2", "1.2/../3", "1..2", "", "1.2.3" + ".4" * 40, "1.2\\3"])
def test_a_crafted_uid_cannot_name_a_path(uid):
    with pytest.raises(ValueError):
        valid_uid(uid)


def _encoded(ds) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_spool_writes_once_and_drops_own_results(tmp_path):
    spool = Spool(tmp_path, WorkQueue(tmp_path / "q.sqlite"))
    ds = make_gray_dicom(None, np.zeros((8, 8)), patient_name="Doe^Jane", patient_id="P1")
    assert spool.store(ds.SOPClassUID, ds.SOPInstanceUID, ds, _encoded(ds)) == SUCCESS
    path = spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
    assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    mtime = path.stat().st_mtime_ns
    assert spool.store(ds.SOPClassUID, ds.SOPInstanceUID, ds, _encoded(ds)) == SUCCESS
    assert path.stat().st_mtime_ns == mtime and spool.queue.query("SELECT COUNT(*) FROM instances") == [(1,)]
    sr = make_gray_dicom(None, np.zeros((8, 8)), sop_class_uid=ComprehensiveSRStorage, Manufacturer="spine-dfl")
    sr.StudyInstanceUID = ds.StudyInstanceUID
    assert spool.store(sr.SOPClassUID, sr.SOPInstanceUID, sr, _encoded(sr)) == SUCCESS
    assert not spool.instance_path(ds.StudyInstanceUID, sr.SOPInstanceUID).exists()
    assert spool.queue.query("SELECT COUNT(*) FROM instances") == [(1,)]
    assert not list(tmp_path.glob("instances/*/.*.tmp"))


# -- the node over the network ---------------------------------------------------------------------
@pytest.fixture
def node_factory(tmp_path):
    started = []

    def start(spool: Path, **options) -> Node:
        port = free_port()
        node = Node(
            spool,
            lambda study, paths, out: score_study_as_sc(study, paths, out),
            send_to="NOWHERE@127.0.0.1:1",
            ae_title=NODE_AET,
            port=port,
            host="127.0.0.1",
            allowed_callers=[TEST_SCU_AET],
            **options,
        )
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def _associate(port: int, calling: str = TEST_SCU_AET, called: str = NODE_AET, syntax=ExplicitVRLittleEndian):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(ComputedRadiographyImageStorage, syntax)
    ae.acse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title=called)


def test_wrong_calling_or_called_ae_title_is_refused(node_factory, tmp_path):
    node = node_factory(tmp_path / "spool", stable_age=600)
    refused = _associate(node.port, calling="INTRUDER")
    assert refused.is_rejected
    assert _associate(node.port, called="NOTUS").is_rejected
    allowed = _associate(node.port)
    assert allowed.is_established
    assert allowed.send_c_echo().Status == 0x0000
    allowed.release()


def test_contexts_accept_every_decodable_transfer_syntax(node_factory, tmp_path):
    syntaxes = decodable_transfer_syntaxes()
    for expected in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
                     "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                     "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"):
        assert expected in syntaxes
    node = node_factory(tmp_path / "spool", stable_age=600)
    assoc = _associate(node.port, syntax=JPEG2000Lossless)
    assert assoc.is_established
    accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == ComputedRadiographyImageStorage]
    assert accepted and accepted[0].transfer_syntax[0] == JPEG2000Lossless
    assoc.release()


@pytest.fixture
def small_disk(tmp_path):
    """A real 640 KiB tmpfs (requested before node_factory, so it is unmounted after the node stops)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=640k", "tmpfs", str(mount_point)]
    mounted = subprocess.run(command, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs for a real full disk")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_full_disk_answers_out_of_resources(small_disk, node_factory):
    """Stores succeed until the spool's disk is full, then 0xA700; nothing half-written is left."""
    node = node_factory(small_disk, stable_age=600)
    assoc = _associate(node.port)
    study_uid = generate_uid()
    pixels = np.random.default_rng(0).integers(0, 4095, (256, 256))
    answers = [assoc.send_c_store(make_gray_dicom(None, pixels, StudyInstanceUID=study_uid)).Status for _ in range(12)]
    assoc.release()
    assert answers[0] == SUCCESS and OUT_OF_RESOURCES in answers
    stored = list(small_disk.glob("instances/*/*.dcm"))
    assert len(stored) == answers.count(SUCCESS) == node.queue.query("SELECT COUNT(*) FROM instances")[0][0]
    assert not list(small_disk.glob("instances/*/.*.tmp"))


def test_status_counts_states_and_hides_identifiers(node_factory, tmp_path):
    spool_dir = tmp_path / "spool"
    node = node_factory(spool_dir, stable_age=600)
    assoc = _associate(node.port)
    study_uid = generate_uid()
    for _ in range(2):
        ds = make_gray_dicom(
            None, np.zeros((16, 16)), StudyInstanceUID=study_uid, patient_name="Doe^Jane", patient_id="PID-77"
        )
        assert assoc.send_c_store(ds).Status == SUCCESS
    assoc.release()
    summary = status(spool_dir)
    assert summary["states"]["received"] == 1 and summary["instances"] == 2
    assert summary["oldest_waiting"]["study"] == study_tag(study_uid)
    assert summary["oldest_waiting"]["state"] == "received"
    text = json.dumps(summary) + format_status(summary)
    assert study_uid not in text and "Doe" not in text and "PID-77" not in text
    assert "received 1" in format_status(summary)
    # a fixed pseudonym (the same in every run and release, so old logs stay searchable), one per study
    assert study_tag("1.2.826.0.1.3680043.8.498.1") == "6dadc91b85"
    assert study_tag(generate_uid()) != study_tag(study_uid)


def test_one_node_per_spool(node_factory, tmp_path):
    from spine_dfl.serve import NodeError

    node_factory(tmp_path / "spool", stable_age=600)
    with pytest.raises(NodeError, match="another node"):
        node_factory(tmp_path / "spool", stable_age=600)


def test_reasons_keep_no_uids():
    from spine_dfl.serve.status import redact_uids

    text = redact_uids("/spool/instances/1.2.826.0.1.3680043.8.498.1/1.2.826.0.1.3680043.8.498.2.dcm: bad (v 1.2.3)")
    assert "1.2.826" not in text and "uid:" in text and "v 1.2.3" in text


def test_a_scorer_that_panics_is_retried_then_parked_and_the_worker_lives_on(tmp_path):
    """A decoder panic (pyo3's PanicException derives from BaseException) fails one attempt only."""

    class Panic(BaseException):
        pass

    calls = []

    def panicking(study_uid, paths, out_dir):
        calls.append(study_uid)
        raise Panic("decoder panicked")

    node = Node(
        tmp_path / "spool", panicking, send_to="NOWHERE@127.0.0.1:1", ae_title=NODE_AET, port=free_port(),
        host="127.0.0.1", allowed_callers=[TEST_SCU_AET], stable_age=0.1, poll_interval=0.05,
        retry=RetryPolicy(max_attempts=2, base_delay=0.1, max_delay=0.1),
    )
    node.start()
    try:
        assoc = _associate(node.port)
        for _ in range(2):  # two studies: the second is still scored after the first one's panics
            assert assoc.send_c_store(make_gray_dicom(None, np.zeros((8, 8)))).Status == SUCCESS
        assoc.release()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and status(node.spool_dir)["states"]["failed"] < 2:
            time.sleep(0.1)
        summary = status(node.spool_dir)
        assert summary["states"]["failed"] == 2 and len(calls) == 4
        assert "Panic: decoder panicked" in summary["last_errors"][0]["error"]
    finally:
        node.stop()
