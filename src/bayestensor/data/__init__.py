"""Datasets: the embedded digits default, and readers for the standard files users provide."""

from .digits import load_digits_split

__all__ = ["load_digits_split"]
