"""The benchmark scripts run, print a table and write their JSON (on tiny settings here;
the speed and quality figures themselves live in benchmarks/results/, not in tests)."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, args", [
    ("loss_speed", ["--T", "20", "--repeats", "3", "--vlb-terms-T", "4", "--batch", "4", "--size", "8"]),
    ("train_speed", ["--steps", "1", "--data", "digits", "--eval-batch", "8", "--device", "cpu"]),
    ("train_speed", ["--steps", "1", "--data", "digits", "--eval-batch", "8", "--device", "cpu", "--t-sampler",
                     "stratified", "--batch-size", "16", "--target-ratio", "100", "--minutes", "0.5",
                     "--check-seconds", "0", "--check-maps", "4"]),
    ("quality", ["--budgets", "0.01", "--compare", "bayes-all:0.01,fold4+uniform+batch64:0.01", "--digits-budget", "0", "--eval-maps", "3",
                 "--T", "10", "--device", "cpu"]),
    ("widget_latency", ["--T", "20", "--repeats", "3", "--dataset", "digits"]),
    ("profile_step", ["--data", "digits", "--repeats", "1", "--device", "cpu"]),
    ("likelihood", ["--fast", "--quiet", "--device", "cpu"]),
    ("oracle", ["--checkpoint", "none", "--T", "10", "--eval-maps", "3", "--info-maps", "4"]),
    ("samples", ["--n", "2", "--steps", "1,2", "--test-maps", "4", "--device", "cpu"]),
    ("text", ["--fast", "--steps", "3", "--k", "1", "--quiet", "--device", "cpu"]),
])
def test_benchmark_writes_json(tmp_path, capsys, name, args):
    out = tmp_path / f"{name}.json"
    load(name).main(args + ["--json", str(out)])
    result = json.loads(out.read_text())
    assert result["benchmark"] == name and result["rows"]
    assert "wrote" in capsys.readouterr().out


def test_data_stats_writes_json_and_pictures(tmp_path):
    load("data_stats").main(["--json", str(tmp_path / "d.json"), "--png-dir", str(tmp_path), "--n-sample", "200",
                             "--n-score", "50", "--repeats", "1"])
    assert json.loads((tmp_path / "d.json").read_text())["toy"]
    assert (tmp_path / "toyseg_samples.png").stat().st_size > 1000


def test_likelihood_reuses_flow_rows_and_refuses_other_settings(tmp_path):
    likelihood = load("likelihood")
    first = likelihood.main(["--fast", "--quiet", "--device", "cpu", "--digits-minutes", "0", "--kinds", "ordinal",
                             "--json", str(tmp_path / "a.json")])
    again = likelihood.main(["--fast", "--quiet", "--device", "cpu", "--digits-minutes", "0", "--kinds", "ordinal",
                             "--json", str(tmp_path / "b.json"), "--flows-from", str(tmp_path / "a.json")])
    flows = lambda result: [r for r in result["rows"] if r["kind"] != "diffusion"]  # noqa: E731
    assert [r["bounds"] for r in flows(again)] == [r["bounds"] for r in flows(first)]
    assert all(r["from_run"] for r in flows(again)) and "earlier run" in (tmp_path / "b.md").read_text()
    with pytest.raises(SystemExit):
        likelihood.main(["--fast", "--quiet", "--device", "cpu", "--digits-minutes", "0", "--kinds", "ordinal",
                         "--seed", "1", "--json", str(tmp_path / "c.json"), "--flows-from", str(tmp_path / "a.json")])


def test_likelihood_curve_scores_each_toy_model_during_and_after_training(tmp_path):
    likelihood = load("likelihood")
    result = likelihood.main(["--fast", "--quiet", "--device", "cpu", "--digits-minutes", "0", "--kinds", "ordinal",
                              "--no-permutation", "--fast-steps", "25", "--curve", "0.00001", "--json",
                              str(tmp_path / "c.json")])
    for row in result["rows"]:
        points = row["curve"]
        # one point when training passed the curve's minute (at a log step, every 10 steps), one at the end
        assert [p["steps"] for p in points] == [10, 25], row["kind"]
        assert points[0]["minutes"] < points[1]["minutes"] <= row["train_seconds"] / 60 + 1e-9
        assert all(p["bpd"] > 0 and p["stderr"] > 0 and p["bound"] for p in points)
    with pytest.raises(SystemExit):
        likelihood.main(["--fast", "--quiet", "--curve", "1,x", "--json", str(tmp_path / "d.json")])
    with pytest.raises(SystemExit):
        likelihood.main(["--fast", "--quiet", "--curve", "0", "--json", str(tmp_path / "d.json")])


def test_oracle_against_a_checkpoint_on_the_same_maps(tmp_path):
    from mdiff_lite.cli import main as cli

    ckpt = tmp_path / "toy.pt"
    cli(["train", "--data", "toyseg", "--steps", "2", "--T", "10", "--batch-size", "4", "--out", str(ckpt),
         "--eval-maps", "2", "--eval-k", "1", "--device", "cpu"])
    result = load("oracle").main(["--checkpoint", str(ckpt), "--eval-maps", "3", "--info-maps", "4",
                                  "--json", str(tmp_path / "o.json")])
    assert result["T"] == 10 and result["model"]["n_images"] == result["oracle"]["n_images"] == 3
    assert (tmp_path / "o.md").read_text().count("\n| ") == len(result["rows"]) + 1   # rows and total
    # Barely trained, the model pays far more than the best denoiser.
    assert result["model_minus_oracle"]["bpd"] > 0.5
    with pytest.raises(SystemExit):
        load("oracle").main(["--checkpoint", str(ckpt), "--T", "20", "--json", str(tmp_path / "x.json")])


def test_text_benchmark_tables_its_rows_and_saves_loadable_models(tmp_path):
    from mdiff_lite.train import load_text_model

    text = load("text")
    result = text.main(["--fast", "--steps", "2", "--k", "1", "--quiet", "--device", "cpu", "--models",
                        "absorbing,autoregressive", "--save-dir", str(tmp_path), "--json", str(tmp_path / "t.json")])
    assert [r["model"] for r in result["rows"]] == ["absorbing", "autoregressive"]
    assert all(r["steps"] == 2 for r in result["rows"])
    md = (tmp_path / "t.md").read_text()
    assert md == text.markdown(json.loads((tmp_path / "t.json").read_text()))
    assert "exact NLL" in md and "bigram frequencies" in md
    model, meta = load_text_model(tmp_path / "text-absorbing.pt")
    assert meta["test_bpc"] == result["rows"][0]["bpc"] and model.config.noise == "absorbing"
    with pytest.raises(SystemExit):
        text.main(["--fast", "--models", "gaussian", "--json", str(tmp_path / "x.json")])
