"""Command line: ``python -m tlutils assets`` and ``python -m tlutils prepare``."""

from __future__ import annotations

import argparse
import sys
import time

from tlutils.core.assets import assets_by_name, resolve, status_table
from tlutils.core.sources import AssetNotFoundError


def print_assets(catalogue=None) -> int:
    """Print every asset with where it resolved from, or why not; return the exit code."""
    rows = status_table(build=False, catalogue=catalogue)
    assets = assets_by_name(catalogue)
    width = max(len(row["name"]) for row in rows)
    missing_offline = 0
    for row in rows:
        offline = assets[row["name"]].offline_capable
        if not row["problem"]:
            where = f"{row['source']:<8} {row['location']}"
        else:
            where = f"{'MISSING' if offline else 'online':<8} fix: {row['problem']}"
        print(f"{row['kind']:<8} {row['name']:<{width}}  {where}")
        missing_offline += bool(row["problem"]) and offline
    print(f"\n{len(rows) - sum(bool(r['problem']) for r in rows)} of {len(rows)} assets resolved; "
          f"{missing_offline} offline-capable assets missing")
    return 1 if missing_offline else 0


def _installed_by_setup(asset) -> bool:
    """True when ``make setup`` alone provides the asset (a pip package or a conversion of one)."""
    return any(source.kind == "package" or (source.kind == "cache" and source.builder is not None)
               for source in asset.sources)


def prepare(names: list[str] | None = None, catalogue=None) -> int:
    """Resolve (and so convert or download) the assets; return the exit code.

    Without ``names``: every data set and every model with an offline source.
    Only an asset that ``make setup`` provides and that still fails counts as a
    failure; the others (a Debian package, the internet once) are reported as
    skipped with the command that fixes them.
    """
    assets = assets_by_name(catalogue)
    unknown = [name for name in names or [] if name not in assets]
    if unknown:
        print(f"unknown asset name(s) {', '.join(unknown)}; known assets: {', '.join(sorted(assets))}",
              file=sys.stderr)
        return 2
    failures = 0
    for name, asset in sorted(assets.items()):
        wanted = name in names if names else asset.offline_capable or asset.kind == "dataset"
        if not wanted:
            continue
        start = time.perf_counter()
        try:
            found = resolve(name, build=True, catalogue=catalogue)
            print(f"ok       {name:<20} {found.source:<8} {time.perf_counter() - start:6.1f} s  {found.location}")
        except AssetNotFoundError as error:
            if _installed_by_setup(asset) or names:
                failures += 1
                print(f"FAILED   {name}\n{error}", file=sys.stderr)
            else:
                print(f"skipped  {name:<20} not available here; fix: {asset.fix}")
    return 1 if failures else 0


def main(argv: list[str] | None = None, catalogue=None) -> int:
    """The command line: ``assets`` lists where every asset resolves from, ``prepare`` builds them."""
    parser = argparse.ArgumentParser(prog="python -m tlutils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("assets", help="list every asset and where it resolves from")
    prep = commands.add_parser("prepare", help="run the one-time conversions into data/cache/")
    prep.add_argument("names", nargs="*", help="only these assets (default: every offline-capable one)")
    args = parser.parse_args(argv)
    return print_assets(catalogue) if args.command == "assets" else prepare(args.names, catalogue)


if __name__ == "__main__":
    sys.exit(main())
