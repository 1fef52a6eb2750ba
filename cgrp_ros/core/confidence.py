"""What a pair's registration confidence tells a user: the warning the node and `cgrp fuse` give alike
(no torch here: the commands check their inputs before the models load)."""
from __future__ import annotations


def low_confidence_text(confidence: float, fallback: bool, threshold: float, prior: str) -> str | None:
    """Why a pair's registration is doubtful, for a warning (the node's and cgrp fuse's words), or None.
    `prior`: what a fallback registers with, e.g. "identity or homography". Three decimals: a confidence
    just below the threshold must not read as equal to it."""
    confidence = float(confidence)
    if not fallback and confidence >= threshold:
        return None
    # (a fallback's bar may be above `threshold`: at small working sizes, Pipeline.chance_confidence)
    return (f"low registration confidence {confidence:.3f}: "
            + (f"registered with the prior ({prior})" if fallback
               else f"below {threshold:.3f}, the registration may be wrong"))
