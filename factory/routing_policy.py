"""Routing policy: which item goes to which people, for which reason, at which tier, past which threshold.

The maths is type-agnostic and pure in `factory.engine.routing` (`route_batch`, `decide`) and
`factory.loop` (the people-in-the-loop round); this module is where the spec meets it: the review budget,
audit sample and auto-accept threshold of prelabel-human, the verifier of prelabel-model, the flags of
human-model, the tier a reason asks for, and the second-opinion / arbitration tasks of an escalation.
`factory.pipeline` reads the ledger and tables, calls these, and writes what they decide.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from factory.engine.routing import route_batch
from factory.guarantee import choose_threshold
from factory.labelers import GloveSifLogReg
from factory.quality import audit_target
from factory.set_labelers import OvrGloveLogReg
from factory.spec import DatasetSpec
from factory.tasks.classification import verifier_accepts  # noqa: F401  (one class's verifier rule; callers import it here)
from factory.task_rows import max_tier, task_row

MIN_GUARANTEE_SAMPLE = 50  # audited items needed before the guarantee can set the threshold


def prob_cols(classes: list[str]) -> list[str]:
    return [f"prob_{c}" for c in classes]


def required_tier(spec: DatasetSpec, label: str | None, reasons: list[str], meta: dict | None = None) -> str:
    """The least tier allowed to answer a task, from the item's risk and difficulty (spec.workforce)."""
    w = spec.workforce
    at_stake = []
    for rule in w.value_rules:
        try:
            if float((meta or {}).get(rule.field)) > rule.above:
                at_stake.append(rule.tier)
        except (TypeError, ValueError):  # missing or non-numeric value: no rule fires
            pass
    return max_tier("L1", *at_stake,
                    w.disagreement_tier if "disagreement" in reasons else None,
                    w.uncertain_tier if "low_confidence" in reasons else None,
                    w.class_tiers.get(str(label)) if label is not None else None,
                    w.sensitive_tier if spec.compliance.grade != "general" else None)


def auto_accept_choice(spec: DatasetSpec, verified: pd.DataFrame) -> tuple[float, dict]:
    """The auto-accept threshold from the random audits of earlier batches (`verified`: label, fused_label,
    fused_confidence of audited items), with the guarantee it rests on (see `pipeline.auto_accept_threshold`)."""
    floor = spec.quality.confidence_threshold
    info = {"floor": floor, "epsilon": spec.quality.auto_accept.epsilon, "delta": spec.quality.auto_accept.delta,
            "n_verified": int(len(verified))}
    if len(verified) < MIN_GUARANTEE_SAMPLE:
        return floor, info | {"threshold": floor, "guarantee": f"not yet: {len(verified)} audited items, "
                                                               f"{MIN_GUARANTEE_SAMPLE} needed"}
    choice = choose_threshold(verified["fused_confidence"].to_numpy(float),
                              (verified["label"] == verified["fused_label"]).to_numpy(bool),
                              spec.quality.auto_accept.epsilon, spec.quality.auto_accept.delta)
    t = 1.0 + 1e-9 if choice.threshold is None else max(floor, choice.threshold)  # None: certify nothing
    return t, info | {"threshold": t, "guarantee": choice.to_dict()}


def prelabel_human_routes(spec: DatasetSpec, fused: pd.DataFrame, model_labels: pd.DataFrame, seed_dist: dict,
                          seed: int, threshold: float, budget: int) -> pd.DataFrame:
    """prelabel-human: the engine's `route_batch` with the spec's threshold, prior, audit rate, bias ratio and review
    budget; for sets, a flagged item's reasons name its most uncertain classes."""
    audit_min = audit_target(spec.quality, fused.loc[fused["confidence"] >= threshold, "confidence"])
    r = route_batch(fused, model_labels.loc[fused.index], confidence_threshold=threshold,
                    prior=spec.prior if spec.task_type.class_shares else None,
                    seed_distribution=seed_dist or None, audit_rate=spec.quality.audit_rate,
                    bias_ratio=spec.quality.bias_ratio, review_budget=budget, seed=seed, audit_min=audit_min)
    uncertain = spec.task_type.uncertain_classes
    if uncertain is not None:  # sets: name the classes a person should look at first
        cols = prob_cols(spec.class_names)
        flagged = r.index[r["route"].isin(["review", "deferred"])]
        names = uncertain(fused.loc[flagged, cols].to_numpy(float), spec.class_names)
        r.loc[flagged, "reasons"] = pd.Series([list(x) + ([f"uncertain: {', '.join(n)}"] if n else [])
                                               for x, n in zip(r.loc[flagged, "reasons"], names)],
                                              index=flagged, dtype=object)
    return r.reset_index()[["item_id", "route", "label", "confidence", "reasons", "priority"]]


