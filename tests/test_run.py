"""run.py end to end on a tiny model with fixture rows: the record, the saved weights, evaluation of them, W&B files."""

from __future__ import annotations

import json
import subprocess
import sys

from hydra import compose, initialize_config_dir

from tests.conftest import CONFIG_DIR, REPO


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_train_record_weights_and_evaluate_mode(glue_data, tmp_path):
    run_dir = tmp_path / "train"
    out = run("model=tiny-llama", "method=prompt_tuning", f"data_dir={glue_data}", "trainer.max_steps=4",
              "trainer.eval_every=2", "logger=wandb", "logger.mode=offline", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and record["steps"] == 4
    assert [e["step"] for e in record["evaluations"]] == [2, 4]
    assert record["parameters"]["trainable"] == 10 * 32
    assert record["parameters"]["total"] == record["parameters"]["fm"] + 320
    assert 0.0 <= record["best"]["accuracy"] <= 1.0 and record["num_eval_examples"] == 12
    assert record["config"]["method"]["name"] == "prompt_tuning" and record["machine"]["torch"]
    assert {"cpu", "cpu_bf16"} <= record["machine"].keys()
    assert record["mode"] == "train" and record["run_name"] == "prompt_tuning-rte-tiny-llama-s9876"
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "weights" / "trained.safetensors").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B offline run files missing"

    eval_dir = tmp_path / "eval"
    out = run("model=tiny-llama", "method=prompt_tuning", f"data_dir={glue_data}", "mode=evaluate", "logger=none",
              f"checkpoint={run_dir / 'weights'}", f"hydra.run.dir={eval_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    evaluated = json.loads((eval_dir / "results.json").read_text())
    # The tiny FM is rebuilt from the same seed, so the saved prompt reproduces the best evaluation exactly.
    assert evaluated["final"]["accuracy"] == record["best"]["accuracy"]
    assert evaluated["mode"] == "evaluate" and evaluated["run_name"] == "eval-prompt_tuning-rte-tiny-llama-s9876"

    # Same shapes, another task or prompt init: refused from trained_config.json, in one line; an optimisation
    # setting (the learning rate) does not change what the weights mean.
    for wrong, named in (("task=glue/mrpc", "task 'rte' (trained) vs 'mrpc' (now)"),
                         ("method.init=normal", "method.init 'uniform' (trained) vs 'normal' (now)")):
        out = run("model=tiny-llama", "method=prompt_tuning", f"data_dir={glue_data}", "mode=evaluate", "logger=none",
                  f"checkpoint={run_dir / 'weights'}", f"hydra.run.dir={tmp_path / 'wrong'}", wrong)
        assert out.returncode == 2 and named in out.stderr and out.stderr.count("\n") == 1, out.stderr[-2000:]
    out = run("model=tiny-llama", "method=prompt_tuning", f"data_dir={glue_data}", "mode=evaluate", "logger=none",
              f"checkpoint={run_dir / 'weights'}", f"hydra.run.dir={tmp_path / 'other_lr'}", "method.lr=0.5")
    assert out.returncode == 0, out.stderr[-2000:]


def test_evaluations_are_named_as_such_in_the_run_name_and_default_run_directory():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for overrides, name in ((["mode=evaluate"], "eval-prompt_tuning-rte-smollm2-135m-s9876"),
                                (["method=zero_shot"], "eval-zero_shot-rte-smollm2-135m-s9876"),
                                ([], "prompt_tuning-rte-smollm2-135m-s9876")):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
            assert cfg.run_name == name
            assert cfg.hydra.run.dir.endswith(f"_{name}")


def test_training_logs_the_loss_every_log_every_steps_and_evaluate_is_summarised_as_one(glue_data, tmp_path):
    run_dir = tmp_path / "train"
    out = run("model=tiny-llama", "method=prompt_tuning", f"data_dir={glue_data}", "trainer.max_steps=4",
              "trainer.log_every=2", "logger=none", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    log = (run_dir / "run.log").read_text()
    assert "step 2/4: loss=" in log and "step 4/4: loss=" in log and "step 3/4" not in log
    assert "step 2/4: loss=" in out.stdout + out.stderr  # on the console too
    assert "train: 100%" in out.stdout  # the progress bar's last line, also in a non-tty log (stderr is for errors)
    assert ": best accuracy=" in out.stdout

    out = run("model=tiny-llama", "method=prompt_tuning", f"data_dir={glue_data}", "mode=evaluate", "logger=none",
              f"checkpoint={run_dir / 'weights'}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert ": evaluated accuracy=" in out.stdout and "best" not in out.stdout
