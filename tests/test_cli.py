"""The command line, end to end on a tiny budget."""

import json
import subprocess
import sys

import pytest
import torch

from mdiff_lite.cli import main
from mdiff_lite.train import load_checkpoint


def test_help_of_every_subcommand():
    for args in ([], ["train"], ["eval"], ["sample"], ["export"]):
        done = subprocess.run([sys.executable, "-m", "mdiff_lite", *args, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage: python -m mdiff_lite" in done.stdout


def test_train_eval_sample_export(tmp_path, capsys):
    ckpt, png, slim = tmp_path / "c.pt", tmp_path / "s.png", tmp_path / "slim.pt"
    main(["train", "--data", "digits", "--steps", "4", "--T", "10", "--batch-size", "8", "--out", str(ckpt),
          "--eval-maps", "6", "--eval-k", "2", "--device", "cpu"])
    meta = load_checkpoint(ckpt)[1]
    assert meta["dataset"] == "digits" and meta["steps"] == 4 and meta["command"].startswith("python -m mdiff_lite train")
    assert meta["test_bpd_estimate_n_images"] == 6
    capsys.readouterr()

    main(["eval", str(ckpt), "--json", "--n", "5", "--device", "cpu", "--threads", str(torch.get_num_threads())])
    result = json.loads(capsys.readouterr().out)
    assert {"test_bpd", "stderr", "bound", "n_images", "T"} <= set(result)
    assert result["n_images"] == 5 and result["T"] == 10 and result["test_bpd"] > 0

    main(["sample", str(ckpt), "--n", "4", "--steps", "5", "--png", str(png), "--device", "cpu"])
    assert png.stat().st_size > 1000

    main(["export", str(ckpt), str(slim), "--float16"])
    weights, slim_meta, training = load_checkpoint(slim)
    assert training is None and slim_meta["weights_dtype"] == "float16" and "export_command" in slim_meta
    main(["eval", str(slim), "--n", "3", "--update", "--device", "cpu"])
    assert load_checkpoint(slim)[1]["test_n_images"] == 3


def test_errors_are_reported_not_raised(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", str(tmp_path / "missing.pt")])
    assert info.value.code == 2 and "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", "cityscapes", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit) as info:
        main(["eval", str(tmp_path / "missing.pt"), "--threads", "0"])
    assert info.value.code == 2 and "--threads" in capsys.readouterr().err


def one_line_error(capsys, argv) -> str:
    """Run the CLI, expecting exit status 2 and a single line on stderr; return that line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from test_checkpoint import bad_files

    return bad_files(tmp_path_factory.mktemp("checkpoints"))


@pytest.mark.parametrize("case", ["flow", "truncated", "random bytes", "text", "empty", "another dict", "a module",
                                  "unknown dataset", "config misfit", "unknown kind"])
def test_eval_sample_and_export_refuse_a_bad_checkpoint_in_one_line(files, case, capsys, tmp_path):
    path, words = files[case]
    words = words or "holds a dequantization flow, not a denoiser"
    for argv in (["eval", str(path), "--device", "cpu"], ["sample", str(path), "--device", "cpu"],
                 ["export", str(path), str(tmp_path / "slim.pt")]):
        line = one_line_error(capsys, argv)
        assert str(path) in line and words in line, (argv, line)
    assert not (tmp_path / "slim.pt").exists()


def test_a_missing_checkpoint_or_one_without_a_dataset_in_one_line(files, capsys, tmp_path):
    for command in ("eval", "sample", "export"):
        argv = [command, str(tmp_path / "missing.pt")] + (["x.pt"] if command == "export" else [])
        line = one_line_error(capsys, argv)
        assert f"no checkpoint at {tmp_path / 'missing.pt'}" in line
    from mdiff_lite.train import save_checkpoint
    from test_checkpoint import digits_denoiser

    save_checkpoint(tmp_path / "own_data.pt", digits_denoiser(), {})  # fit() without meta["dataset"]
    for command in ("eval", "sample"):
        line = one_line_error(capsys, [command, str(tmp_path / "own_data.pt"), "--device", "cpu"])
        assert str(tmp_path / "own_data.pt") in line and "names no dataset" in line


def test_no_traceback_from_a_real_process(files):
    done = subprocess.run([sys.executable, "-m", "mdiff_lite", "eval", str(files["flow"][0]), "--device", "cpu"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "holds a dequantization flow, not a denoiser" in done.stderr


def test_train_refuses_to_resume_another_run_unless_asked_for_a_fresh_one(files, capsys, tmp_path):
    ckpt = tmp_path / "c.pt"
    train = ["train", "--data", "digits", "--T", "10", "--batch-size", "4", "--eval-maps", "0", "--device", "cpu",
             "--out", str(ckpt)]
    line = one_line_error(capsys, train[:-1] + [str(files["flow"][0]), "--steps", "2"])
    assert "holds a dequantization flow, not a denoiser" in line
    main(train + ["--steps", "2"])
    capsys.readouterr()
    line = one_line_error(capsys, train + ["--steps", "4", "--t-sampler", "importance", "--permute-seed", "1"])
    assert "train_config.t_sampler: 'stratified' in the checkpoint, 'importance' now" in line
    assert "permute_seed: None in the checkpoint, 1 now" in line and "--no-resume" in line
    assert load_checkpoint(ckpt)[1]["steps"] == 2  # left alone
    main(train + ["--steps", "3", "--t-sampler", "importance", "--no-resume"])
    meta = load_checkpoint(ckpt)[1]
    assert meta["steps"] == 3 and meta["train_config"]["t_sampler"] == "importance"
