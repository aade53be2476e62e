# Sphinx configuration of the course's web site. Build it with `make site` (python -m tlutils site
# build/site), which lays out the source folder first (tlutils/course/site.py); notebooks are never executed.
project = "Transfer Learning Lab"
author = "Transfer Learning Lab contributors"
extensions = ["myst_nb"]

nb_execution_mode = "off"          # render the committed outputs; never run a notebook
nb_output_stderr = "show"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3           # "## 3. First-layer filters" -> #3-first-layer-filters, as on GitHub
exclude_patterns = ["warnings.log", "**/.ipynb_checkpoints"]

html_theme = "sphinx_book_theme"
html_title = project
html_copy_source = False           # the notebooks are in the repository; no second copy on the site
html_show_sourcelink = False
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "show_toc_level": 2,
}
