"""Identities of everything the pipeline names: methods, models, activation stores, comparisons.

Each id is built by one function here and parsed by its inverse here; paths are derived from ids.
Ids name things, they do not carry data: coordinates (eps, norm, method, arch, seed) travel in the
artefacts' own metadata (weights, stores, metrics.json) and are read from there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

ID_PATTERN = r"[A-Za-z0-9._-]+"
SAFE_ID = re.compile(rf"^{ID_PATTERN}$")
CHECKPOINT_PATTERN = r"final|best|epoch\d+"
BENIGN, OWN_ADVERSARIAL, TRANSFER = "benign", "pgd", "transfer-"
# What a store's model sees: the test images, its own adversarial examples, or those crafted on
# another model of the dataset (`transfer_inputs`).
INPUTS_PATTERN = rf"{BENIGN}|{OWN_ADVERSARIAL}|{TRANSFER}{ID_PATTERN}"
_FULL_SOURCE = re.compile(r"^([^.]+)\.seed(\d+)\.(.+)$")


def eps_token(value: Any) -> str:
    """Filesystem-safe spelling of an eps: ``8/255 -> 8_255``, ``0.1 -> 0.1``."""
    if isinstance(value, str) and "/" in value:
        num, den = (part.strip() for part in value.split("/", 1))
        return f"{num}_{den}"
    eps = float(Fraction(value.strip())) if isinstance(value, str) else float(value)
    return f"{eps:g}" if eps == float(f"{eps:g}") else repr(eps)


def method_id(method: Mapping[str, Any]) -> str:
    """Canonical id of a training method: ``standard``, ``pgd-linf-eps8_255``, ``trades-l2-eps0.5``."""
    if method["method"] == "standard":
        return "standard"
    return f"{method['method']}-{method['norm']}-eps{eps_token(method['eps'])}"


METHOD_NAMES = {"pgd": "PGD", "trades": "TRADES"}
NORM_NAMES = {"linf": "L∞", "l2": "L2"}
_METHOD_ID = re.compile(r"^([a-z]+)-([a-z0-9]+)-eps(.+)$")


def method_label(method: str) -> str:
    """The readable name of a method id (`method_id`'s inverse, for figures and tables):
    ``pgd-linf-eps8_255 -> PGD L∞ ε=8/255``, ``standard -> standard``; an id of another shape
    is returned as it is."""
    parsed = _METHOD_ID.match(method)
    if not parsed:
        return method
    kind, norm, eps = parsed.groups()
    name, norm_name = METHOD_NAMES.get(kind, kind), NORM_NAMES.get(norm, norm)
    return f"{name} {norm_name} ε={eps.replace('_', '/')}"


@dataclass(frozen=True)
class ModelKey:
    """One trained model: dataset / arch / method id / seed. Fields may be wildcard patterns."""

    dataset: str
    arch: str
    method_id: str
    seed: int | str

    @property
    def id(self) -> str:
        """``digits/convnet/pgd-linf-eps0.1/seed0``; also the model's directory under models/."""
        return f"{self.dataset}/{self.arch}/{self.method_id}/seed{self.seed}"

    @classmethod
    def of(cls, model: Mapping[str, Any]) -> ModelKey:
        """The key of a model described by weights metadata or a metrics.json `model` entry
        (dataset, arch, resolved method, seed)."""
        return cls(model["dataset"], model["arch"], model["method"]["id"], int(model["seed"]))

    @classmethod
    def parse(cls, text: str) -> ModelKey:
        """Inverse of `id`."""
        parts = text.split("/")
        if len(parts) != 4 or not parts[3].startswith("seed") or not parts[3][4:].isdigit():
            raise ValueError(f"{text!r} is not a model id (dataset/arch/method_id/seed<int>)")
        return cls(parts[0], parts[1], parts[2], int(parts[3][4:]))

    def dir(self, root: str) -> str:
        """``{root}/models/{id}``: weights, checkpoints/ and metrics.json."""
        return f"{root}/models/{self.id}"

    def weights_path(self, root: str, checkpoint: str = "final") -> str:
        """A checkpoint's weights in the model's directory: ``model.safetensors`` (final),
        ``best.safetensors`` (best), ``checkpoints/epoch{e}.safetensors``."""
        if checkpoint == "final":
            return f"{self.dir(root)}/model.safetensors"
        if checkpoint == "best":
            return f"{self.dir(root)}/best.safetensors"
        return f"{self.dir(root)}/checkpoints/{checkpoint}.safetensors"

    def with_(self, **changes: Any) -> ModelKey:
        """The same model with some fields changed (another seed, method or arch)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class StoreKey:
    """One activation store: a model at a checkpoint (final, best, epoch{e}) on one input kind."""

    model: ModelKey
    checkpoint: str = "final"
    inputs: str = "benign"

    @property
    def id(self) -> str:
        return f"{self.model.id}/{self.checkpoint}/{self.inputs}"

    def path(self, root: str) -> str:
        """``{root}/activations/{model id}/{checkpoint}/{inputs}.zarr``"""
        return f"{root}/activations/{self.id}.zarr"

    def probe_path(self, root: str) -> str:
        """``{root}/probes/{model id}/{checkpoint}/{inputs}.nc``: the store's linear probes."""
        return f"{root}/probes/{self.id}.nc"

    @property
    def tag(self) -> str:
        """A one-component spelling within a dataset: ``arch.method_id.seed0.final.benign``."""
        m = self.model
        return f"{m.arch}.{m.method_id}.seed{m.seed}.{self.checkpoint}.{self.inputs}"

    def with_(self, **changes: Any) -> StoreKey:
        return replace(self, **changes)


def transfer_inputs(source: ModelKey, target: ModelKey) -> str:
    """The input kind of `target` seeing `source`'s adversarial examples: ``transfer-{method id}``
    when both share dataset, arch and seed, else ``transfer-{arch}.seed{n}.{method id}``."""
    if source.dataset != target.dataset:
        raise ValueError(
            f"adversarial examples of {source.id} cannot feed {target.id}: another dataset"
        )
    if (source.arch, source.seed) == (target.arch, target.seed):
        return f"{TRANSFER}{source.method_id}"
    return f"{TRANSFER}{source.arch}.seed{source.seed}.{source.method_id}"


def adversarial_source(inputs: str, target: ModelKey) -> ModelKey | None:
    """Whose adversarial examples a store of `target` on `inputs` sees (inverse of
    `transfer_inputs`): None for benign inputs, `target` itself for ``pgd``."""
    if inputs == BENIGN:
        return None
    if inputs == OWN_ADVERSARIAL:
        return target
    if not inputs.startswith(TRANSFER) or not SAFE_ID.match(inputs):
        raise ValueError(
            f"input kind {inputs!r} is not one of {BENIGN}, {OWN_ADVERSARIAL}, "
            f"{TRANSFER}{{method id}}, {TRANSFER}{{arch}}.seed{{n}}.{{method id}}"
        )
    source = inputs.removeprefix(TRANSFER)
    full = _FULL_SOURCE.match(source)
    if full:
        return target.with_(arch=full[1], seed=int(full[2]), method_id=full[3])
    return target.with_(method_id=source)


def splits_path(root: str, dataset: str) -> str:
    """``{root}/data/{dataset}/splits.npz``: a dataset's train / validation / test split."""
    return f"{root}/data/{dataset}/splits.npz"


def adversarial_path(root: str, model: ModelKey, checkpoint: str) -> str:
    """``{root}/adversarial/{model id}/{checkpoint}.zarr``: a model's evaluation-attack examples."""
    return f"{root}/adversarial/{model.id}/{checkpoint}.zarr"


def comparison_id(a: StoreKey, b: StoreKey) -> str:
    """The pair's file name within its analysis and dataset: ``{tag a}__{tag b}``."""
    return f"{a.tag}__{b.tag}"


def comparison_path(root: str, analysis: str, dataset: str, pair: str) -> str:
    return f"{root}/similarity/{analysis}/{dataset}/{pair}.nc"


def saved_epochs(epochs: int, checkpoint_every: int) -> list[int]:
    """Epochs whose weights training saves as checkpoints/epoch{e}.safetensors."""
    return [e for e in range(1, epochs + 1) if checkpoint_every and e % checkpoint_every == 0]


def method_coords(method: Mapping[str, Any]) -> dict[str, Any]:
    """method / norm / eps of a resolved method as stored in metadata (`none`, 0 for standard)."""
    return {
        "method": method["method"],
        "norm": method.get("norm") or "none",
        "eps": float(method.get("eps") or 0.0),
    }
