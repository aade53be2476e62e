"""The course as a static web site (``make site``), built from the committed, executed notebooks.

Nothing is executed: Sphinx with MyST-NB renders the outputs the notebooks were committed with
(``docs/conf.py``). The site's source folder mirrors the repository, so the relative links that
work on GitHub work on the site too:

    index.md             the README (the home page) and the navigation, in curriculum order
    notebooks/NN_*.ipynb copies whose widgets show their static fallback (below)
    docs/TEACHING.md     the teacher guide
    docs/questions.md    the interview question bank, by topic, each question linked to its evidence

A widget needs a live kernel. On the site an ``interactive_plot`` shows what its saved widget
state holds: the plot it drew for the default value, with a line naming the controls. Solution
cells stay collapsed (MyST-NB's ``hide-input``): a reader opens them on purpose.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tlutils.core.paths import project_root
from tlutils.course.curriculum import NOTEBOOKS

_VIEW = "application/vnd.jupyter.widget-view+json"
_STATE = "application/vnd.jupyter.widget-state+json"
_CONTROLS = {"FloatSliderModel", "IntSliderModel", "FloatLogSliderModel", "DropdownModel", "SelectionSliderModel",
             "IntRangeSliderModel", "FloatRangeSliderModel", "ToggleButtonsModel", "RadioButtonsModel", "CheckboxModel"}


def _children(model: dict) -> list[str]:
    return [str(child).replace("IPY_MODEL_", "") for child in model.get("state", {}).get("children", [])]


def _walk_widget(model_id: str, state: dict, controls: list[str], outputs: list[dict]) -> None:
    """Collect a saved widget tree's controls (as text) and the outputs its Output widgets hold."""
    model = state.get(model_id)
    if model is None:
        return
    name, values = model.get("model_name", ""), model.get("state", {})
    if name == "OutputModel":
        outputs.extend(values.get("outputs", []))
    elif name in _CONTROLS:
        label = values.get("description") or name.removesuffix("Model")
        controls.append(f"{label} = {values.get('value')}")
    for child in _children(model):
        _walk_widget(child, state, controls, outputs)


def static_widget_outputs(notebook: dict) -> int:
    """Replace each widget output by its static fallback (changed in place); return how many were replaced.

    The fallback is what the saved widget state holds: the outputs of its Output widgets (the
    plot for the default value) after a line naming the controls; a widget without an Output
    (a progress bar) keeps its plain-text copy.
    """
    state = notebook.get("metadata", {}).get("widgets", {}).get(_STATE, {}).get("state", {})
    replaced = 0
    for cell in notebook.get("cells", []):
        new_outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(_VIEW)
            if view is None:
                new_outputs.append(output)
                continue
            replaced += 1
            controls, inner = [], []
            _walk_widget(view.get("model_id", ""), state, controls, inner)
            if controls or inner:
                note = "Interactive in JupyterLab" + (f" ({', '.join(controls)})" if controls else "") + \
                    "; shown here at its default value."
                new_outputs.append({"output_type": "display_data", "metadata": {},
                                    "data": {"text/markdown": f"*{note}*", "text/plain": note}})
                new_outputs.extend(inner)
            else:
                data = {key: value for key, value in output["data"].items() if key != _VIEW}
                if data:
                    new_outputs.append({**output, "data": data})
        cell["outputs"] = new_outputs
    notebook.get("metadata", {}).pop("widgets", None)  # nothing left to render with widget JavaScript
    return replaced


_LAB_LINK = re.compile(r"\(([0-9A-Za-z_]+)\.ipynb#([^)\s]+)\)")


def _site_link(match: re.Match) -> str:
    """A JupyterLab heading link ``(NB.ipynb#3.1-Feature-extraction)`` as the site's ``(NB.html#slug)``."""
    from tlutils.course.question_bank import BankError, notebook_headings

    try:
        headings = notebook_headings(match.group(1))
    except BankError:
        return match.group(0)
    slugs = {heading.replace(" ", "-").replace("`", ""): heading_anchor(heading) for heading in headings}
    anchor = slugs.get(match.group(2))
    return match.group(0) if anchor is None else f"({match.group(1)}.html#{anchor})"


def prepare_notebook(notebook: dict) -> dict:
    """The site's copy of a notebook: static widget fallbacks, solution cells collapsed (``hide-input``),
    and the heading links of generated Markdown outputs (the interview hub's evidence) pointing at pages."""
    static_widget_outputs(notebook)
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            markdown = output.get("data", {}).get("text/markdown")
            if markdown is not None:
                text = "".join(markdown) if isinstance(markdown, list) else markdown
                output["data"]["text/markdown"] = _LAB_LINK.sub(_site_link, text)
        tags = cell.get("metadata", {}).get("tags", [])
        if "solution" in tags and "hide-input" not in tags:
            cell["metadata"]["tags"] = [*tags, "hide-input"]
    return notebook


