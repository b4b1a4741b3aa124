"""A real Orthanc for the DICOM network tests: started from a JSON config, driven over its REST API.

Debian's ``orthanc`` package puts the binary in ``/usr/sbin/Orthanc`` (off a plain PATH); tests
skip with that reason when it is missing (``.ci/run`` installs it as root). Each instance gets
free HTTP and DICOM ports, its storage and index in a temporary folder, a small ``StableAge``, the
called AE title checked, and our node declared as modality ``spine``. REST calls use urllib with
HTTP basic auth (a registered user), so no extra dependency.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
ORTHANC_AET = "ORTHANC"
# Orthanc's own transcoder cannot write JPEG 2000; the GDCM plugin (Debian orthanc-gdcm) can.
GDCM_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancGdcm.so")
_USER, _PASSWORD = "tester", "serve-test"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Orthanc:
    """One Orthanc process; ``start()``/``stop()`` keep its storage, ports and config."""

    def __init__(self, workdir: Path, node_aet: str, node_port: int, *, stable_age: int = 1) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config_path = self.workdir / "orthanc.json"
        config = {
            "Name": "spine-dfl-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AET,
            "DicomCheckCalledAet": True,
            "StableAge": stable_age,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {_USER: _PASSWORD},
            "DicomModalities": {"spine": [node_aet, "127.0.0.1", node_port]},
            "DicomScuTimeout": 20,
            "Plugins": [str(GDCM_PLUGIN)] if GDCM_PLUGIN.is_file() else [],
            "ConcurrentJobs": 2,
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        self._process: subprocess.Popen | None = None
        self._auth = "Basic " + base64.b64encode(f"{_USER}:{_PASSWORD}".encode()).decode()

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.workdir / "orthanc.log", "ab")
        self._process = subprocess.Popen(
            [str(ORTHANC_BINARY), str(self.config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log_path = self.workdir / "orthanc.log"
                raise RuntimeError(f"Orthanc exited with {self._process.returncode}; see {log_path}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        raise TimeoutError(f"Orthanc did not answer /system within {timeout} s")

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "orthanc.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    # -- REST ------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | dict | list | None = None, timeout: float = 60.0) -> Any:
        data, content_type = None, None
        if isinstance(body, bytes):
            data, content_type = body, "application/dicom"
        elif body is not None:
            data, content_type = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", self._auth)
        if content_type:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
            if response.headers.get_content_type() == "application/json":
                return json.loads(payload)
            return payload

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: bytes | dict | list | None = None, timeout: float = 60.0) -> Any:
        return self.request("POST", path, body, timeout=timeout)

    def upload(self, path_or_bytes: Path | bytes) -> dict:
        """``POST /instances``: returns Orthanc's answer (``ID``, ``ParentStudy``, ...)."""
        data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        return self.post("/instances", data)

    def store_to_node(self, resources: list[str], *, asynchronous: bool = False, timeout: float = 120.0) -> Any:
        """``POST /modalities/spine/store`` of Orthanc resources (instance/series/study IDs)."""
        body = {"Resources": resources, "Synchronous": not asynchronous}
        return self.post("/modalities/spine/store", body, timeout=timeout)

    def study_id(self, study_uid: str) -> str | None:
        found = self.post("/tools/lookup", study_uid.encode())
        ids = [item["ID"] for item in found if item.get("Type") == "Study"]
        return ids[0] if ids else None

    def instances_in_study(self, study_uid: str) -> list[dict]:
        """Every instance of the study with its main tags (``/studies/{id}/instances?expanded``)."""
        orthanc_id = self.study_id(study_uid)
        if orthanc_id is None:
            return []
        return self.get(f"/studies/{orthanc_id}/instances?expand")

    def transcode_study(self, orthanc_study_id: str, transfer_syntax: str, timeout: float = 60.0) -> str:
        """Transcode a study into a new one (new UIDs); return the new study's Orthanc ID.

        Asynchronous on purpose: GDCM's JPEG 2000 encoder needs more stack than Orthanc's HTTP
        worker threads have (a synchronous ``/instances/{id}/modify`` segfaults in
        libgdcmMSFF now and then); a job runs on a thread with a normal stack.
        """
        job = self.post(f"/studies/{orthanc_study_id}/modify", {"Transcode": transfer_syntax, "Asynchronous": True})

        def finished() -> dict | None:
            info = self.get(f"/jobs/{job['ID']}")
            return info if info["State"] in ("Success", "Failure") else None

        info = wait_for(finished, timeout, what=f"Orthanc job {job['ID']} (transcode)")
        if info["State"] != "Success":
            raise RuntimeError(f"Orthanc could not transcode: {info.get('ErrorDetails') or info.get('ErrorDescription')}")
        return info["Content"]["ID"]

    def instance_tags(self, orthanc_id: str) -> dict:
        return self.get(f"/instances/{orthanc_id}/simplified-tags")


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def orthanc_available() -> bool:
    return ORTHANC_BINARY.is_file() and os.access(ORTHANC_BINARY, os.X_OK)
