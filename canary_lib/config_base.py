"""The building blocks of every settings model (run configurations and sweep files): `Strict`, `ConfigError`,
and `_FieldError`, which points a cross-field error at one key. Imports nothing of the package above errors."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from canary_lib.errors import CanaryError


class ConfigError(CanaryError, ValueError):
    """A configuration problem, with the offending key and the file it came from in the message."""


class Strict(BaseModel):
    """Base of every settings model (run configurations and sweep files): unknown keys are errors, every float is
    finite (no NaN or infinity), and a boolean is never read as a number (`seed: true` is not seed 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        if (
            isinstance(value, bool)
            and info.field_name
            and not _accepts_bool(cls.model_fields[info.field_name].annotation)
        ):
            raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
        return value


def _accepts_bool(annotation: Any) -> bool:
    """False for a number type (int, float, or an optional one): pydantic would read true as 1 there."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(_accepts_bool(a) for a in typing.get_args(annotation) if a is not type(None))
    return annotation is bool or not (isinstance(annotation, type) and issubclass(annotation, (int, float)))


class _FieldError(ValueError):
    """Raised inside model validators to point the error at one field of the section; `blame` lists the fields
    (of the same section) whose values caused it, so the message names the files that set those."""

    def __init__(self, field: str, message: str, blame: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.field = field
        self.blame = blame or (field,)


TORCH_SEED_MIN, TORCH_SEED_MAX = -(2**63), 2**64 - 1
"""The seeds torch.manual_seed accepts; a seed outside them ended in a traceback after the model loaded."""
TorchSeed = Annotated[int, Field(ge=TORCH_SEED_MIN, le=TORCH_SEED_MAX)]
NonNegativeSeed = Annotated[int, Field(ge=0, le=TORCH_SEED_MAX)]
"""Seeds that numpy (default_rng: no negatives) or torch also read."""
