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
