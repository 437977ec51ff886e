"""HGCAL-like endcap geometry: layer positions, material depth, cell grids, acceptance.

One endcap is described for ``z > 0``; the negative endcap is its mirror image
(``z -> -z``, same ``x, y``). Layers are numbered 1..L in the files (CMS style) and
0..L-1 in arrays here.

- **CE-E** (layers 1-28): silicon, first sensor at ``z = 322.1`` cm, sensors spaced
  over 29.65 cm (HGCAL-FastShower "V7" offsets 0.765-30.415 cm), each behind
  0.93 X0 / 0.046 lambda_I of Pb/CuW (26 X0, 1.3 lambda_I in total). Square cells of
  0.52 cm^2 for ``r < 65`` cm and 1.18 cm^2 outside (HGCAL hexagons: 0.5 and 1.1 cm^2).
- **CE-H** (layers 29-50): 12 layers behind 3.5 cm steel (0.21 lambda_I, 2 X0) spaced
  4.5 cm, then 10 layers behind 6.8 cm steel (0.40 lambda_I, 3.9 X0) spaced 7 cm
  (about 8 lambda_I in all). Silicon 1.18 cm^2 cells for ``r < 80`` cm, scintillator
  tiles of 3 x 3 cm^2 outside.
- Energies are on the calibrated (absorber-corrected) GeV scale; one MIP in a layer
  is worth that layer's dE/dx weight: 8.5 MeV in CE-E, 40 / 78 MeV in CE-H.
- Acceptance ``1.5 < |eta| < 3.0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HGCalGeometry", "default_geometry", "theta_of_eta", "eta_of"]

_KEY_OFF = 1 << 11          # cell-index offset so that ix, iy >= 0
_KEY_DIM = 1 << 12


def theta_of_eta(eta):
    """Polar angle of pseudorapidity ``eta`` (radians, in ``(0, pi)``)."""
    return 2.0 * np.arctan(np.exp(-np.asarray(eta, dtype=np.float64)))


def eta_of(x, y, z):
    """Pseudorapidity of points ``(x, y, z)`` (cm), any shape, float64."""
    r = np.hypot(x, y)
    return np.arcsinh(np.asarray(z, dtype=np.float64) / np.maximum(r, 1e-9))


@dataclass(frozen=True)
class HGCalGeometry:
    """Per-layer description of one endcap (arrays of length ``n_layers``).

    Attributes:
        z: ``[L]`` float64 sensor z (cm, positive endcap).
        x0_edges: ``[L+1]`` float64 cumulative depth in X0 at normal incidence;
            sensor ``l`` samples the absorber slab ``[x0_edges[l], x0_edges[l+1])``.
        lambda_edges: ``[L+1]`` float64 same in interaction lengths lambda_I.
        mip_gev: ``[L]`` float64 calibrated energy of one MIP in each layer.
        section: ``[L]`` int8, 0 = CE-E, 1 = CE-H.
        pitch: ``[L, 2]`` float64 cell pitch (cm) inside / outside ``r_split``.
        r_split: ``[L]`` float64 radius where the coarse cells start (cm).
        eta_min, eta_max: acceptance in ``|eta|``.
    """

    z: np.ndarray
    x0_edges: np.ndarray
    lambda_edges: np.ndarray
    mip_gev: np.ndarray
    section: np.ndarray
    pitch: np.ndarray
    r_split: np.ndarray
    eta_min: float = 1.5
    eta_max: float = 3.0

    @property
    def n_layers(self) -> int:
        return int(self.z.shape[0])

    def r_range(self, z_abs):
        """Acceptance ``(r_min, r_max)`` in cm at ``|z|`` (arrays broadcast)."""
        z_abs = np.abs(np.asarray(z_abs, dtype=np.float64))
        return z_abs * np.tan(theta_of_eta(self.eta_max)), z_abs * np.tan(theta_of_eta(self.eta_min))

    def in_acceptance(self, layer, x, y):
        """Bool mask: point ``(x, y)`` on layer index ``layer`` (0-based) is inside ``eta`` range."""
        r = np.hypot(x, y)
        lo, hi = self.r_range(self.z[layer])
        return (r >= lo) & (r < hi)

    def cell_of(self, layer, side, x, y):
        """Quantize points to cells.

        Args:
            layer: ``[N]`` int 0-based layer index.
            side: ``[N]`` int, +1 / -1 endcap.
            x, y: ``[N]`` float cm.

        Returns:
            ``(key [N] int64, cx [N] float64, cy [N] float64)``: a unique cell id and
            the cell centre.
        """
        layer = np.asarray(layer, dtype=np.int64)
        r = np.hypot(x, y)
        zone = (r >= self.r_split[layer]).astype(np.int64)
        p = self.pitch[layer, zone]
        ix = np.floor(x / p).astype(np.int64)
        iy = np.floor(y / p).astype(np.int64)
        plane = (layer * 2 + zone) * 2 + (np.asarray(side) < 0)
        key = (plane * _KEY_DIM + (ix + _KEY_OFF)) * _KEY_DIM + (iy + _KEY_OFF)
        return key, (ix + 0.5) * p, (iy + 0.5) * p

    def layer_of_depth(self, depth, edges):
        """Layer index of the slab containing ``depth`` in ``edges`` units (-1 before, L after)."""
        return np.searchsorted(edges, depth, side="right") - 1


def default_geometry() -> HGCalGeometry:
    """The default HGCAL-like endcap (28 CE-E + 22 CE-H layers), see the module docstring."""
    n_ee, n_fh, n_bh = 28, 12, 10
    z_ee = 322.1 + np.linspace(0.0, 30.415 - 0.765, n_ee)
    z_fh = z_ee[-1] + 5.0 + 4.5 * np.arange(n_fh)
    z_bh = z_fh[-1] + 7.0 * np.arange(1, n_bh + 1)
    z = np.concatenate([z_ee, z_fh, z_bh])
    x0 = np.concatenate([np.full(n_ee, 0.93), np.full(n_fh, 2.0), np.full(n_bh, 3.9)])
    lam = np.concatenate([np.full(n_ee, 1.3 / n_ee), np.full(n_fh, 0.21), np.full(n_bh, 0.40)])
    mip = np.concatenate([np.full(n_ee, 0.0085), np.full(n_fh, 0.040), np.full(n_bh, 0.078)])
    section = np.concatenate([np.zeros(n_ee), np.ones(n_fh + n_bh)]).astype(np.int8)
    fine, coarse, tile = np.sqrt(0.52), np.sqrt(1.18), 3.0
    pitch = np.empty((z.size, 2))
    pitch[:n_ee] = (fine, coarse)
    pitch[n_ee:] = (coarse, tile)
    r_split = np.concatenate([np.full(n_ee, 65.0), np.full(n_fh + n_bh, 80.0)])
    return HGCalGeometry(
        z=z, x0_edges=np.concatenate([[0.0], np.cumsum(x0)]),
        lambda_edges=np.concatenate([[0.0], np.cumsum(lam)]),
        mip_gev=mip, section=section, pitch=pitch, r_split=r_split)
