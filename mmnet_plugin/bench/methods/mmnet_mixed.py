"""MM-Net trained once with the mixed strategy (paper section 3.5) and tested on every setting.

Every training episode draws its own C and k: C in 2..20 and k in 1..5 on Omniglot and on
``glyphs`` (its Omniglot-like stand-in), C in 2..5 and k in 1..5 on miniImageNet (the
paper's Table 3), widened to cover every requested setting. Its training stream is its
own by design (same seed, same budget in episodes, other shapes), so the leaderboard labels
it and leaves it out of the training-fingerprint check. This is the paper's headline
"MM-Net"; :mod:`.mmnet` is the paper's MM-Net- (no mixed strategy).
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

from .mmnet import MMNetMethod

__all__ = ["MMNetMixedMethod", "mixed_ranges"]


def mixed_ranges(dataset: str, settings: Sequence[Tuple[int, int]]) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """``((C_min, C_max), (k_min, k_max))`` of the mixed training stream."""
    c_max = 5 if dataset == "miniimagenet" else 20
    k_max = 5
    if settings:
        c_max = max(c_max, max(w for w, _ in settings))
        k_max = max(k_max, max(s for _, s in settings))
    return (2, c_max), (1, k_max)


class MMNetMixedMethod(MMNetMethod):
    name = "mmnet-mixed"
    label = "MM-Net (mixed, own stream)"
    notes = (
        "one mmnet_plugin.MMNet trained with the mixed C-way k-shot strategy on its own "
        "training stream (same seed and budget in episodes) and tested on every setting; "
        "the paper's headline MM-Net."
    )
    shared_stream = False
    trained_once = True

    def hyperparameters(self) -> Dict[str, Any]:
        hp = super().hyperparameters()
        hp["mixed"] = True
        return hp
