"""The main job, `python -m optclip.demo`, in its quick mode."""

from __future__ import annotations

import numpy as np
import pytest

from optclip import demo


def test_quick_demo_prints_table_and_reading(capsys):
    assert (
        demo.main(
            ["--quick", "--no-progress", "--optimizers", "sgd,gclip,acclip", "--steps", "150"]
        )
        == 0
    )
    out = capsys.readouterr().out
    for name in ("sgd", "gclip", "acclip", "excess risk", "Reading:"):
        assert name in out


def test_clipping_beats_sgd_in_expectation():
    # The demo's claim, on held-out seeds: GClip's mean excess risk is below SGD's.
    rows = demo.run(
        ["sgd", "gclip"],
        steps=400,
        dim=20,
        batch=8,
        tune_seeds=range(100, 103),
        eval_seeds=range(6),
        progress=False,
    )
    by = {r["name"]: r for r in rows}
    assert np.isfinite(by["gclip"]["mean"])
    assert by["gclip"]["mean"] < by["sgd"]["mean"]


@pytest.mark.parametrize("argv", [["--optimizers", "nope"], ["--steps", "0"], ["--bogus"]])
def test_bad_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        demo.main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err
