"""A study: its models and the facts the analyses' pairings need. Pure Python; built from the
config by `robrep.pipeline.config.study_from_config`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from robrep.ids import OWN_ADVERSARIAL, TRANSFER, ModelKey, StoreKey, transfer_inputs

STANDARD = "standard"  # the method id every robust model is set against
# Whose adversarial examples the transfer comparisons show both models: the standard model's
# (standard_to_robust) or the robust model's (robust_to_standard).
TRANSFER_DIRECTIONS = ("standard_to_robust", "robust_to_standard")
FROM_STANDARD = f"{TRANSFER}{STANDARD}"  # a robust model's inputs of standard_to_robust
Pair = tuple[StoreKey, StoreKey]


@dataclass(frozen=True)
class Study:
    """The models of a study and the facts the pairings need (built from the config once, by
    `pipeline.config.study_from_config`)."""

    models: tuple[ModelKey, ...]
    methods: Mapping[str, Mapping[str, Any]]  # by method id (`pipeline.config.resolve_method`)
    checkpoints: tuple[str, ...]  # activation checkpoints: final, best, epoch{e}
    adversarial_inputs: bool  # `pgd` stores are extracted
    seeds: tuple[int, ...]
    architectures: tuple[str, ...]
    transfer: tuple[str, ...] = TRANSFER_DIRECTIONS  # directions of the transfer comparisons
    external: frozenset[ModelKey] = frozenset()  # imported models: final weights only
    # Architecture family of each architecture (`learn.architectures.arch_family`): which widths and
    # depths width_depth sets side by side, decided where the config is read.
    families: Mapping[str, str] = field(default_factory=dict)

    def robust_models(self) -> Iterable[tuple[ModelKey, ModelKey]]:
        """Each robust model with the standard model of its dataset/arch/seed (none without a
        standard method)."""
        if STANDARD in self.methods:
            for m in self.models:
                if m.method_id != STANDARD:
                    yield m, m.with_(method_id=STANDARD)

    def transfer_pairs(self) -> Iterable[tuple[str, StoreKey, StoreKey]]:
        """(direction, robust store, standard store) of each configured transfer direction: both
        models on the adversarial examples of one of them (needs adversarial inputs)."""
        if not self.adversarial_inputs:
            return
        for robust, standard in self.robust_models():
            if "standard_to_robust" in self.transfer:
                seen = StoreKey(robust, inputs=transfer_inputs(standard, robust))
                yield "standard_to_robust", seen, StoreKey(standard, inputs=OWN_ADVERSARIAL)
            if "robust_to_standard" in self.transfer:
                seen = StoreKey(standard, inputs=transfer_inputs(robust, standard))
                yield "robust_to_standard", StoreKey(robust, inputs=OWN_ADVERSARIAL), seen
