"""Layer 2, config: the params schema (``schema``) and the one validated loader (``load``).

``from artsim_lib import config`` is the loader's facade: ``config.load_params``, ``config.Params``,
``config.ParamsError`` and the section classes."""

from artsim_lib.config.load import (  # noqa: F401  (the facade)
    PROFILE_DIR,
    RUN_PARAMS_FILE,
    Params,
    ParamsError,
    load_params,
    parse_override,
    profile_path,
    read_profile,
    read_run_params,
    read_yaml,
    run_params_file,
    validate,
)
from artsim_lib.config.schema import *  # noqa: F401,F403  (the section classes: config.EvaluationParams ...)
