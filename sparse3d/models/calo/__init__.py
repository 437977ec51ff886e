"""Calorimeter hit clustering models: Calo-SPVCNN and the GravNet + object-condensation baseline.

- :class:`CaloSPVCNN` (:mod:`.calo_spvcnn`): SPVCNN point-voxel backbone on the hits.
- :class:`GravNetOC` (:mod:`.gravnet`): 4 GravNet blocks (Qasim et al. 2019).
- :class:`CaloHeads` (:mod:`.heads`): semantic + offset / condensation heads, loss, clustering.
- :mod:`.losses`: cross-entropy, offset L1, object condensation (Kieseler 2020).

Both models: ``forward(batch) -> dict`` of per-hit outputs, ``loss(outputs, batch) ->
(loss, logs)``, ``cluster(outputs, batch) -> list`` of per-event int64 cluster ids (-1 noise),
attribute ``instance_mode``.
"""
from .calo_spvcnn import CaloSPVCNN
from .gravnet import GravNetBlock, GravNetConv, GravNetOC
from .heads import INSTANCE_MODES, CaloHeads, check_batch
from .losses import cluster_centres, instance_ids, object_condensation_loss, offset_loss, semantic_loss

__all__ = ["CaloSPVCNN", "GravNetOC", "GravNetBlock", "GravNetConv", "CaloHeads", "INSTANCE_MODES", "check_batch",
           "cluster_centres", "instance_ids", "object_condensation_loss", "offset_loss", "semantic_loss"]
