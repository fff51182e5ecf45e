"""The main job, `python -m optclip.demo`, in its quick mode."""

from __future__ import annotations

import numpy as np
import pytest

from optclip import demo


def test_quick_regression_demo_prints_table_and_reading(capsys):
    argv = ["--task", "regression", "--quick", "--no-progress", "--optimizers", "sgd,gclip,acclip"]
    assert demo.main([*argv, "--steps", "150"]) == 0
    out = capsys.readouterr().out
    for name in ("sgd", "gclip", "acclip", "excess risk", "Reading:"):
        assert name in out


# Slow tier (30 s on 2 cores; CI runs it): the main job's quick run, end to end.
@pytest.mark.slow
def test_quick_transformer_demo_trains_on_two_seeds_and_saves_its_own_plot(
    tmp_path, capsys, monkeypatch
):
    trained = []  # what the command's own training returned (training it again costs seconds)

    def train_transformer(*args, **kwargs):
        trained.append(real(*args, **kwargs))
        return trained[-1]

    real = demo.train_transformer
    monkeypatch.setattr(demo, "train_transformer", train_transformer)
    assert demo.main(["--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("adam", "clip+adam", "agc+adam", "kept training", "seeds 0-1", "Reading:"):
        assert name in out
    assert f"docs/choosing.md recommends {demo.RECOMMENDED} (before it, agc+adam)" in out
    # A quick run must not overwrite the full run's plot.
    assert (tmp_path / "demo_loss_quick.png").stat().st_size > 1000
    assert not (tmp_path / "demo_loss.png").exists()
    ((_, rows, curves),) = trained
    assert [r["name"] for r in rows] == ["adam", "clip+adam", "agc+adam", demo.RECOMMENDED]
    by = {r["name"]: r for r in rows}
    # The point of the demo: 1e4 spikes stall Adam; a clip of the raw gradient first does not.
    assert not demo.survives(by["adam"]) and demo.survives(by["clip+adam"])
    assert np.mean(by["adam"]["val_spiked"]) > np.mean(by["adam"]["val"]) + 0.1
    for row in rows:
        assert row["val"].shape == row["val_spiked"].shape == (2,)
        assert row["val"][0] != row["val"][1]  # two seeds, two runs
        assert np.all(row["val"] < 4.85), row  # below the uniform-guess loss log(128) = 4.85
        assert curves[row["name"]][-1] < curves[row["name"]][0], row["name"]


def _row(name, *val):
    return dict(name=name, val=np.array(val))


@pytest.mark.parametrize(
    "a,b,expected",
    [
        # Gap 0.001 against a spread of std(1.000, 1.010) = 0.00707: another seed could flip it.
        (_row("acclip", 1.000, 1.010), _row("adam", 1.001, 1.011), "tie"),
        # Gap 0.1 against the same spread: a win.
        (_row("acclip", 1.000, 1.010), _row("adam", 1.100, 1.110), "acclip"),
        (_row("acclip", 1.100, 1.110), _row("adam", 1.000, 1.010), "adam"),
        # The larger spread of the two decides: std(0.9, 1.1) = 0.141 > gap 0.1.
        (_row("acclip", 0.9, 1.1), _row("adam", 1.1, 1.1), "tie"),
        # One seed has no spread: any gap decides.
        (_row("acclip", 1.0), _row("adam", 1.0001), "acclip"),
    ],
)
def test_compare_says_tie_within_the_seed_spread(a, b, expected):
    assert demo.compare(a, b) == expected


def test_the_demo_text_does_not_depend_on_the_interpreter(monkeypatch, tmp_path):
    from optclip.demo import charlm, corpus

    shipped = corpus.text()
    assert len(shipped) > 300_000 and "ACClip" in shipped
    # Nothing is read from the standard library: point it at an empty folder.
    monkeypatch.setattr(charlm.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    task = charlm.Task.make(charlm.Config(d_model=8, heads=1, layers=1, seq=8, batch=2), 50_000)
    data = np.concatenate([np.asarray(task.train), np.asarray(task.val)])
    np.testing.assert_array_equal(data, charlm.encode(shipped[:50_000]))
    # Rebuilding writes the same bytes for the same text (no timestamp in the gzip header).
    corpus.write(shipped[:1000], tmp_path / "a.gz")
    corpus.write(shipped[:1000], tmp_path / "b.gz")
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_every_flag_says_what_it_does(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    text = capsys.readouterr().out
    flags = [w.rstrip(",") for w in text.split() if w.startswith("--") and len(w) > 2]
    assert set(flags) >= {"--task", "--steps", "--seed", "--seeds", "--optimizers", "--out"}
    parser_help = {a.option_strings[-1]: a.help for a in demo._parser()._actions}
    for flag, help_text in parser_help.items():
        assert help_text and len(help_text.split()) >= 3, f"{flag} has no help"


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


@pytest.mark.parametrize("name", ["sgd_momentum", "acclip", "generalized_signsgd"])
def test_a_learning_rate_grid_is_one_program_per_rate_as_a_constant(name):
    # The grid vmaps the rate as an argument; each row must be what a program with that rate as
    # a Python constant gives, to float32 rounding of the rate.
    make, grid = demo.OPTIMIZERS[name]
    problems = demo.stack([demo.make_problem(s, 8, 60, 4, 1.5) for s in range(2)])
    together = demo.final_errors(make, grid[:3], problems)
    assert together.shape == (3, 2)
    for lr, row in zip(grid[:3], together, strict=True):
        (alone,) = demo.final_errors(lambda _, lr=lr: make(lr), [0.0], problems)
        np.testing.assert_allclose(row, alone, rtol=1e-5, err_msg=f"{name} lr={lr}")
    assert np.all(np.isfinite(together))


@pytest.mark.parametrize(
    "argv", [["--optimizers", "nope"], ["--steps", "0"], ["--seeds", "0"], ["--bogus"]]
)
def test_bad_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        demo.main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_stdlib_text_is_the_top_level_sources_in_sorted_order():
    """The corpus of docs/results.md' measurements: this interpreter's top-level stdlib files."""
    import sysconfig
    from pathlib import Path

    from optclip.demo import charlm

    text = charlm.stdlib_text(50_000)
    assert len(text) == 50_000
    first = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[0]
    expected = first.read_text(encoding="utf-8", errors="replace")
    assert text.startswith(expected[:50_000])
    codes = charlm.encode(text)
    assert codes.shape == (50_000,) and codes.max() < charlm.VOCAB
