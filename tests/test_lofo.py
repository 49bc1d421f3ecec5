"""Leave-one-family-out on synthetic embeddings: a family whose derivatives only a head trained on
it can recognise shows a drop once held out; the others do not."""
import numpy as np
import pandas as pd
import torch

from artsim_lib import config
from artsim_lib.core import lofo


def synthetic(n_orig=80, dim=8, seed=0):
    """Originals as random vectors; 'easy' derivatives are noisy copies; 'hidden' derivatives have
    half their coordinates sign-flipped (a head has to learn to look past them)."""
    rng = np.random.default_rng(seed)
    rot = np.diag([1.0] * (dim // 2) + [-1.0] * (dim - dim // 2))
    ids, emb, man, trip = [], [], [], []
    split = np.array(["train"] * (n_orig // 2) + ["val"] * (n_orig // 4) + ["test"] * (n_orig - n_orig * 3 // 4))
    base = rng.normal(size=(n_orig, dim))
    for i in range(n_orig):
        oid = f"o{i:02d}"
        ids.append(oid); emb.append(base[i])
        man.append(dict(id=oid, style=f"s{i % 2}", artist=f"a{i % 5}", split=split[i], path=oid))
    for i in range(n_orig):
        for fam in ("easy", "hidden"):
            pid = f"o{i:02d}:{fam}"
            v = base[i] + rng.normal(0, 0.3, dim) if fam == "easy" else rot @ base[i]
            ids.append(pid); emb.append(v)
            same = [j for j in range(n_orig) if split[j] == split[i] and j != i]
            j = same[rng.integers(len(same))]
            trip.append(dict(triplet_id=f"t{i}{fam}", anchor_id=f"o{i:02d}", positive_id=pid, negative_id=f"o{j:02d}",
                             negative_kind="random", family=fam, backend="augment", split=split[i],
                             style=f"s{i % 2}", artist=f"a{i % 5}", negative_path=f"o{j:02d}"))
    table = pd.DataFrame({"id": ids, "embedding": [np.asarray(e, np.float32) for e in emb]})
    return pd.DataFrame(trip), table, pd.DataFrame(man)


def test_a_family_only_training_can_teach_drops_when_held_out():
    trip, table, manifest = synthetic()
    P = config.load_params("smoke", ["siamese.epochs=40", "siamese.hidden=[32]", "siamese.out_dim=8",
                                     "siamese.dropout=0.0", "evaluation.n_boot=100", "siamese.patience=40"])
    torch.manual_seed(0)
    tab = lofo.leave_one_family_out(P, trip, table, manifest)
    assert set(tab["trained_without"]) == {"none", "easy", "hidden"} and tab["held_out"].sum() == 2
    drop = lofo.held_out_drop(tab)
    assert drop.loc["hidden", "drop"] > 0.1 and drop.loc["hidden", "excludes_0"]   # learnt, not seen
    assert drop.loc["hidden", "drop"] > drop.loc["easy", "drop"]
    assert {"lo", "hi", "n"} <= set(drop.columns) and (drop["n"] == 20).all()  # 20 test originals
