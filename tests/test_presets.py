"""minidiff.presets: every ready-made run builds, and JSON run descriptions merge over a preset."""

import json

import pytest

from minidiff.nn import ContextUnet
from minidiff.presets import PRESETS, build_run, resolve

pytestmark = pytest.mark.filterwarnings("ignore:the course's sprite files")   # procedural stand-in: expected


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_its_model_data_and_config(name):
    run = build_run(resolve(name))
    assert isinstance(run.model, ContextUnet) and run.schedule is not None and run.schedule.T in (100, 500)
    assert len(run.dataset) == PRESETS[name]["data"]["n"]
    assert run.config.mixed_precision in ("no", "bf16", "auto") and PRESETS[name]["description"]


def test_long_preset_is_the_course_model_for_12000_steps_in_bf16_where_native():
    run = build_run(resolve("long"))
    assert run.model.n_feat == 64 and sum(p.numel() for p in run.model.parameters()) == 1_481_027
    assert (run.config.steps, run.config.batch_size, run.config.mixed_precision) == (12000, 100, "auto")


def test_a_json_config_overrides_one_key_of_a_preset(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": "long", "train": {"steps": 7}}))
    run = resolve(None, str(path))
    assert run["train"]["steps"] == 7 and run["train"]["batch_size"] == 100 and run["preset"] == "long"
    with pytest.raises(ValueError, match="unknown preset"):
        resolve("longer")
