"""One resolver for every pre-trained model and data set the course uses.

Each asset has an ordered list of sources and the first that works wins:

1. a local mirror folder named by ``$TLLAB_MIRROR`` (CI points it at a shared copy);
2. a file shipped inside an installed pip package or a Debian package;
3. the project's own cache under ``data/cache/`` (built once, written atomically);
4. the canonical online source (torchvision, the Hugging Face Hub, the data set's URL).

When none works, :class:`~tlutils.core.sources.AssetNotFoundError` names the asset,
every source tried with the reason it failed, and the one command that fixes it.
The catalogue is plain data (:data:`tlutils.core.catalog.CATALOGUE`), passed as an
argument: nothing registers itself at import time.

Example:
    >>> from tlutils.core.assets import resolve
    >>> resolve("mobilenet_v2").source
    'package'
"""

from __future__ import annotations

from typing import Sequence

from tlutils.core.sources import (
    Asset,
    AssetError,
    AssetNotFoundError,
    Resolved,
    SourceMiss,
    UnknownAssetError,
)


def assets_by_name(catalogue: Sequence[Asset] | None = None) -> dict[str, Asset]:
    """The assets of ``catalogue`` (default: the packaged :data:`~tlutils.core.catalog.CATALOGUE`) by name.

    Raises:
        AssetError: two assets share a name.
    """
    if catalogue is None:
        from tlutils.core.catalog import CATALOGUE as catalogue
    by_name: dict[str, Asset] = {}
    for asset in catalogue:
        if asset.name in by_name:
            raise AssetError(f"asset {asset.name!r} appears twice in the catalogue")
        by_name[asset.name] = asset
    return by_name


def get_asset(name: str, catalogue: Sequence[Asset] | None = None) -> Asset:
    """Return the catalogued asset, or raise :class:`UnknownAssetError` listing the names."""
    assets = assets_by_name(catalogue)
    if name not in assets:
        known = ", ".join(sorted(assets))
        raise UnknownAssetError(f"unknown asset {name!r}; known assets: {known}")
    return assets[name]


def resolve(name: str, build: bool = True, sources: Sequence[str] | None = None,
            catalogue: Sequence[Asset] | None = None) -> Resolved:
    """Find an asset, trying its sources in order.

    Args:
        name: Asset name, for example ``"mobilenet_v2"``.
        build: Allow cache builds (conversions) and downloads into the cache.
        sources: Restrict to these source kinds, for example ``("mirror", "package")``.
        catalogue: The assets to look in; default the packaged catalogue.

    Returns:
        A :class:`Resolved` naming the source and location.

    Raises:
        UnknownAssetError: ``name`` is not in the catalogue.
        AssetNotFoundError: no source worked; the message lists each reason and the fix.
    """
    asset = get_asset(name, catalogue)
    reasons = []
    for source in asset.sources:
        if sources is not None and source.kind not in sources:
            continue
        try:
            location = source.locate(asset, build, lambda need: resolve(need, catalogue=catalogue).path)
            return Resolved(name, source.kind, location)
        except SourceMiss as miss:
            reasons.append(f"  - {source.describe()}: {miss}")
    tried = "\n".join(reasons) or "  (no source of the requested kinds)"
    raise AssetNotFoundError(
        f"asset {name!r} ({asset.description}) was not found.\nSources tried, in order:\n"
        f"{tried}\nFix: {asset.fix}"
    )


def status_table(build: bool = False, catalogue: Sequence[Asset] | None = None) -> list[dict]:
    """Resolve every asset without side effects and report where it came from.

    Returns:
        One row per asset with ``name``, ``kind``, ``source``, ``location`` and
        ``problem`` (empty when resolved).
    """
    rows = []
    for name, asset in sorted(assets_by_name(catalogue).items(), key=lambda item: (item[1].kind, item[0])):
        try:
            found = resolve(name, build=build, catalogue=catalogue)
            rows.append(dict(name=name, kind=asset.kind, source=found.source,
                             location=found.location, problem=""))
        except AssetNotFoundError as error:
            problem = str(error).splitlines()[-1].removeprefix("Fix: ")
            rows.append(dict(name=name, kind=asset.kind, source="-", location="-", problem=problem))
    return rows
