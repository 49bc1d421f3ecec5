"""The params loader: both profiles validate, overrides apply, bad input gives a one-line error."""
import pytest
import yaml

from artsim_lib import config
from artsim_lib.config import ParamsError, load_params


@pytest.mark.parametrize("name", ["smoke", "full"])
def test_shipped_profiles_validate(name):
    P = load_params(name)
    assert P.profile == name
    assert P.run_path.name == name or "ARTSIM_RUN_DIR" in __import__("os").environ


def test_smoke_points_at_tiny_local_checkpoints_and_full_at_hub_ids():
    smoke, full = load_params("smoke"), load_params("full")
    assert smoke.models.build_tiny and not full.models.build_tiny
    assert smoke.model_ref("clip").startswith(str(smoke.run_path))
    assert full.model_ref("clip") == "openai/clip-vit-base-patch32"
    assert full.model_ref("blip2") == "Salesforce/blip2-opt-2.7b"
    assert full.model_ref("sdxl_refiner") == "stabilityai/stable-diffusion-xl-refiner-1.0"
    assert full.model_ref("resnet") == "microsoft/resnet-50"
    assert full.preprocess.size == 1024


def test_overrides_are_typed_from_the_command_line():
    P = load_params("smoke", ["preprocess.size=96", "preprocess.resize_mode=crop", "data.limit=10",
                              "preprocess.split.stratify=none"])
    assert (P.preprocess.size, P.preprocess.resize_mode, P.data.limit) == (96, "crop", 10)
    assert P.preprocess.split.stratify == "none"


@pytest.mark.parametrize("override,key", [
    ("preprocess.size=big", "preprocess.size"),
    ("preprocess.colour=1", "preprocess.colour"),
    ("data.source=flickr", "data.source"),
    ("preprocess.split.train=0.9", "preprocess.split"),
])
def test_bad_overrides_name_the_key_and_the_file(override, key):
    with pytest.raises(ParamsError) as err:
        load_params("smoke", [override])
    msg = str(err.value)
    assert "\n" not in msg and key in msg and "smoke.yaml" in msg


def test_unknown_key_or_wrong_type_in_a_file_is_rejected(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text(yaml.safe_dump({"profile": "mine", "preprocess": {"size": "1024"}}))
    with pytest.raises(ParamsError, match=r"mine\.yaml: preprocess\.size"):
        load_params(bad)
    bad.write_text(yaml.safe_dump({"profile": "mine", "colour_grading": {"x": 1}}))
    with pytest.raises(ParamsError, match=r"mine\.yaml: colour_grading: unknown key"):
        load_params(bad)


def test_missing_profile_and_malformed_override():
    with pytest.raises(ParamsError, match="no profile named 'nope'"):
        load_params("nope")
    with pytest.raises(ParamsError, match="expected key=value"):
        load_params("smoke", ["preprocess.size"])


def test_a_yaml_path_is_a_profile_and_round_trips(tmp_path):
    P = load_params("smoke", ["seed=7"])
    f = tmp_path / "resolved.yaml"
    f.write_text(P.to_yaml())
    again = load_params(f)
    assert again == P and again.seed == 7


def test_run_dir_env_var_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("ARTSIM_RUN_DIR", str(tmp_path / "elsewhere"))
    assert load_params("smoke").run_path == tmp_path / "elsewhere"
    monkeypatch.delenv("ARTSIM_RUN_DIR")
    assert load_params("smoke").run_path == config.paths.project_root() / "runs" / "smoke"
