"""Printing: Markdown tables (paste them into the README as they are) and the verdict of each target."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Target:
    """A ratio target: ``ratio >= bound`` (or ``<=`` when ``at_most``)."""

    bound: float
    at_most: bool = False

    def describe(self) -> str:
        return f"{'≤' if self.at_most else '≥'} {self.bound:g}x"

    def verdict(self, ratio: float) -> str:
        """``met``, or by how much it was missed (and the factor still needed)."""
        if self.at_most:
            if ratio <= self.bound:
                return "met"
            return f"missed by {ratio / self.bound - 1:.0%} (needs {ratio / self.bound:.2f}x less)"
        if ratio >= self.bound:
            return "met"
        return f"missed by {1 - ratio / self.bound:.0%} (needs {self.bound / ratio:.2f}x more)"


@dataclass(frozen=True, slots=True)
class Figure:
    """One line of the summary: a measured value against its reference."""

    name: str
    measured: str
    reference: str
    ratio: float
    target: Target

    def row(self) -> list[str]:
        return [
            self.name,
            self.measured,
            self.reference,
            ratio(self.ratio),
            self.target.describe(),
            self.target.verdict(self.ratio),
        ]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: Collection[int] = (0,)) -> str:
    """A Markdown table with padded columns; the ``left`` columns are left-aligned, the others right."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    rules = ["-" * w if i in left else "-" * (w - 1) + ":" for i, w in enumerate(widths)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    return "\n".join([line(headers), line(rules), *(line(row) for row in rows)])


def count(value: float) -> str:
    return f"{value:,.0f}"


def per_s(value: float, unit: str = "") -> str:
    return f"{value:,.0f} {unit}/s" if unit else f"{value:,.0f}/s"


def seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def mib(value_bytes: float) -> str:
    return f"{value_bytes / MIB:,.1f} MiB"


def section(title: str) -> None:
    print(f"\n## {title}\n", flush=True)