def prelabel_model_routes(spec: DatasetSpec, preds: pd.DataFrame, items: pd.Index, seed: int,
                          n_items: int | None = None) -> pd.DataFrame:
    """Labelers fused without the verifier; the verifier (a different family on other features) re-checks."""
    classes = spec.class_names
    names = sorted(preds["labeler"].unique())
    verifier = verifier_name(names)
    p = preds[preds["item_id"].isin(items)]
    prim = p[p["labeler"] != verifier].rename(columns={"labeler": "worker_id"})
    answers = prim[["item_id", "worker_id", "label", *prob_cols(classes)]]
    tt = spec.task_type
    # the type's fusion of the primary labelers (sets: their per-class marginals pooled) and its verifier check
    fused = tt.fuse_primary(answers, classes)
    ver = p[p["labeler"] == verifier].set_index("item_id").reindex(fused.index)
    agree = fused["label"].astype(str) == ver["label"].astype(str)
    conf_ok = tt.verifier_accepts(fused, ver, classes, spec.prelabel_model.accept_confidence)
    out = pd.DataFrame({"item_id": fused.index, "label": fused["label"].astype(str).to_numpy(),
                        "confidence": fused["confidence"].to_numpy()})
    ok = (agree & conf_ok).to_numpy()
    out["route"] = np.where(ok, "verified", "review" if spec.prelabel_model.on_disagreement == "to-human" else "excluded")
    out["reasons"] = [["verifier_agrees"] if o else
                      [("verifier_disagrees" if not a else "below_accept_confidence"),
                       f"verifier {verifier} says {v}"] for o, a, v in zip(ok, agree, ver["label"])]
    # a minimum audit sample always goes to people: audit_rate of ALL the mode's items (not of the verified
    # share, which shrank the sample below the rate), drawn from the model-verified ones nobody else sees
    verified = np.flatnonzero(ok)
    n_audit = min(len(verified), int(np.ceil(spec.prelabel_model.audit_rate * max(n_items or 0, len(out)))))
    # ... and at least what the accuracy gate needs to be reachable (all verified items if fewer)
    n_audit = max(n_audit, min(audit_target(spec.quality, fused["confidence"].to_numpy()[verified]), len(verified)))
    if n_audit:
        pick = np.random.default_rng(seed).choice(verified, size=n_audit, replace=False)
        out.loc[pick, "route"] = "audit"
        out.loc[pick, "reasons"] = pd.Series([["audit"]] * n_audit, index=pick)
    return out


def verifier_name(labeler_names: list[str]) -> str:
    """The labeler kept out of the fusion in prelabel-model mode: the pretrained-embedding family if present
    (features learned outside the seed, so its errors are the least tied to the bag-of-words ones), else a
    dense-feature family."""
    for embedding in (GloveSifLogReg.name, OvrGloveLogReg.name):  # one label, or a set (one-vs-rest)
        if embedding in labeler_names:
            return embedding
    for n in labeler_names:
        if "lsa" in n or "knn" in n or "boost" in n:
            return n
    return labeler_names[-1]


def human_model_routes(spec: DatasetSpec, given: pd.Series, confidence: pd.Series, suspects: pd.DataFrame,
                       n_labels: pd.Series, meta: pd.Series, missing: pd.Series, fused: pd.DataFrame) -> pd.DataFrame:
    """human-model: an item people labelled (`given`, with the fused `confidence`) goes to verification when the
    engine suspects a mislabel (`suspects`: flag, reasons), its annotators disagree (`n_labels` distinct labels)
    or a spec rule forbids its label for its metadata (`meta`); an item everyone skipped (`missing`) is a
    missing label, verified with the models' label (`fused`)."""
    rows = []
    for item_id in given.index:
        reasons = []
        if bool(suspects.at[item_id, "flag"]):
            reasons.append("probable_mislabel")
            reasons += [r for r in suspects.at[item_id, "reasons"] if isinstance(r, str)][:2]
        if n_labels.get(item_id, 1) > 1:
            reasons.append("annotators_disagree")
        for rule in spec.rules:  # a set breaks a rule when any of its classes is forbidden
            chosen = spec.task_type.classes_of(given[item_id])
            if meta[item_id].get(rule.field) in rule.equals and chosen & set(rule.forbids):
                reasons.append(f"rule:{rule.name}: '{given[item_id]}' is forbidden when {rule.field}="
                               f"{meta[item_id].get(rule.field)}")
        rows.append(dict(item_id=item_id, route="verify" if reasons else "annotated", label=given[item_id],
                         confidence=float(confidence[item_id]), reasons=reasons or ["accepted"]))
    for item_id in missing:  # everyone skipped it: a missing label goes up a tier
        rows.append(dict(item_id=item_id, route="verify", label=str(fused.at[item_id, "label"]),
                         confidence=float(fused.at[item_id, "confidence"]), reasons=["missing_label"]))
    return pd.DataFrame(rows, columns=["item_id", "route", "label", "confidence", "reasons"])


