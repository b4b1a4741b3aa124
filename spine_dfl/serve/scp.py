"""The Storage SCP: association rules, presentation contexts and the C-STORE/C-ECHO handlers.

Accepted:

- calling AE titles from the allowed list only (others: association rejected), called AE title
  must be ours;
- CR, DX for presentation and DX for processing images, with every transfer syntax the reader can
  decode (pydicom with the pylibjpeg plugins: uncompressed, deflated, JPEG baseline/extended/
  lossless/SV1, JPEG-LS, JPEG 2000, HTJ2K, RLE), not pynetdicom's uncompressed-only default;
- Verification (C-ECHO);
- SR (Comprehensive, Enhanced, Basic Text, Comprehensive 3D) and Secondary Capture images, only so
  that a study routed to us with our own results in it is acknowledged: the handler drops them
  (see ``spool``). Refusing their contexts would make the PACS count the transfer as failed and
  keep retrying it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from pydicom.pixels import get_decoder
from pydicom.uid import AllTransferSyntaxes, UID
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedSRStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

if TYPE_CHECKING:
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event
    from pynetdicom.transport import ThreadedAssociationServer

from spine_dfl.serve.spool import CANNOT_UNDERSTAND, Spool

log = logging.getLogger(__name__)

RADIOGRAPH_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
RESULT_SOP_CLASSES = (
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
)


def decodable_transfer_syntaxes() -> list[UID]:
    """Every transfer syntax whose pixel data pydicom can decode here (plugins included).

    Explicit VR Little Endian first: pynetdicom keeps the proposer's order, this only sets which
    syntaxes are offered as acceptable.
    """
    found = []
    for uid in AllTransferSyntaxes:
        try:
            available = get_decoder(uid).is_available
        except (NotImplementedError, ValueError):
            continue
        if available:
            found.append(UID(uid))
    found.sort(key=lambda uid: uid != "1.2.840.10008.1.2.1")
    return found


def _handle_store(event: Event, spool: Spool) -> int:
    request = cast("C_STORE", event.request)  # an EVT_C_STORE event's request
    try:
        dataset = event.dataset
        encoded = event.encoded_dataset(include_meta=True)
    except Exception as error:  # noqa: BLE001 - a dataset that cannot be parsed is refused
        log.warning("refused an instance: cannot parse it (%s)", type(error).__name__)
        return CANNOT_UNDERSTAND
    return spool.store(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID), dataset, encoded)


def _handle_echo(event: Event) -> int:
    return 0x0000


def _log_rejection(event: Event) -> None:
    log.warning("association rejected (calling AE title not allowed or called AE title not ours)")


def build_ae(ae_title: str, allowed_callers: Sequence[str] | None, *, max_pdu: int = 0) -> AE:
    """The Application Entity with our contexts and association rules (not yet listening)."""
    ae = AE(ae_title=ae_title)
    ae.require_called_aet = True
    ae.require_calling_aet = list(allowed_callers or [])
    ae.maximum_pdu_size = max_pdu
    syntaxes = decodable_transfer_syntaxes()
    for sop_class in RADIOGRAPH_SOP_CLASSES + RESULT_SOP_CLASSES:
        ae.add_supported_context(sop_class, syntaxes)
    ae.add_supported_context(Verification)
    return ae


def start_scp(ae: AE, spool: Spool, host: str, port: int) -> ThreadedAssociationServer | None:
    """Listen in background threads; returns pynetdicom's server (``shutdown()`` stops it)."""
    handlers = [
        (evt.EVT_C_STORE, _handle_store, [spool]),
        (evt.EVT_C_ECHO, _handle_echo),
        (evt.EVT_REJECTED, _log_rejection),
    ]
    return ae.start_server((host, port), block=False, evt_handlers=handlers)
