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

import difflib
import warnings
from typing import Sequence

from tlutils.core.sources import (
    Asset,
    AssetDamagedError,
    AssetError,
    AssetNotFoundError,
    AssetWarning,
    Resolved,
    SourceDamaged,
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


def close_names(name: str, known: Sequence[str], count: int = 3) -> list[str]:
    """The known names closest to a mistyped ``name`` (case and ``-``/``_`` do not matter), best first."""
    folded = {candidate.lower().replace("-", "_"): candidate for candidate in known}
    wanted = str(name).lower().replace("-", "_")
    if wanted in folded:  # only case or a dash differs: that is the one
        return [folded[wanted]]
    matches = difflib.get_close_matches(wanted, list(folded), n=count, cutoff=0.6)
    return [folded[match] for match in matches]


def unknown_name_message(name: str, known: Sequence[str]) -> str:
    """``unknown asset 'mobilenetv2'; did you mean 'mobilenet_v2'? Known assets: ...``."""
    guesses = close_names(name, known)
    guess = f"; did you mean {' or '.join(repr(g) for g in guesses)}?" if guesses else ""
    return f"unknown asset {name!r}{guess} Known assets: {', '.join(sorted(known))}"


def get_asset(name: str, catalogue: Sequence[Asset] | None = None) -> Asset:
    """Return the catalogued asset, or raise :class:`UnknownAssetError` with close names and the list."""
    assets = assets_by_name(catalogue)
    if not isinstance(name, str) or name not in assets:
        raise UnknownAssetError(unknown_name_message(name, list(assets)))
    return assets[name]


def resolve(
    name: str, build: bool = True, sources: Sequence[str] | None = None, catalogue: Sequence[Asset] | None = None
) -> Resolved:
    """Find an asset, trying its sources in order.

    Args:
        name: Asset name, for example ``"mobilenet_v2"``.
        build: Allow cache builds (conversions) and downloads into the cache.
        sources: Restrict to these source kinds, for example ``("mirror", "package")``.
        catalogue: The assets to look in; default the packaged catalogue.

    Returns:
        A :class:`Resolved` naming the source and location.

    A damaged source (a file whose sha256 does not match, a cache folder that differs
    from its build record) is skipped with an :class:`AssetWarning` when a later
    source works.

    Raises:
        UnknownAssetError: ``name`` is not in the catalogue; the message suggests close names.
        AssetDamagedError: no source worked and one held a damaged file; the message names it and the fix.
        AssetNotFoundError: no source worked; the message lists each reason and the fix.
    """
    asset = get_asset(name, catalogue)
    reasons, damaged = [], []
    for source in asset.sources:
        if sources is not None and source.kind not in sources:
            continue
        try:
            location = source.locate(asset, build, lambda need: resolve(need, catalogue=catalogue).path)
        except SourceMiss as miss:
            reasons.append(f"  - {source.describe()}: {miss}")
            if isinstance(miss, SourceDamaged):
                damaged.append(source)
            continue
        if damaged:
            warnings.warn(
                f"asset {name!r}: skipped a damaged source, using {source.describe()} instead:\n" + "\n".join(reasons),
                AssetWarning,
                stacklevel=2,
            )
        return Resolved(name, source.kind, location, fix=source.repair(asset))
    tried = "\n".join(reasons) or "  (no source of the requested kinds)"
    error = AssetDamagedError if damaged else AssetNotFoundError
    fix = damaged[0].repair(asset) if damaged else asset.fix
    raise error(f"asset {name!r} ({asset.description}) was not found.\nSources tried, in order:\n{tried}\nFix: {fix}")


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
            rows.append(dict(name=name, kind=asset.kind, source=found.source, location=found.location, problem=""))
        except AssetNotFoundError as error:
            problem = str(error).splitlines()[-1].removeprefix("Fix: ")
            rows.append(dict(name=name, kind=asset.kind, source="-", location="-", problem=problem))
    return rows
