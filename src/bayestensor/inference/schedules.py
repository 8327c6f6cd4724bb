"""KL warm-up schedules."""

from __future__ import annotations


def kl_weight(epoch: float, *, no_kl_epochs: float = 0.0, warmup_epochs: float = 0.0, max_weight: float = 1.0) -> float:
    """``β(t) = β_max · clamp((t − t_0) / t_w, 0, 1)``: no KL for ``t_0`` epochs, then a linear ramp.

    ``epoch`` may be fractional (``epoch + step / steps_per_epoch``) for a per-step ramp.
    With ``warmup_epochs = 0`` the weight jumps to ``β_max`` at ``t_0``.
    """
    if no_kl_epochs < 0 or warmup_epochs < 0 or max_weight < 0:
        raise ValueError(
            f"schedule lengths and max_weight must be >= 0, got no_kl_epochs={no_kl_epochs}, "
            f"warmup_epochs={warmup_epochs}, max_weight={max_weight}"
        )
    if epoch < no_kl_epochs:
        return 0.0
    if warmup_epochs == 0:
        return max_weight
    return max_weight * min(1.0, (epoch - no_kl_epochs) / warmup_epochs)
