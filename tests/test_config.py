"""The params loader: both profiles validate, overrides apply, bad input gives a one-line error."""

import pytest
import yaml

from artsim_lib import config
from artsim_lib.config import ParamsError, load_params
from artsim_lib.io import paths

PROFILES = sorted(p.stem for p in (paths.project_root() / "params").glob("*.yaml"))


@pytest.mark.parametrize("name", PROFILES)
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


def test_the_defaults_are_the_full_study():
    assert load_params("full").model_dump() == config.Params(profile="full").model_dump()


def _restated(stated: dict, base, where: str = "") -> list[str]:
    """The keys of a profile's mapping ``stated`` whose value equals ``base``'s (a params model):
    sections are compared key by key, anything else (mapping-valued keys too) as a whole."""
    same = []
    for key, value in stated.items():
        current = getattr(base, key)
        if isinstance(current, config.schema._Section) and isinstance(value, dict):
            same += _restated(value, current, f"{where}{key}.")
        elif value == base.model_dump(mode="json")[key]:
            same.append(where + key)
    return same


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_state_only_what_they_change(name):
    """A profile lists only what differs from what it builds on (the schema's defaults, which are the
    full study, or the profile it ``extends``): a restated default would hide the difference that
    matters and go stale when the default changes."""
    raw = yaml.safe_load((paths.project_root() / "params" / f"{name}.yaml").read_text())
    base = load_params(raw.pop("extends")) if "extends" in raw else config.Params()
    assert _restated(raw, base) == []


@pytest.mark.parametrize(
    "profile,override,key",
    [
        ("full", "workflow.shards.05=64", "workflow.shards"),
        ("smoke", "descriptors.weights.colour=0.5", "descriptors.weights"),
        ("full", "generation.strength.moderate=0.4", "generation.strength"),
    ],
)
def test_an_override_inside_a_mapping_keeps_its_other_keys(profile, override, key):
    """Whether the profile states the mapping or takes it from the defaults."""
    keys, value = config.parse_override(override)
    before = load_params(profile).model_dump()
    after = load_params(profile, [override]).model_dump()
    section, field = key.split(".")
    assert after[section][field] == {**before[section][field], keys[-1]: value}


def test_overrides_are_typed_from_the_command_line():
    P = load_params(
        "smoke",
        ["preprocess.size=96", "preprocess.resize_mode=crop", "data.limit=10", "preprocess.split.stratify=none"],
    )
    assert (P.preprocess.size, P.preprocess.resize_mode, P.data.limit) == (96, "crop", 10)
    assert P.preprocess.split.stratify == "none"


@pytest.mark.parametrize(
    "override,key",
    [
        ("preprocess.size=big", "preprocess.size"),
        ("preprocess.colour=1", "preprocess.colour"),
        ("data.source=flickr", "data.source"),
        ("preprocess.split.train=0.9", "preprocess.split"),
    ],
)
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
    assert load_params("smoke").run_path == paths.project_root() / "runs" / "smoke"


# -- errors that fail before anything runs -------------------------------------------------
def test_measure_names_are_checked_at_load():
    with pytest.raises(ParamsError) as err:
        load_params("smoke", ["evaluation.measures=[ssim, clip_siamse]", "evaluation.reference=ssim"])
    msg = str(err.value)
    assert "evaluation.measures" in msg and "'clip_siamse'" in msg and "known: " in msg
    assert "\n" not in msg


def test_the_static_measure_list_is_the_registry():
    from artsim_lib.measures import registry

    assert sorted(config.KNOWN_MEASURES) == registry.available_measures()


def test_coupled_overrides_are_validated_together_in_any_order():
    for order in (1, -1):
        test = load_params("smoke").preprocess.split.test
        train, val = round(0.6 * (1 - test), 4), round(1 - test - round(0.6 * (1 - test), 4), 4)
        sets = [f"preprocess.split.train={train}", f"preprocess.split.val={val}"][::order]
        P = load_params("smoke", sets)  # each override alone would break the sum; together they do not
        assert (P.preprocess.split.train, P.preprocess.split.val) == (train, val)
        sets = ["evaluation.measures=[ssim, colour]", "evaluation.reference=ssim"][::order]
        assert load_params("smoke", sets).evaluation.reference == "ssim"


def test_a_bad_override_is_named_with_its_key():
    with pytest.raises(ParamsError) as err:
        load_params("smoke", ["seed=3", "preprocess.split.train=0.9"])
    msg = str(err.value)
    assert "--set preprocess.split.train=0.9" in msg and "--set seed=3" not in msg
    split = load_params("smoke").preprocess.split
    assert f"preprocess.split.train + val + test: must sum to 1, got {0.9 + split.val + split.test:g}" in msg
    assert "stratify" not in msg  # the section is not printed


def test_section_checks_name_the_offending_key(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("evaluation:\n  measures: [ssim]\n  reference: descriptor\n")
    with pytest.raises(ParamsError, match=r"mine\.yaml: evaluation\.reference: 'descriptor' must be one of"):
        load_params(bad)
    bad.write_text("descriptors:\n  size: 32\n  hog_cell: 20\n")
    with pytest.raises(ParamsError) as err:
        load_params(bad)
    assert "descriptors.hog_cell: 20 must be at most size/2 (16)" in str(err.value)
    assert "weights" not in str(err.value)


def test_yaml_syntax_errors_give_file_line_and_column(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("profile: mine\npreprocess:\n  size: [1, 2\n  workers: 2\n")
    with pytest.raises(ParamsError) as err:
        load_params(bad)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bad}:") and "not valid YAML" in msg
    line, column = msg[len(str(bad)) + 1 :].split(":")[:2]
    assert line.isdigit() and column.isdigit() and int(line) in (3, 4)


def test_unreadable_profiles_are_one_line(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("profile: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ParamsError, match=r"latin\.yaml: not UTF-8 text \(byte 0xe9"):
        load_params(latin)
    folder = tmp_path / "x.yaml"
    folder.mkdir()
    with pytest.raises(ParamsError, match=r"x\.yaml: is a directory, not a params file"):
        load_params(folder)