def escalation_tasks(spec: DatasetSpec, dataset: str, batch_id: str, routes: pd.DataFrame, actions: pd.DataFrame,
                     n: pd.Series, run_id: str | None) -> list[dict]:
    """One class per item: the people round's `actions` (action ask | escalate, reasons) as tasks: a second
    opinion at tier >= L2, or an expert's arbitration."""
    new = []
    for item_id, a in actions.iterrows():
        rnd = int(n[item_id]) + 1
        if a["action"] == "ask":
            new.append(task_row(dataset, batch_id, item_id, "second", ["second_opinion"] + list(a["reasons"])[:2],
                                tier=max_tier("L2", routes.at[item_id, "required_tier"]), run_id=run_id, round_=rnd))
        elif a["action"] == "escalate":
            new.append(task_row(dataset, batch_id, item_id, "arbitrate", ["unresolved"] + list(a["reasons"])[:2],
                                tier="expert", run_id=run_id, domain=spec.workforce.domain))
    return new


def span_reasons(fused: pd.DataFrame, threshold: float) -> pd.Series:
    """Spans: why each sentence goes to a person ("" = it may be accepted): span routing's reason, else
    "low_confidence" when its confidence calibrated on people's labels is below the auto-accept threshold."""
    reason = fused["route_reason"].fillna("").astype(str)
    low = (reason == "") & (fused["confidence"].astype(float) < threshold)
    return reason.mask(low, "low_confidence")


def prelabel_span_routes(spec: DatasetSpec, fused: pd.DataFrame, seed: int, threshold: float,
                         budget: int) -> pd.DataFrame:
    """Spans: a reason (`span_reasons`: span routing's, or a calibrated confidence below the threshold) sends a
    sentence to people, in span routing's priority order while the review budget lasts (the rest deferred); a
    random audit sample of the sentences accepted goes to people too (first call on the budget, as for one class
    per item)."""
    reason = span_reasons(fused, threshold)
    fused = fused.assign(route_reason=reason)
    accepted = fused.index[(reason == "").to_numpy()]
    audit_min = audit_target(spec.quality, fused.loc[accepted, "confidence"])
    n_audit = min(len(accepted), max(audit_min, int(np.ceil(spec.quality.audit_rate * len(accepted)))),
                  max(int(budget), 0))
    audit = set(np.random.default_rng(seed).choice(np.asarray(accepted, dtype=object), size=n_audit, replace=False)) \
        if n_audit else set()
    flagged = fused.loc[(reason != "").to_numpy()].sort_values("priority", ascending=False, kind="stable").index
    review = set(flagged[:max(int(budget) - n_audit, 0)])
    rows = []
    for item_id, r in fused.iterrows():
        if item_id in audit:
            route, why = "audit", ["audit"]
        elif item_id in review:
            route, why = "review", [r["route_reason"]]
        elif r["route_reason"]:
            route, why = "deferred", [r["route_reason"], "budget"]
        else:
            route, why = "auto", [f"span set exactly right with probability {float(r['confidence']):.3f}"]
        rows.append(dict(item_id=item_id, route=route, label=str(r["label"]), confidence=float(r["confidence"]),
                         reasons=why, priority=float(r["priority"])))
    return pd.DataFrame(rows, columns=["item_id", "route", "label", "confidence", "reasons", "priority"])


def set_escalations(spec: DatasetSpec, dataset: str, batch_id: str, routes: pd.DataFrame, post: pd.DataFrame,
                    n: pd.Series, run_id: str | None) -> list[dict]:
    """Sets and spans: an item whose fused answer (`post`: label, confidence per item; spans: also span routing's
    `reason` on people + models) is below quality.min_accuracy or still flagged gets a second person (tier >= L2);
    after two people (`n`: answers per item) it goes to an expert."""
    new = []
    for item_id, r in post.iterrows():
        reason = str(r.get("reason", "") or "")  # spans: span routing's reason on people + models
        if float(r["confidence"]) >= spec.quality.min_accuracy and not reason:
            continue
        why = [reason] if reason else []
        why += [f"fused {spec.task_type.answer_shape} '{r['label']}' at "
                f"{float(r['confidence']):.2f}" + ("" if reason else f" < {spec.quality.min_accuracy}")]
        if int(n.get(item_id, 0)) < 2:
            new.append(task_row(dataset, batch_id, item_id, "second", ["second_opinion", "low_confidence"] + why,
                                tier=max_tier("L2", routes.at[item_id, "required_tier"]), run_id=run_id,
                                round_=int(n.get(item_id, 0)) + 1))
        else:
            new.append(task_row(dataset, batch_id, item_id, "arbitrate", ["unresolved", "disagreement"] + why,
                                tier="expert", run_id=run_id, domain=spec.workforce.domain))
    return new
