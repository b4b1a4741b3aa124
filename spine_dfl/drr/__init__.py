"""Digitally reconstructed radiographs: cone-beam films of a CT, with their exact geometry.

Modules, in the order of the flow (import them directly; this package imports nothing heavy):

- ``geometry``: ``DrrGeometry`` (source, flat detector, isocentre) and its 3x4
  ``projection_matrix`` from world RAS mm to continuous detector pixels; stored rotations and
  mirrors applied alike to pixels (``reorient_array``) and to the matrix (``reoriented``);
- ``render``: HU to attenuation, ``line_integrals`` / ``path_lengths`` through the volume (torch,
  one bilinear slice sample per voxel plane, on the volume's device), ``expose`` to a processed film;
- ``inputs``: the CT, VerSe centroids, mask and grades read and checked before anything is written;
- ``project``: vertebral bodies from a label mask, their silhouettes, six points and ROIs on the film;
- ``dicom``: a film as a DX DICOM with its geometry attributes;
- ``study``: ``spine-dfl drr``, the films, manifest and projection matrices of one CT.
"""
