"""Classical clustering baselines for calorimeter hits (CLUE)."""
from .clue import CLUEResult, HGCalCLUEParams, clue, clue_hgcal

__all__ = ["CLUEResult", "HGCalCLUEParams", "clue", "clue_hgcal"]
