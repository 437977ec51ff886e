"""Metrics for clustering: panoptic quality (hit-count and energy-weighted IoU) and calorimeter response.

Plotting helpers live in :mod:`sparse3d.metrics.calo_plots` (imported on demand: matplotlib).
"""
from .calo_response import DEFAULT_BINS, ResponseMetric, binned_response, fit_resolution, resolution_model
from .panoptic import MatchResult, PanopticQuality, PQStats, contingency, event_pq, match_instances

__all__ = [
    "PanopticQuality", "PQStats", "MatchResult", "contingency", "match_instances", "event_pq",
    "ResponseMetric", "DEFAULT_BINS", "binned_response", "fit_resolution", "resolution_model",
]
