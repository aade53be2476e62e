"""Interactive controls for the notebooks (ipywidgets), with a plain fallback.

Widgets need a live kernel: on a static page (GitHub, a PDF) the notebooks
show the output of one call at the default value instead.
"""

from __future__ import annotations

from typing import Callable


def interactive_plot(function: Callable, continuous_update: bool = False, **controls):
    """Re-run ``function(**values)`` whenever a control changes and show its figure.

    Args:
        function: Returns a matplotlib figure for the current values.
        continuous_update: Re-run while a slider is dragged (slow for training).
        **controls: ipywidgets controls by argument name, e.g. ``lam=FloatSlider(...)``.

    Returns:
        The ``ipywidgets.VBox`` holding the controls and the output area.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    output = widgets.Output()

    def redraw(_change=None):
        with output:
            output.clear_output(wait=True)
            figure = function(**{name: control.value for name, control in controls.items()})
            display(figure)
            plt.close(figure)

    for control in controls.values():
        control.continuous_update = continuous_update
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([*controls.values(), output])
