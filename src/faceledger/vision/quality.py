"""Face quality measures and the enrolment rules that refuse poor faces, with reasons."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from faceledger.vision.align import AlignedFace, pose_asymmetry
from faceledger.vision.types import Box, Quality


def laplacian_variance(grey: NDArray[np.float64]) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D image: low means blurred."""
    lap = (
        -4.0 * grey[1:-1, 1:-1]
        + grey[:-2, 1:-1]
        + grey[2:, 1:-1]
        + grey[1:-1, :-2]
        + grey[1:-1, 2:]
    )
    return float(lap.var())


def measure(box: Box, aligned: AlignedFace) -> Quality:
    chip = aligned.chip.astype(np.float64)
    grey = chip @ np.array([0.299, 0.587, 0.114])
    return Quality(
        face_px=min(box.width, box.height),
        sharpness=laplacian_variance(grey),
        pose_asymmetry=pose_asymmetry(aligned.landmarks),
    )


@dataclass(frozen=True, slots=True)
class QualityRules:
    """Enrolment floors. Search does not refuse faces; it reports their quality."""

    min_face_px: int = 40
    min_sharpness: float = 5.0
    max_pose_asymmetry: float = 0.8

    def refusal(self, q: Quality) -> str | None:
        """The reason this face may not be enrolled, or None if it may."""
        if q.face_px < self.min_face_px:
            return "too_small"
        if q.sharpness < self.min_sharpness:
            return "blurred"
        if q.pose_asymmetry > self.max_pose_asymmetry:
            return "pose"
        return None