def heading_anchor(section: str) -> str:
    """The anchor MyST gives a heading (GitHub's rule), e.g. ``"3. First-layer filters"`` -> ``3-first-layer-filters``."""
    from mdit_py_plugins.anchors.index import slugify

    return slugify(re.sub(r"\$[^$]*\$", "", section))  # MyST leaves inline math out of the anchor


def question_bank_page(questions, topics: tuple[str, ...]) -> str:
    """The question bank as a Markdown page: questions by topic, each linked to the section that shows it."""
    from tlutils.course.question_bank import render

    blank = Path(tempfile.mkdtemp(prefix="no-headlines-"))  # quotes say what to run, not one learner's numbers
    try:
        lines = ["# Interview question bank", "",
                 f"The {len(questions)} questions of notebook 13's quiz, flashcards and mock interview, by topic. "
                 "Each links to the notebook section whose experiment demonstrates the answer; in the notebook the "
                 "answers quote your own measured numbers. The questions are plain YAML in "
                 "`tlutils/course/questions/`.", ""]
        for topic in topics:
            chosen = [q for q in questions if q.topic == topic]
            if not chosen:
                continue
            lines += [f"## {topic.replace('_', ' ')}", ""]
            for question in chosen:
                notebook, section = question.evidence["notebook"], question.evidence["section"]
                link = f"../notebooks/{notebook}.ipynb#{heading_anchor(section)}"
                text = " ".join(render(question.question, blank).split())
                lines.append(f"- **{question.kind}**, difficulty {question.difficulty}: {text} "
                             f"(evidence: [{notebook} · {section}]({link}))")
            lines.append("")
        return "\n".join(lines)
    finally:
        shutil.rmtree(blank, ignore_errors=True)


def _toctree(caption: str, entries: list[str]) -> list[str]:
    return ["", "```{toctree}", ":hidden:", f":caption: {caption}", "", *entries, "```"]


def write_site_source(target: Path, root: Path | None = None) -> list[str]:
    """Lay out the site's source folder (replaced if present); return the notebook names, in order."""
    from tlutils.course.question_bank import TOPICS, load_bank

    root = Path(root or project_root())
    if target.exists():
        shutil.rmtree(target)
    (target / "notebooks").mkdir(parents=True)
    (target / "docs").mkdir()
    names = [name for name, _, _ in NOTEBOOKS if (root / "notebooks" / name).is_file()]
    for name in names:
        notebook = prepare_notebook(json.loads((root / "notebooks" / name).read_text(encoding="utf-8")))
        (target / "notebooks" / name).write_text(json.dumps(notebook), encoding="utf-8")
    guide = (root / "docs" / "TEACHING.md").read_text(encoding="utf-8")
    guide += "\nOn this site, the [interview question bank](questions.md) lists every question by topic.\n"
    (target / "docs" / "TEACHING.md").write_text(guide, encoding="utf-8")
    (target / "docs" / "questions.md").write_text(question_bank_page(load_bank(), TOPICS), encoding="utf-8")
    home = (root / "README.md").read_text(encoding="utf-8").splitlines()
    home += _toctree("Notebooks", [f"notebooks/{Path(name).stem}" for name in names])
    home += _toctree("Teaching", ["docs/TEACHING", "docs/questions"])
    (target / "index.md").write_text("\n".join(home) + "\n", encoding="utf-8")
    return names


def build_site(out: str | Path, source: str | Path | None = None, root: Path | None = None) -> float:
    """Build the static site into ``out``; return the seconds it took.

    Args:
        out: The HTML folder (``build/site`` for ``make site``; ignored by git).
        source: Where to lay out the site's source (default: ``out`` + ``-src``).
        root: The project (default: this checkout).

    Raises:
        RuntimeError: Sphinx failed or warned (a broken link, a missing anchor); its log says where.
    """
    start = time.perf_counter()
    root = Path(root or project_root())
    out = Path(out)
    source = Path(source) if source else out.with_name(out.name + "-src")
    write_site_source(source, root)
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", "-c", str(root / "docs"),
               str(source), str(out), "-w", str(source / "warnings.log")]
    done = subprocess.run(command, capture_output=True, text=True)
    warnings = (source / "warnings.log").read_text() if (source / "warnings.log").is_file() else ""
    if done.returncode or warnings.strip():
        raise RuntimeError(f"sphinx-build failed ({done.returncode}):\n{done.stderr[-4000:]}\n{warnings[-4000:]}")
    return time.perf_counter() - start
