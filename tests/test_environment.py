"""The cluster recipe (environment.yml) stays in step with pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _specs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return project["dependencies"], conda, pip


def test_every_pyproject_dependency_is_in_environment_yml_with_the_same_spec():
    deps, conda, pip = _specs()
    pip_specs = {_name(s): s.replace(" ", "") for s in pip if not s.startswith("-e")}
    for dep in deps:
        if _name(dep) == "torch":
            continue  # conda-forge's CUDA build, checked below
        assert _name(dep) in pip_specs, f"{dep} is in pyproject.toml but not in environment.yml"
        assert pip_specs[_name(dep)] == dep.replace(" ", ""), f"{dep} differs in environment.yml"
    extra = set(pip_specs) - {_name(d) for d in deps}
    assert not extra, f"environment.yml installs {sorted(extra)} that pyproject.toml does not list"


def test_environment_yml_takes_cuda_torch_on_python_311_and_installs_this_checkout():
    _, conda, pip = _specs()
    assert "python=3.11" in conda
    assert any(_name(d) == "pytorch-gpu" for d in conda)
    assert "-e ." in pip


def test_no_torchvision_anywhere():
    deps, conda, pip = _specs()
    assert not any("torchvision" in d for d in deps + conda + pip)


def test_make_install_adds_open_clip_without_its_dependencies():
    # open-clip-torch's dependencies would pull torchvision and a CUDA torch: only its merges file is used.
    from artsim_lib.models import bpe

    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"^OPEN_CLIP\s*:=\s*(\S+)", makefile, re.M).group(1)
    assert '--no-deps "$(OPEN_CLIP)"' in makefile
    assert bpe.INSTALL_HINT == f"pip install --no-deps {pinned}"
    deps, _, pip = _specs()
    assert not any(_name(d) == "open-clip-torch" for d in deps + pip)


def test_the_tools_to_develop_and_test_are_the_dev_extra_and_make_install_installs_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(d) for d in project["dependencies"]}
    dev = {_name(d) for d in project["optional-dependencies"]["dev"]}
    assert {"pytest", "pytest-xdist", "nbval", "jupyterlab", "ruff"} <= dev
    assert not runtime & dev
    assert {"papermill", "nbconvert", "ipykernel", "snakemake"} <= runtime  # the study runs them
    install = (ROOT / "Makefile").read_text().split("\n$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert 'pip install -q -e ".[dev]"' in install
