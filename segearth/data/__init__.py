"""Dataset readers. Each yields :class:`Sample` records with lazily decoded image and target.

=================  =========================================  ================================
reader             data                                        kinds
=================  =========================================  ================================
``EarthReason``    reasoning segmentation (spec §5.1)          reasoning, absent
``RRSISD``         referring segmentation (spec §5.2)          referring
``RefSegRS``       referring segmentation (spec §5.3)          referring
``LandCover``      generated questions on real Dubai and       referring, reasoning, absent
                   Massachusetts land-cover masks
=================  =========================================  ================================

Readers are registered by name in :mod:`segearth.data.registry` (``get_dataset("landcover")``).
"""

from segearth.data.earthreason import EarthReason
from segearth.data.landcover import LandCover, Scene
from segearth.data.questions import CLASS_QUESTIONS, ClassQuestions
from segearth.data.refsegrs import RefSegRS
from segearth.data.registry import DATASETS, DatasetSpec, get_dataset, register_dataset
from segearth.data.rrsisd import RRSISD
from segearth.data.sample import NO_TARGET_ANSWER, SAMPLE_KINDS, Sample

__all__ = [
    "CLASS_QUESTIONS",
    "DATASETS",
    "NO_TARGET_ANSWER",
    "RRSISD",
    "SAMPLE_KINDS",
    "ClassQuestions",
    "DatasetSpec",
    "EarthReason",
    "LandCover",
    "RefSegRS",
    "Sample",
    "Scene",
    "get_dataset",
    "register_dataset",
]
