"""Metrics on known answers, and the command line."""

import numpy as np
import pytest

from tlutils.__main__ import main
from tlutils.metrics import accuracy, confusion_matrix, macro_f1


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
