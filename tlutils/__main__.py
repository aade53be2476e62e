"""Command line: ``python -m tlutils assets``, ``prepare``, ``tidy``, ``student``, ``site`` and ``finetune``
(which also runs under torchrun)."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from tlutils.core.assets import assets_by_name, close_names, resolve, status_table
from tlutils.core.sources import AssetError


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
    print(
        f"\n{len(rows) - sum(bool(r['problem']) for r in rows)} of {len(rows)} assets resolved; "
        f"{missing_offline} offline-capable assets missing"
    )
    return 1 if missing_offline else 0


def _installed_by_setup(asset) -> bool:
    """True when ``make setup`` alone provides the asset (a pip package or a conversion of one).

    A cache built from a Debian package (``apt-get download``) needs a Debian-based system, so it does not count.
    """
    return any(
        source.kind == "package"
        or (
            source.kind == "cache"
            and source.builder is not None
            and not getattr(source.builder, "debian_package", None)
        )
        for source in asset.sources
    )


def _prepare_one(name: str, asset, catalogue, named: bool) -> dict:
    """Resolve one asset with builds allowed; return its summary row (never raises for a failed asset)."""
    start = time.perf_counter()
    row = dict(name=name, status="ok", source="-", seconds=0.0, problem="")
    try:
        found = resolve(name, build=True, catalogue=catalogue)
        row.update(source=found.source, location=found.location)
    except AssetError as error:
        failed = named or _installed_by_setup(asset)
        row.update(
            status="FAILED" if failed else "skipped",
            problem=str(error) if failed else f"not available here; fix: {asset.fix}",
        )
    except Exception as error:  # a conversion that breaks must not stop the other assets
        row.update(status="FAILED", problem=f"{type(error).__name__}: {error}")
    row["seconds"] = time.perf_counter() - start
    return row


def _print_row(row: dict) -> None:
    if row["status"] == "ok":
        print(f"ok       {row['name']:<20} {row['source']:<8} {row['seconds']:6.1f} s  {row['location']}")
    elif row["status"] == "skipped":
        print(f"skipped  {row['name']:<20} {row['problem']}")
    else:
        print(f"FAILED   {row['name']}\n{row['problem']}", file=sys.stderr)


def print_summary(rows: list[dict]) -> None:
    """The table printed at the end of ``prepare``: one line per asset, the first line of each problem."""
    width = max([len(row["name"]) for row in rows] + [5])
    print(f"\n{'asset':<{width}}  {'result':<8} {'source':<8} {'seconds':>7}  problem")
    for row in rows:
        problem = next(
            (line for line in row["problem"].splitlines() if line.startswith("Fix:")),
            row["problem"].splitlines()[0] if row["problem"] else "",
        )
        print(f"{row['name']:<{width}}  {row['status']:<8} {row['source']:<8} {row['seconds']:7.1f}  {problem}")
    failed = sum(row["status"] == "FAILED" for row in rows)
    print(f"{len(rows) - failed} of {len(rows)} assets ready or skipped; {failed} failed")


def prepare(names: list[str] | None = None, catalogue=None) -> int:
    """Resolve (and so convert or download) the assets; return the exit code.

    Without ``names``: every data set and every model with an offline source.
    Only an asset that ``make setup`` provides and that still fails counts as a
    failure; the others (a Debian package, the internet once) are reported as
    skipped with the command that fixes them. A failing asset does not stop the
    others: the summary table at the end lists every result, and the exit code is
    1 when any failed (2 for an unknown name).
    """
    assets = assets_by_name(catalogue)
    unknown = [name for name in names or [] if name not in assets]
    if unknown:
        for name in unknown:
            guesses = close_names(name, list(assets))
            hint = f" (did you mean {' or '.join(guesses)}?)" if guesses else ""
            print(f"unknown asset name(s) {name}{hint}", file=sys.stderr)
        print(f"known assets: {', '.join(sorted(assets))}", file=sys.stderr)
        return 2
    rows = []
    for name, asset in sorted(assets.items()):
        if names and name not in names or not names and not (asset.offline_capable or asset.kind == "dataset"):
            continue
        rows.append(_prepare_one(name, asset, catalogue, named=bool(names)))
        _print_row(rows[-1])
    if rows:
        print_summary(rows)
    return 1 if any(row["status"] == "FAILED" for row in rows) else 0


def load_catalogue(spec: str):
    """Import a catalogue named ``"package.module:NAME"`` (a tuple of :class:`~tlutils.core.sources.Asset`).

    Raises:
        SystemExit: the module or the name does not exist, with a message saying so.
    """
    module_name, _, attribute = spec.partition(":")
    try:
        return tuple(getattr(importlib.import_module(module_name), attribute or "CATALOGUE"))
    except (ImportError, AttributeError, TypeError) as error:
        raise SystemExit(f"--catalogue {spec!r}: {error}; expected 'package.module:NAME' naming a tuple of Asset")


def tidy_notebooks(paths: list[str]) -> int:
    """Rewrite the progress-bar outputs of each notebook from its saved widget state; return the exit code."""
    from tlutils.course.notebook_outputs import tidy_file

    failed = 0
    for path in paths:
        try:
            print(f"{path}: {tidy_file(path)} progress-bar outputs tidied")
        except (OSError, ValueError) as error:
            print(f"{path}: not tidied: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def write_student_copies(out: str, paths: list[str]) -> int:
    """Write student copies of the notebooks (all of them, in curriculum order, by default); return the exit code."""
    from pathlib import Path

    from tlutils.core.paths import project_root
    from tlutils.course.curriculum import NOTEBOOKS
    from tlutils.course.student import write_student_copies as write

    folder = project_root() / "notebooks"
    notebooks = [Path(p) for p in paths] or [folder / n for n, _, _ in NOTEBOOKS if (folder / n).is_file()]
    for row in write(notebooks, Path(out)):
        print(f"{row['notebook']:<42} {row['stubs']} solution(s) replaced by stubs")
        for index, names in row["depends_on_solutions"]:
            print(f"  warning: cell {index} reads {', '.join(sorted(names))}, which only a solution defines: "
                  "in the student copy the notebook stops there until the student defines it", file=sys.stderr)
    print(f"student copies in {out}/")
    return 0


def build_site(out: str) -> int:
    """Build the course's static site into ``out`` without executing a notebook; return the exit code."""
    from tlutils.course.site import build_site as build

    try:
        seconds = build(out)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"site built in {seconds:.1f} s: open {out}/index.html")
    return 0


