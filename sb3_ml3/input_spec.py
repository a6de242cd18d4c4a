"""The named, ordered input fields of a meta-loss (:class:`InputSpec`) and the error of a mismatch.

A learned loss is only meaningful in the setting it was meta-trained for: the spec says which fields it
reads, in which order and with which widths, so that a loaded loss can refuse a setting that differs
(:meth:`InputSpec.check_matches`) instead of silently reading the wrong columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch


class MetaLossSpecError(ValueError):
    """A meta-loss does not fit the setting it is used in (inputs, widths or file)."""


@dataclass(frozen=True)
class InputSpec:
    """Ordered, named input fields of a meta-loss with their widths.

    ``InputSpec.parse("y_pred:1, y_target:1")`` or
    ``InputSpec.parse([("obs", 11), ("action", 2)])`` or ``InputSpec.parse({"obs": 11})``.
    """

    fields: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not self.fields:
            raise MetaLossSpecError("A meta-loss needs at least one input field, e.g. 'y_pred:1, y_target:1'.")
        names = [name for name, _ in self.fields]
        if len(set(names)) != len(names):
            raise MetaLossSpecError(f"Input field names must be unique, got {names}.")
        for name, width in self.fields:
            if not isinstance(name, str) or not name.isidentifier():
                raise MetaLossSpecError(f"Input field name {name!r} must be a Python identifier.")
            if not isinstance(width, int) or isinstance(width, bool) or width < 1:
                raise MetaLossSpecError(f"Input field {name!r} must have a positive integer width, got {width!r}.")

    @classmethod
    def parse(cls, spec: Union["InputSpec", str, Mapping[str, int], Sequence[tuple[str, int]]]) -> "InputSpec":
        if isinstance(spec, InputSpec):
            return spec
        if isinstance(spec, str):
            fields = []
            for part in spec.split(","):
                part = part.strip()
                if not part:
                    continue
                name, sep, width = part.partition(":")
                if not sep or not width.strip().isdigit():
                    raise MetaLossSpecError(f"Cannot parse input field {part!r}: write it as 'name:width', e.g. 'obs:11'.")
                fields.append((name.strip(), int(width)))
            return cls(tuple(fields))
        if isinstance(spec, Mapping):
            return cls(tuple((str(k), int(v)) for k, v in spec.items()))
        try:
            return cls(tuple((str(name), int(width)) for name, width in spec))
        except (TypeError, ValueError) as exc:
            raise MetaLossSpecError(
                f"Cannot read an input spec from {spec!r}: give 'name:width, ...', a dict or (name, width) pairs."
            ) from exc

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    @property
    def dim(self) -> int:
        return sum(width for _, width in self.fields)

    def __str__(self) -> str:
        return ", ".join(f"{name}:{width}" for name, width in self.fields)

    def to_json(self) -> list[list[Any]]:
        return [[name, width] for name, width in self.fields]

    def require(self, expected: Union["InputSpec", str, Mapping[str, int], Sequence[tuple[str, int]]], what: str) -> None:
        """Raise :class:`MetaLossSpecError` naming both sides unless ``expected`` equals this spec."""
        expected = InputSpec.parse(expected)
        if expected != self:
            raise MetaLossSpecError(
                f"{what}: the meta-loss was built for inputs [{self}] but this setting provides [{expected}]. "
                "Use a meta-loss meta-trained on the same inputs (same fields, order and widths), "
                "or meta-train a new one for this setting."
            )

    def concat(self, fields: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate the named tensors in spec order along the last dimension, checking widths.

        A width-1 field may be given without its trailing dimension (shape ``(B,)``).
        """
        missing = [name for name in self.names if name not in fields]
        extra = [name for name in fields if name not in self.names]
        if missing or extra:
            given = ", ".join(f"{k}:{_width(v)}" for k, v in fields.items())
            raise MetaLossSpecError(
                f"The meta-loss expects inputs [{self}] but was called with [{given}]"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else "")
                + "."
            )
        parts = []
        for name, width in self.fields:
            x = fields[name]
            if width == 1 and (x.dim() == 0 or x.shape[-1] != 1):
                x = x.unsqueeze(-1)
            if x.shape[-1] != width:
                given = ", ".join(f"{k}:{_width(v)}" for k, v in fields.items())
                raise MetaLossSpecError(
                    f"The meta-loss expects inputs [{self}] but field {name!r} has width {x.shape[-1]} "
                    f"(inputs given: [{given}])."
                )
            parts.append(x)
        shapes = {tuple(p.shape[:-1]) for p in parts}
        if len(shapes) > 1:
            raise MetaLossSpecError(f"All meta-loss input fields must share their batch shape, got {sorted(shapes)}.")
        return torch.cat(parts, dim=-1)


def _width(x: torch.Tensor) -> int:
    return int(x.shape[-1]) if x.dim() > 0 else 1
