"""`cgrp train`: a few iterations on a tiny dataset write loadable weights, and a run resumes."""
import shutil

import pytest
import torch

from cgrp_ros.core.models import load_model, model_config, model_meta
from cgrp_ros.core.networks import FusionNet, Generator
from cgrp_ros.training.stages import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("roadscene")
    shutil.copytree(sample_dir / "visible", root / "visible")
    shutil.copytree(sample_dir / "thermal", root / "thermal")
    (root / "train.txt").write_text("\n".join(p.name for p in sorted((root / "visible").glob("*.jpg"))[:3]))
    return root


def dense_weights(net):
    """The registration's parameters that the `registration` stage trains (all but the affine stages)."""
    return {k: v.detach().clone() for k, v in net.named_parameters()
            if not k.startswith(("global_stage.", "local_stage."))}


def test_fusion_stage_trains_writes_weights_and_resumes(tiny_dataset, tmp_path, capfd):
    common = dict(stage="fusion", data=tiny_dataset, out=tmp_path / "models", run_dir=tmp_path / "runs",
                  batch=2, crop=(64, 64), checkpoint_every=2)
    meta = train(TrainConfig(iterations=2, **common))
    assert meta["iterations"] == 2
    first = load_model(tmp_path / "models" / "fusion.pt", "fusion")
    assert isinstance(first, FusionNet)

    meta = train(TrainConfig(iterations=4, **common))  # picks up at iteration 2
    assert "resuming" in capfd.readouterr().err
    assert meta["iterations"] == 4 and model_meta(tmp_path / "models" / "fusion.pt")["iterations"] == 4
    second = load_model(tmp_path / "models" / "fusion.pt", "fusion")
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_an_interrupted_run_keeps_its_iterations_and_a_broken_checkpoint_is_one_clear_error(
        tiny_dataset, tmp_path, monkeypatch, capfd):
    """Ctrl-C saves the iterations done (checkpoints come only every `checkpoint_every`); a resumed run's
    --minutes is its own budget, not what the checkpoint already spent; a checkpoint that cannot be
    resumed is a CgrpError naming it and --restart."""
    from cgrp_ros.core.errors import CgrpError
    from cgrp_ros.training import stages

    common = dict(stage="fusion", data=tiny_dataset, out=tmp_path / "models", run_dir=tmp_path / "runs",
                  batch=2, crop=(64, 64), checkpoint_every=100)
    step = stages.FusionStage.step

    def interrupted_at_3(self, iteration):
        if iteration == 3:
            raise KeyboardInterrupt
        return step(self, iteration)

    monkeypatch.setattr(stages.FusionStage, "step", interrupted_at_3)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(iterations=10, **common))
    monkeypatch.setattr(stages.FusionStage, "step", step)
    last = tmp_path / "runs" / "fusion" / "last.pt"
    assert torch.load(last, weights_only=False)["iteration"] == 3
    state = torch.load(last, weights_only=False)
    state["elapsed"] = 3600.0  # an hour spent by earlier runs: a 1-minute budget still trains now
    torch.save(state, last)
    meta = train(TrainConfig(iterations=5, minutes=1.0, **common))
    assert meta["iterations"] == 5 and "interrupted: checkpoint" in capfd.readouterr().err
    last.write_bytes(last.read_bytes()[:1000])  # cut short
    with pytest.raises(CgrpError, match="cannot be resumed .*--restart"):
        train(TrainConfig(iterations=6, **common))


def test_generator_global_registration_stages_chain(tiny_dataset, tmp_path):
    # the thresholds on 16 pairs, not 160: what is checked is that one is chosen and stored
    common = dict(data=tiny_dataset, out=tmp_path / "models", run_dir=tmp_path / "runs", batch=2, iterations=2,
                  threshold_samples=16)
    models = tmp_path / "models"
    train(TrainConfig(stage="generator", crop=(64, 64), **common))
    assert isinstance(load_model(models / "generator.pt", "generator"), Generator)
    meta = train(TrainConfig(stage="global", crop=(64, 96), **common))
    # the confidence threshold is chosen on training samples and stored with the weights
    threshold = meta["calibration"]["threshold"]
    assert 0.0 <= threshold <= 1.0
    assert float(load_model(models / "registration.pt", "registration").global_stage.threshold) == threshold
    global_weights = {k: v.clone() for k, v in load_model(models / "registration.pt", "registration")
                      .global_stage.state_dict().items()}
    local_before = {k: v.clone() for k, v in load_model(models / "registration.pt", "registration")
                    .local_stage.state_dict().items()}
    train(TrainConfig(stage="local", crop=(64, 96), extra={"init": models / "registration.pt"}, **common))
    refined = load_model(models / "registration.pt", "registration")
    # its inlier score is the confidence: its threshold is chosen on training samples and is the one the
    # Pipeline reads from the file's config
    assert float(refined.local_stage.threshold) == model_config(models / "registration.pt")["confidence_threshold"]
    local_weights = {k: v.clone() for k, v in refined.local_stage.state_dict().items()}
    # the local matcher trains on top of the frozen global stage
    assert all(torch.equal(v, refined.global_stage.state_dict()[k]) for k, v in global_weights.items())
    assert any(not torch.equal(v, refined.local_stage.state_dict()[k]) for k, v in local_before.items())
    dense_before = dense_weights(refined)
    meta = train(TrainConfig(stage="registration", crop=(64, 96), preset="moderate",
                             extra={"generator": models / "generator.pt", "init": models / "registration.pt"},
                             **common))
    assert meta["flow_supervision"] is True
    trained = load_model(models / "registration.pt", "registration")
    # the dense levels train on top of frozen global and local stages; the threshold in effect is kept
    assert all(torch.equal(v, trained.global_stage.state_dict()[k]) for k, v in global_weights.items())
    assert all(torch.equal(v, trained.local_stage.state_dict()[k]) for k, v in local_weights.items())
    # and the dense levels did learn: the feature pyramid and the flow levels both moved (measured 2026-12-06:
    # all 12 pyramid and 48 level tensors changed, by up to 4e-5 and 1.5e-4 after two Adam steps)
    dense_after = dense_weights(trained)
    for part in ("pyramid.", "levels."):
        assert any(not torch.equal(v, dense_after[k]) for k, v in dense_before.items() if k.startswith(part)), part
    assert model_config(models / "registration.pt")["confidence_threshold"] == float(trained.local_stage.threshold)


