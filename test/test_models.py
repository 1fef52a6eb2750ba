"""The shipped weights: present, loadable, small, documented."""
from cgrp_ros.core.models import STAGES, default_model_path, load_model, model_meta


def test_shipped_weights_load_and_fit_the_budget():
    total = 0
    for stage in STAGES:
        path = default_model_path(stage)
        load_model(path, stage)
        total += path.stat().st_size
        assert model_meta(path)["iterations"] > 0
    assert total <= 20 * 2 ** 20
    assert (default_model_path("generator").parent / "MODEL_CARD.md").is_file()
