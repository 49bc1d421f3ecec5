"""Stage 01 on a few SynthArt paintings: the raw manifest is written and described, and load reads it
back without ever making it."""

import pytest

from artsim_lib import config
from artsim_lib.io.artifacts import StageNotRunError
from artsim_lib.stages import s01_eda as eda

SMALL = ["data.synthart.num_images=16", "data.synthart.max_side=96"]


def test_run_describes_the_originals_and_load_reads_them_back(run_dir):
    P = config.load_params("smoke", SMALL)
    with pytest.raises(StageNotRunError, match="run stage 01 first"):
        eda.load(P)
    result = eda.run(P)
    assert len(result.raw) == len(result.probe) > 0
    bad = ~result.probe["readable"]  # SynthArt plants a truncated file among good ones
    assert 0 < bad.sum() < len(result.probe) and (result.probe.loc[bad, "error"].str.len() > 0).all()
    assert "missing" in result.missing.columns
    assert set(result.duplicates.columns) >= {"id", "duplicate_of"}
    assert set(result.duplicates["id"]) <= set(result.raw["id"])
    back = eda.load(P)
    assert back["id"].tolist() == result.raw["id"].tolist()
    assert isinstance(back["styles"].iloc[0], list)