def test_a_run_refuses_what_it_would_get_wrong_before_it_trains(tiny_dataset, tmp_path, capfd):
    """An audit: resuming with another --lr or --data trained on with the checkpoint's and wrote ours into
    the weights' metadata; a train.txt naming a missing file trained on fewer pairs without a word (an empty
    one raised a traceback); an --out that is a file failed only after the whole run."""
    from cgrp_ros.core.errors import CgrpError, InputError

    common = dict(stage="fusion", data=tiny_dataset, run_dir=tmp_path / "runs", batch=2, crop=(64, 64),
                  checkpoint_every=2)
    train(TrainConfig(iterations=2, out=tmp_path / "models", **common))
    with pytest.raises(CgrpError, match=r"trained with other options \(lr 0.001 -> 0.5\): pass --restart"):
        train(TrainConfig(iterations=4, out=tmp_path / "models", lr=0.5, **common))
    # an option the stage never reads does not stand in the way (the fusion stage has no --init)
    assert train(TrainConfig(iterations=3, out=tmp_path / "models", extra={"init": tmp_path / "x.pt"},
                             **common))["iterations"] == 3
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CgrpError, match=f"cannot write --out {tmp_path / 'a_file'}: .* is not a folder"):
        train(TrainConfig(iterations=4, out=tmp_path / "a_file", **{**common, "run_dir": tmp_path / "other"}))
    assert not (tmp_path / "other").exists()
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset, broken)
    (broken / "train.txt").write_text((broken / "train.txt").read_text() + "\nNOPE_1.jpg\n")
    with pytest.raises(InputError, match=r"train.txt: 1 listed name\(s\) without a pair: NOPE_1: listed, but in "
                                         r"neither folder"):
        train(TrainConfig(iterations=2, out=tmp_path / "m2", **{**common, "data": broken, "run_dir": tmp_path / "r2"}))
    (broken / "train.txt").write_text("# nothing yet\n")
    with pytest.raises(InputError, match="train.txt: lists no names"):
        train(TrainConfig(iterations=2, out=tmp_path / "m2", **{**common, "data": broken, "run_dir": tmp_path / "r2"}))


def test_training_into_the_shipped_models_folder_says_so_first(tiny_dataset, tmp_path, monkeypatch, capfd):
    """`cgrp train fusion` (--out models by default) replaced the shipped fusion.pt, saying only 'weights in
    models' at the end."""
    from cgrp_ros.training import stages

    monkeypatch.setattr(stages, "shipped_folder", lambda name: tmp_path / "shipped")
    train(TrainConfig(stage="fusion", data=tiny_dataset, out=tmp_path / "shipped", run_dir=tmp_path / "runs",
                      batch=2, crop=(64, 64), iterations=1))
    assert "[fusion] warning: writes the shipped fusion.pt in" in capfd.readouterr().err


def test_sigterm_saves_a_checkpoint_as_ctrl_c_does(tiny_dataset, tmp_path):
    """docker stop, systemd and timeout send SIGTERM: after 56 iterations nothing had been saved (an audit)."""
    import signal
    import subprocess
    import sys
    import time

    log = tmp_path / "train.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "cgrp_ros.cli", "train", "fusion", "--data", str(tiny_dataset),
                                 "--iterations", "100000", "--batch", "2", "--threads", "1", "--out",
                                 str(tmp_path / "models"), "--run-dir", str(tmp_path / "runs")],
                                stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            end = time.monotonic() + 120
            while "fusion:" not in log.read_text() and time.monotonic() < end:  # its progress bar: training
                time.sleep(0.2)
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        finally:
            proc.kill()
    text = log.read_text()
    assert code == 130 and "interrupted: checkpoint" in text, text[-2000:]
    assert torch.load(tmp_path / "runs" / "fusion" / "last.pt", weights_only=False)["iteration"] > 0
