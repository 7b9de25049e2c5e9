"""Issue 12, items 1-2: honest confidence and no silent auto-accept (routing, calibration, deferral)."""
import numpy as np
import pandas as pd

from factory.engine.routing import route_batch


def _fused3(labels, conf, ids):
    conf = np.asarray(conf, float)
    lab = np.asarray(labels)
    return pd.DataFrame({"label": lab, "confidence": conf,
                         **{f"prob_{c}": np.where(lab == c, conf, (1 - conf) / 2) for c in "abc"}},
                        index=pd.Index(ids, name="item_id"))


def test_route_batch_no_support_sends_a_label_no_labeler_gave_to_people():
    ids = ["i0", "i1", "i2", "i3"]
    fused = _fused3(["c", "a", "c", "b"], [0.99, 0.99, 0.99, 0.99], ids)
    # i0: models say a, b, b and the fusion says c; i2: all models say a, the fusion says c
    models = pd.DataFrame({"m1": ["a", "a", "a", "b"], "m2": ["b", "a", "a", "b"], "m3": ["b", "a", "a", "b"]},
                          index=fused.index)
    out = route_batch(fused, models, confidence_threshold=0.9, audit_rate=0.0, seed=0)
    assert out.loc["i0", "route"] == "review" and "no_support" in out.loc["i0", "reasons"]
    assert out.loc["i2", "route"] == "review" and out.loc["i2", "reasons"] == ["no_support"]  # no disagreement
    assert out.loc["i1", "route"] == "auto" and out.loc["i3", "route"] == "auto"
    # an unsupported label outranks a supported one at the same confidence when the budget is short
    short = route_batch(fused, models, confidence_threshold=0.9, audit_rate=0.0, review_budget=1, seed=0)
    assert short.loc["i0", "route"] == "review"
