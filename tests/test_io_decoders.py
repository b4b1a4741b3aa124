"""A decoder failure of any kind, a Rust panic included, is an ImageReadError naming the file.

``tests/fixtures/rle_panic.dcm`` is pydicom's MR_small_RLE.dcm with seven bits flipped in its RLE
segments (made by ``tests/fixtures/make_rle_panic.py``); pylibjpeg-rle panics on it, and pyo3
raises the panic as ``pyo3_runtime.PanicException``, a BaseException. Reads of it run in a
subprocess: a decoder that misbehaves on corrupt input may take the process with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from conftest import pydicom_test_dir
from spine_dfl.io import ImageReadError, read_image

FIXTURE = Path(__file__).parent / "fixtures" / "rle_panic.dcm"
CT_SMALL = pydicom_test_dir() / "CT_small.dcm"


def _run(script: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"the reading process died ({result.returncode}): {result.stderr[-2000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


_DECODE_RAW = """
import json, sys, pydicom
try:
    pydicom.dcmread(sys.argv[1]).pixel_array
    print(json.dumps({"raised": None}))
except BaseException as error:
    print(json.dumps({"raised": type(error).__name__, "is_exception": isinstance(error, Exception)}))
"""

_READ_IMAGE = """
import json, sys
from spine_dfl.io import ImageReadError, read_image
try:
    read_image(sys.argv[1])
    print(json.dumps({"raised": None}))
except BaseException as error:
    print(json.dumps({"raised": type(error).__name__, "message": str(error),
                      "path": getattr(error, "path", None), "reason": getattr(error, "reason", None),
                      "cause": type(error.__cause__).__name__ if error.__cause__ else None}))
"""


def test_fixture_makes_pylibjpeg_rle_panic() -> None:
    """The fixture still does what it is for: the bare decoder raises a PanicException, not an Exception."""
    assert pydicom.dcmread(FIXTURE).file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    outcome = _run(_DECODE_RAW, str(FIXTURE))
    assert outcome == {"raised": "PanicException", "is_exception": False}, (
        "rle_panic.dcm no longer makes the decoder panic; regenerate it with tests/fixtures/make_rle_panic.py"
    )


def test_decoder_panic_becomes_image_read_error_naming_the_file(tmp_path: Path) -> None:
    target = tmp_path / "corrupt rle.dcm"
    target.write_bytes(FIXTURE.read_bytes())
    outcome = _run(_READ_IMAGE, str(target))
    assert outcome["raised"] == "ImageReadError"
    assert outcome["path"] == str(target)
    assert outcome["message"].startswith(f"{target}: ")
    assert "PanicException" in outcome["reason"] and "RLE Lossless" in outcome["reason"]
    assert outcome["cause"] == "PanicException"


class _NotAnException(BaseException):
    """Stands for any BaseException a decoder extension may raise (pyo3's PanicException is one)."""


def _decoder_raising(error: BaseException):
    def pixel_array(self: pydicom.Dataset):
        raise error

    return property(pixel_array)


def test_any_base_exception_from_the_decoder_becomes_image_read_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", _decoder_raising(_NotAnException("bounds check failed")))
    with pytest.raises(ImageReadError) as caught:
        read_image(CT_SMALL)
    assert caught.value.path == str(CT_SMALL)
    assert "_NotAnException: bounds check failed" in caught.value.reason
    assert isinstance(caught.value.__cause__, _NotAnException)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3), GeneratorExit()], ids=lambda e: type(e).__name__)
def test_interrupts_and_exits_are_never_swallowed(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", _decoder_raising(error))
    with pytest.raises(type(error)):
        read_image(CT_SMALL)
