"""Metrics on known answers, and the command line."""

import numpy as np
import pytest

from tlutils.__main__ import main
from tlutils.core.metrics import accuracy, confusion_matrix, macro_f1


def test_metrics_on_a_known_case():
    y_true, y_pred = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert macro_f1(y_true, y_pred) == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
    assert confusion_matrix(y_true, y_pred, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="one prediction per example"):
        accuracy([0, 1], [0])


def test_assets_command_lists_every_asset(capsys):
    main(["assets"])
    out = capsys.readouterr().out
    assert "mobilenet_v2" in out and "resnet18" in out and "assets resolved" in out
    assert "online   fix: connect to the internet" in out


@pytest.fixture
def two_assets():
    from tlutils.core.sources import Asset, Cache

    return (Asset("cli_good", "dataset", "builds", (Cache(lambda out, inputs: (out / "f").write_text("x")),),
                  fix="nothing"),
            Asset("cli_bad", "dataset", "cannot build", (Cache(),), fix="run the fixer"))


def test_prepare_exit_codes(temp_cache, two_assets, capsys):
    assert main(["prepare", "cli_good"], two_assets) == 0
    assert "ok       cli_good" in capsys.readouterr().out
    assert main(["prepare", "cli_bad"], two_assets) == 1
    assert "Fix: run the fixer" in capsys.readouterr().err
    assert main(["prepare", "cli_good", "no_such_asset"], two_assets) == 2  # a typo is an error, not a silent no-op
    assert "unknown asset name(s) no_such_asset" in capsys.readouterr().err


def test_bar_chart_puts_the_first_label_on_top_and_checks_lengths():
    import matplotlib

    matplotlib.use("Agg")
    from tlutils.core.plots import bar_chart

    fig = bar_chart(["pre-trained backbone", "random backbone"], [0.27, 0.001], "AP")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["pre-trained backbone", "random backbone"]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # inverted: the first bar is on top
    assert [round(b.get_width(), 3) for b in ax.patches] == [0.27, 0.001]
    with pytest.raises(ValueError, match="one value per label"):
        bar_chart(["a", "b"], [1.0], "x")
