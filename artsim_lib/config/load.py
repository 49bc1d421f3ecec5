"""Parameter profiles: one schema, validated at load, ``key=value`` overrides, unknown keys rejected.

>>> P = load_params("smoke", ["preprocess.size=96"])
>>> P.preprocess.size
96
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from artsim_lib.config.schema import (
    CaptioningParams,
    DataParams,
    DescriptorParams,
    EvaluationParams,
    FinetuneParams,
    GenerationParams,
    ModelParams,
    PreprocessParams,
    PromptingParams,
    SectionError,
    SiameseParams,
    TripletParams,
    WorkflowParams,
    _Section,
)
from artsim_lib.io import paths


class ParamsError(ValueError):
    """A profile that does not validate; the message names the file and the key."""


class Params(_Section):
    """All parameters of one study run."""

    profile: str = "custom"
    seed: int = 1234
    run_dir: str = "runs/{profile}"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    num_workers: int = Field(8, ge=1)
    data: DataParams = DataParams()
    models: ModelParams = ModelParams()
    preprocess: PreprocessParams = PreprocessParams()
    captioning: CaptioningParams = CaptioningParams()
    prompting: PromptingParams = PromptingParams()
    generation: GenerationParams = GenerationParams()
    triplets: TripletParams = TripletParams()
    descriptors: DescriptorParams = DescriptorParams()
    finetune: FinetuneParams = FinetuneParams()
    siamese: SiameseParams = SiameseParams()
    evaluation: EvaluationParams = EvaluationParams()
    workflow: WorkflowParams = WorkflowParams()

    # -- derived values -------------------------------------------------------
    @property
    def run_path(self) -> Path:
        """The run directory as an absolute path (``$ARTSIM_RUN_DIR`` wins when set)."""
        env = os.environ.get("ARTSIM_RUN_DIR")
        raw = env if env else self.run_dir.format(profile=self.profile)
        return paths.resolve(raw)

    @property
    def run(self) -> paths.RunDir:
        return paths.RunDir(self.run_path)

    def path(self, value: str, run_dir: str | os.PathLike | None = None) -> Path:
        """Resolve a path-valued parameter: ``{run_dir}`` (``run_dir`` when given, else this run's)
        and ``{profile}`` are expanded, relative paths are taken from the project root."""
        base = Path(run_dir).resolve() if run_dir is not None else self.run_path
        return paths.resolve(value.format(run_dir=base, profile=self.profile))

    def is_path(self, value: str) -> bool:
        """Whether a model/dataset parameter names a local folder rather than a hub id."""
        return "{" in value or value.startswith((".", "/", "~")) or self.path(value).exists()

    def ref(self, value: str, run_dir: str | os.PathLike | None = None) -> str:
        """A model or dataset reference as ``from_pretrained`` wants it: a hub id stays as it is,
        a path is resolved (see :meth:`path`)."""
        return str(self.path(value, run_dir)) if self.is_path(value) else value

    def model_ref(self, name: str, run_dir: str | os.PathLike | None = None) -> str:
        """``models.<name>`` as ``from_pretrained`` wants it (see :meth:`ref`)."""
        return self.ref(getattr(self.models, name), run_dir)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


PROFILE_DIR = "params"


def profile_path(profile: str | os.PathLike) -> Path:
    """A profile name (``smoke``) or a path to a YAML file, as a path."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.exists():
        p = paths.resolve(p, Path.cwd())
        if not p.exists():
            raise ParamsError(f"{p}: no such params file")
        return p
    named = paths.project_root() / PROFILE_DIR / f"{profile}.yaml"
    if not named.exists():
        known = sorted(x.stem for x in (paths.project_root() / PROFILE_DIR).glob("*.yaml"))
        raise ParamsError(f"{named}: no profile named {profile!r} (known: {', '.join(known)})")
    return named


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> ``(["a", "b"], 3)``; the value is read as a YAML scalar or list."""
    if "=" not in item:
        raise ParamsError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ParamsError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _apply(data: dict, keys: list[str], value: Any, origin: str) -> None:
    node = data
    for i, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ParamsError(f"{origin}: {'.'.join(keys[: i + 1])} is not a section")
        node = nxt
    node[keys[-1]] = value


def _error_key(error: dict) -> str:
    """The dotted key an error is about; a section-level check names its offending key."""
    loc = [str(x) for x in error["loc"]]
    exc = (error.get("ctx") or {}).get("error")
    if isinstance(exc, SectionError):
        loc.append(exc.key)
    return ".".join(loc) or "<root>"


def _error_message(error: dict) -> str:
    exc = (error.get("ctx") or {}).get("error")
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if isinstance(exc, SectionError):  # not the whole section as 'got ...'
        return str(exc)
    if error["type"] == "value_error" and exc is not None:
        return str(exc)
    msg = error["msg"]
    if "input" in error and error["type"] not in ("missing",) and not isinstance(error["input"], dict):
        got = repr(error["input"])
        msg = f"{msg} (got {got if len(got) <= 80 else got[:77] + '...'})"
    return msg


def _format_error(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{origin}: {_error_key(first)}: {' '.join(_error_message(first).split())}{more}"


def validate(data: dict, origin: str = "<params>") -> Params:
    """Validate a params mapping; raise :class:`ParamsError` naming ``origin`` and the key."""
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_format_error(err, origin)) from None


def read_yaml(path: Path) -> Any:
    """A YAML file's content; any failure is a one-line :class:`ParamsError` naming the file
    (and, for a syntax error, the line and column)."""
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a directory, not a params file") from None
    except UnicodeDecodeError as err:
        raise ParamsError(
            f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})"
        ) from None
    except OSError as err:
        raise ParamsError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        what = " ".join(x for x in (err.context, err.problem) if x) or "syntax error"
        raise ParamsError(f"{path}{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None


def _merge_into(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, section by section (a mapping value merges, anything else replaces)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge_into(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_profile(path: Path, _seen: tuple = ()) -> dict:
    """A profile file as a mapping; ``extends: <profile>`` at its top takes that profile's values
    first, so a profile lists only what it changes (the rehearsal profile extends ``full``)."""
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: the top level must be a mapping")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ParamsError(f"{path}: extends: expected a profile name or YAML path, got {base!r}")
    with_base = Path(base) if Path(base).is_absolute() else path.parent / base
    base_path = profile_path(with_base if with_base.suffix in (".yaml", ".yml") else base)
    if base_path in _seen + (path,):
        raise ParamsError(f"{path}: extends: {base!r} extends itself")
    return _merge_into(read_profile(base_path, _seen + (path,)), data)


def _blame(err: ValidationError, overrides: Sequence[str], keys: list[list[str]]) -> str:
    """The overrides an error is about: those on the error's key (or above or below it), else
    those in the same section (a check across keys, such as split fractions that must sum to 1)."""
    loc = _error_key(err.errors()[0]).split(".")

    def on_key(k):
        n = min(len(k), len(loc))
        return k[:n] == loc[:n]

    hits = [item for item, k in zip(overrides, keys) if on_key(k)]
    if not hits and len(loc) > 1:
        hits = [item for item, k in zip(overrides, keys) if k[: len(loc) - 1] == loc[:-1]]
    return " ".join(f"--set {item}" for item in hits)


def load_params(profile: str | os.PathLike = "smoke", overrides: Sequence[str] = ()) -> Params:
    """Load a profile (a name under ``params/`` or a YAML path), apply every ``key=value``
    override, then validate the result once (so coupled keys can be changed together, in any
    order). Raises :class:`ParamsError` with a one-line message naming the file and the key
    (and the override, when the bad value came from one)."""
    path = profile_path(profile)
    data = read_profile(path)
    resolved = validate(data, str(path))  # report file errors against the file, before overrides
    if not overrides:
        return resolved
    # Overrides change the resolved values (defaults included): a key inside a mapping, such as
    # workflow.shards.05 or descriptors.weights.colour, changes that key and keeps the others,
    # whether or not the profile states the mapping.
    data = resolved.model_dump(mode="json")
    parsed = [parse_override(item) for item in overrides]
    for item, (keys, value) in zip(overrides, parsed):
        _apply(data, keys, value, f"{path} --set {item}")
    try:
        # An override's value comes from the command line: let "3" stand for 3 and so on.
        data = Params.model_validate(data, strict=False).model_dump(mode="json")
    except ValidationError as err:
        blame = _blame(err, overrides, [k for k, _ in parsed])
        raise ParamsError(_format_error(err, f"{path} {blame}".rstrip())) from None
    return validate(data, str(path))


RUN_PARAMS_FILE = "params.resolved.yaml"  # what `artsim run` writes into every run directory


def run_params_file(run_dir: str | os.PathLike | None) -> Path | None:
    """``<run_dir>/params.resolved.yaml`` when there is one, else None."""
    if run_dir is None:
        return None
    f = Path(run_dir) / RUN_PARAMS_FILE
    return f if f.is_file() else None


def read_run_params(run_dir: str | os.PathLike, missing_ok: bool = False) -> Params | None:
    """The params a run directory was made with (its ``params.resolved.yaml``), validated; the one
    reader of that file. A run without it: None with ``missing_ok``, else FileNotFoundError."""
    f = run_params_file(run_dir)
    if f is None:
        if missing_ok:
            return None
        raise FileNotFoundError(
            f"{Path(run_dir) / RUN_PARAMS_FILE}: not a run directory (no resolved params; has any stage run?)"
        )
    return validate(read_yaml(f) or {}, str(f))