def main(argv: list[str] | None = None, catalogue=None) -> int:
    """The command line: ``assets`` lists where every asset resolves from, ``prepare`` builds them."""
    parser = argparse.ArgumentParser(prog="python -m tlutils", description=__doc__)
    parser.add_argument(
        "--catalogue",
        metavar="MODULE:NAME",
        help="use this catalogue instead of the packaged one (for example a project's own)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("assets", help="list every asset and where it resolves from")
    prep = commands.add_parser("prepare", help="run the one-time conversions into data/cache/")
    prep.add_argument("names", nargs="*", help="only these assets (default: every offline-capable one)")
    tidy = commands.add_parser("tidy", help="make the progress bars of executed notebooks show their last state")
    tidy.add_argument("notebooks", nargs="+", help="the .ipynb files to tidy in place")
    student = commands.add_parser("student", help="write student copies: solutions replaced by stubs")
    student.add_argument("out", help="the folder for the copies (for example build/student)")
    student.add_argument("notebooks", nargs="*", help="only these .ipynb files (default: every notebook)")
    site = commands.add_parser("site", help="build the course's static web site from the executed notebooks")
    site.add_argument("out", nargs="?", default="build/site", help="the HTML folder (default: build/site)")
    from tlutils.course import finetune_job

    finetune_job.build_parser(commands.add_parser("finetune", help="fine-tune the sentiment classifier; runs under "
                                                  "torchrun for data-parallel training", description=finetune_job.__doc__,
                                                  formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    if args.command == "tidy":
        return tidy_notebooks(args.notebooks)
    if args.command == "student":
        return write_student_copies(args.out, args.notebooks)
    if args.command == "site":
        return build_site(args.out)
    if args.command == "finetune":
        finetune_job.run(args)
        return 0
    if args.catalogue:
        catalogue = load_catalogue(args.catalogue)
    return print_assets(catalogue) if args.command == "assets" else prepare(args.names, catalogue)


if __name__ == "__main__":
    sys.exit(main())
