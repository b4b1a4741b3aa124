"""A second, independent phantom: patients drawn in 3D and rasterised as CT in HU.

``draw_patient(seed, index)`` draws patient ``index`` of cohort ``seed`` from its own stream
(``np.random.default_rng([seed, 0x3D5F, index])``): habitus, bone density, kyphosis, lordosis,
scoliosis and axial rotation, vertebral bodies C6-L5 (T13 / L6 when transitional) growing
downwards, discs, Genant-graded 3D fractures (wedge, biconcave, crush) and transitional anatomy
(11 or 13 rib pairs, a sacralised L5, a lumbarised S1).  ``build_ct(patient, voxel_mm)`` gives a
``PhantomCT``: HU, the whole-vertebra label mask and body labels in VerSe numbers, an LPS-like
affine, body centroids, the grades table and the truth.  ``write_verse_layout`` writes a scan
in VerSe's BIDS layout; ``write_phantom_cohort`` is ``spine-dfl phantom``.

Modules: ``anatomy`` (the patient, world mm), ``volume`` (the CT), ``truth`` (grades table,
transitional anatomy and anchors), ``writer`` (NIfTI, VerSe centroids, grades CSV).
Grades follow ``spine_dfl.synth.anatomy``: height loss = 1 - min(Ha, Hm, Hp) / H_ref.
"""

from spine_dfl.phantom.anatomy import TRANSITIONAL_KINDS, PhantomError, PhantomPatient, Vertebra, draw_patient
from spine_dfl.phantom.truth import GradeRow, PhantomTruth
from spine_dfl.phantom.volume import PhantomCT, build_ct
from spine_dfl.phantom.writer import write_phantom_cohort, write_verse_layout

__all__ = ["TRANSITIONAL_KINDS", "GradeRow", "PhantomCT", "PhantomError", "PhantomPatient", "PhantomTruth", "Vertebra",
           "build_ct", "draw_patient", "write_phantom_cohort", "write_verse_layout"]
