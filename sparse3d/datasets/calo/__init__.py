"""Synthetic HGCAL-like calorimeter events and their file formats (ROOT, npz, HDF5).

- :mod:`.geometry`: the endcap (28 CE-E + 22 CE-H layers from z = 322.1 cm, both endcaps).
- :mod:`.showers`: EM (Grindhammer-Peters + GFLASH lateral) and hadronic shower models.
- :mod:`.generator`: events with overlapping gamma / e / pi+- showers, noise and pileup.
- :mod:`.event`: :class:`CaloEvent` and the bad-input rules (:func:`validate_event`).
- :mod:`.io_root`, :mod:`.io_npz`, :mod:`.io_h5`: NanoML-like ROOT, cms-pepr npz, CaloChallenge HDF5.
- :func:`cli` / :func:`add_subparser`: ``tools/make_data.py calo``.
"""
from .command import add_subparser, cli
from .event import CaloEvent, validate_event
from .generator import CaloGenConfig, generate_event, generate_events, generate_single_showers
from .geometry import HGCalGeometry, default_geometry
from .io_h5 import read_calochallenge, write_calochallenge
from .io_npz import iterate_npz_dir, read_npz, write_npz, write_npz_dir
from .io_root import RootChunk, RootWriter, iterate_root, read_root, write_root

__all__ = [
    "CaloEvent", "validate_event", "CaloGenConfig", "generate_event", "generate_events",
    "generate_single_showers", "HGCalGeometry", "default_geometry",
    "RootChunk", "RootWriter", "iterate_root", "read_root", "write_root",
    "read_npz", "write_npz", "write_npz_dir", "iterate_npz_dir",
    "read_calochallenge", "write_calochallenge", "cli", "add_subparser",
]
