"""What a summary variable is: its name for people, what it measures and what computes it, carried
into the summary Dataset as the variable's attributes (xarray's and CF's `long_name`,
`description`), so a number in a figure can be traced to the function that made it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    """One summary variable: `per_layer` ones run along the first model's layers (`layer_a`)."""

    long_name: str
    description: str
    computed_by: str  # the function, as robrep.<module>.<name>
    per_layer: bool = False

    def attrs(self, analysis: str | None = None) -> dict[str, str]:
        """The variable's attributes in the summary Dataset."""
        out = {
            "long_name": self.long_name,
            "description": self.description,
            "computed_by": self.computed_by,
        }
        if analysis is not None:
            out["analysis"] = analysis
        return out
