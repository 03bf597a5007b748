"""A bundle's models: the model-store versions its graph references, pinned when it is built and
served from the bundle.

Build: an app graph in; out, the bundle's ``models/`` folder (a store of its own holding just
those versions, with fixed metadata: `servekit._models.pinned`) and the manifest's
`ModelEntry`s. A reference that cannot be resolved is a `BundleError` naming it and the fix.

Serve: a bundle's app and manifest in; out, the same app with each reference pinned to its
bundled version in ``models/``, except where the user points at a store: a reference's own
``store=``, or ``SERVEKIT_MODEL_STORE`` for all of them (then references resolve there, tags
followed as usual).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from servekit._bundle.manifest import ModelEntry
from servekit._models.pinned import PinnedModel, pin_ref, write_pinned_store
from servekit._spec.deployment import Application
from servekit._spec.graph import AppGraph, map_model_refs
from servekit._spec.models import ModelRef, model_refs
from servekit.errors import BundleError, ModelStoreError

MODELS_DIR = "models"
STORE_VARIABLE = "SERVEKIT_MODEL_STORE"


def bundle_models(graph: AppGraph, staging: Path, target: str) -> tuple[list[ModelEntry], list[str]]:
    """Resolve every model reference of `graph` now and copy those versions into
    ``staging/models``; the manifest's entries and the files written (bundle paths, sorted)."""
    pinned: list[PinnedModel] = []
    for node, refs in model_refs(graph.nodes).items():
        for ref in refs:
            try:
                pinned.append(pin_ref(ref))
            except ModelStoreError as exc:
                raise BundleError(
                    f"cannot build {target!r}: deployment {node!r} binds {_described(ref)}, which does not "
                    f"resolve: {exc}"
                ) from None
    if not pinned:
        return [], []
    try:
        files = write_pinned_store(pinned, staging / MODELS_DIR)
    except ModelStoreError as exc:
        raise BundleError(f"cannot build {target!r}: {exc}") from None
    return model_entries(pinned), [f"{MODELS_DIR}/{path}" for path in files]


def _described(ref: ModelRef) -> str:
    what = f"version {ref.version!r}" if ref.version is not None else f"tag {ref.tag!r}"
    return f"model {ref.name!r} {what}"


def model_entries(pinned: list[PinnedModel]) -> list[ModelEntry]:
    """One manifest entry per distinct reference (model and tag, or model and version), sorted."""
    entries = {
        ModelEntry(
            name=item.info.name,
            version=item.info.version,
            tag=None if item.ref.version is not None else item.ref.tag,
            sha256=item.info.sha256,
            size=item.info.size,
        )
        for item in pinned
    }
    return sorted(entries, key=lambda entry: (entry.name, entry.tag or "", entry.version))


def serve_models_from(app: Application, models: Sequence[ModelEntry], store: str) -> Application:
    """`app` with each model reference that names no store pinned to the version the bundle
    carries (`models`, from its manifest), in the store at `store` (the bundle's ``models/``);
    unchanged where ``SERVEKIT_MODEL_STORE`` is set. `BundleError` for a reference it lacks."""
    if not models or os.environ.get(STORE_VARIABLE):
        return app
    tags = {(entry.name, entry.tag): entry.version for entry in models if entry.tag is not None}
    versions = {(entry.name, entry.version) for entry in models}

    def pinned(ref: ModelRef) -> ModelRef:
        if ref.store is not None:
            return ref
        version = ref.version if ref.version is not None else tags.get((ref.name, ref.tag or "latest"))
        if version is None or (ref.name, version) not in versions:
            raise BundleError(
                f"the bundle carries no {_described(ref)} in {MODELS_DIR}/ (its models: "
                f"{', '.join(_label(entry) for entry in models)}); rebuild the bundle, or set "
                f"{STORE_VARIABLE} to serve models from a store"
            )
        return dataclasses.replace(ref, tag=None, version=version, store=store, pinned=None)

    return map_model_refs(app, pinned)


def describe_models(models: Sequence[ModelEntry]) -> str | None:
    """Where a bundle's model references resolve when it is served, in words (None: it binds none)."""
    if not models:
        return None
    store = os.environ.get(STORE_VARIABLE)
    if store:
        return f"models from {STORE_VARIABLE}={store} (not the bundle's pinned versions)"
    pins = ", ".join(
        f"{_label(entry)}{'' if entry.tag is None else ' -> ' + entry.version}" for entry in models
    )
    return f"models from the bundle: {pins} (a reference's own store= uses its store)"


def _label(entry: ModelEntry) -> str:
    return f"{entry.name}:{entry.tag}" if entry.tag is not None else f"{entry.name}@{entry.version}"
