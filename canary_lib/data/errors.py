"""The one error type of canary_lib.data: raised before any model is loaded, saying what is wrong and how to fix it."""

from __future__ import annotations

from canary_lib.errors import CanaryError


class DataError(CanaryError, ValueError):
    """Bad or missing input data (files, columns, checksums, gated datasets, overlapping canaries)."""
