"""Streamlit app: upload scans, see the prediction, a probability chart, heatmap and contour overlays.

Run with ``oncolens app BUNDLE`` (or ``streamlit run streamlit_app.py -- --bundle BUNDLE``; the
``ONCOLENS_BUNDLE`` environment variable works too). Research use only, not a medical device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from oncolens.data import UnreadableImage
from oncolens.errors import OncolensError
from oncolens.explain import list_methods
from oncolens.predictor import Predictor, png_bytes

MAX_UPLOAD_BYTES = 50 * 2**20
TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "dcm", "dicom"]


def bundle_path() -> str | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--bundle")
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known.bundle or os.environ.get("ONCOLENS_BUNDLE")


@st.cache_resource(show_spinner="loading the model…")
def load_predictor(path: str) -> Predictor:
    """Loaded once per server process, shared by every session and upload."""
    from oncolens.runtime import tune_cpu_runtime

    tune_cpu_runtime()
    return Predictor.from_bundle(path)


def example_image():
    from PIL import Image

    from oncolens.data.phantoms import render_phantom

    image, _ = render_phantom("mri", tumor=True, size=128, seed=3)
    return Image.fromarray(image)


def show_result(predictor: Predictor, name: str, image, method: str, opacity: float, level: int | None = None,
                alpha: float | None = None) -> None:
    result = predictor.explain(image, method=method, opacity=opacity, source=name, level=level, set_alpha=alpha)
    p = result.prediction
    st.subheader(f"{name}")
    if p.warning:  # before anything else: the prediction below is not to be trusted
        st.error(f"**Out of distribution: this image is {p.warning}.** The model was not trained on images like "
                 "this one; do not use the prediction below.", icon="⚠️")
    st.markdown(f"**Prediction: {p.label}** ({p.confidence:.1%})")
    if p.trust is not None and p.trust.prediction_set is not None:
        st.markdown(f"Prediction set at {1 - p.trust.alpha:.0%} coverage: **{p.set_text}** "
                    "(the classes that cannot be ruled out at this error rate)")
    if p.levels:  # a hierarchical bundle: the decision at every level of the routed path
        st.markdown("Routed: " + " → ".join(f"{lv['level']} **{lv['label']}** ({lv['confidence']:.0%})"
                                           for lv in p.levels))
        st.dataframe(pd.DataFrame([{"level": lv["level"], "prediction": lv["label"], "confidence": lv["confidence"],
                                    "alternatives": ", ".join(f"{k} {v:.2f}" for k, v in lv["probabilities"].items())}
                                   for lv in p.levels]), hide_index=True)
    chart = pd.DataFrame({"probability": list(p.probabilities.values())}, index=list(p.probabilities.keys()))
    st.bar_chart(chart, horizontal=True)
    left, right = st.columns(2)
    by = result.explained_by
    caption = f"{method} heatmap" + (f" ({by['level']} classifier, class {by['class']})" if by else "")
    left.image(result.heatmap_overlay, caption=caption, width="stretch")
    right.image(result.contour_overlay, caption="contours and boxes", width="stretch")
    stem = os.path.splitext(name)[0]
    d1, d2, d3 = st.columns(3)
    d1.download_button("heatmap PNG", png_bytes(result.heatmap_overlay), f"{stem}.{method}.heatmap.png", "image/png",
                       key=f"h-{name}")
    d2.download_button("contours PNG", png_bytes(result.contour_overlay), f"{stem}.{method}.contours.png",
                       "image/png", key=f"c-{name}")
    d3.download_button("result JSON", json.dumps(result.to_dict(), indent=2), f"{stem}.{method}.json",
                       "application/json", key=f"j-{name}")


def main() -> None:
    st.set_page_config(page_title="oncolens", layout="wide")
    st.title("oncolens")
    st.caption("Upload a scan to see the model's prediction and where it looked. Research use only.")
    path = bundle_path()
    if not path:
        st.error("No model bundle given: start with `oncolens app runs/<name>/bundle`.")
        return
    try:
        predictor = load_predictor(path)
    except OncolensError as exc:
        st.error(f"Cannot load the bundle {path}: {exc}")
        return
    info = predictor.info
    with st.sidebar:
        st.header("Model")
        st.write(f"{info['model']} · {info['input_size']} px · {len(info['classes'])} classes")
        st.write(", ".join(info["classes"]))
        level = None
        if info.get("levels"):
            names = [lv["name"] for lv in info["levels"]]
            st.write(f"hierarchical: {' > '.join(names)} ({len(info['nodes'])} classifiers)")
            choice = st.selectbox("Explain the classifier of level", ["deepest on the route", *names])
            level = None if choice == "deepest on the route" else names.index(choice)
        methods = list_methods(predictor.bundle)  # the methods of the bundle's task (a bag classifier: attention)
        method = st.selectbox("Explanation method", methods,
                              index=methods.index("gradcam") if "gradcam" in methods else 0)
        opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05)
        alpha = None
        if predictor.trust is None:
            st.warning("This bundle has no calibration: no prediction sets and no out-of-distribution check "
                       "(`oncolens calibrate` adds them).")
        else:
            alpha = st.slider("Prediction-set error rate (alpha)", 0.01, 0.5, float(predictor.alpha), 0.01)
        use_example = st.button("Try an example image")
        if info.get("model_card"):
            from oncolens.models.card import render_model_card

            with st.expander("About this model (model card)"):
                st.markdown(render_model_card(info["model_card"]).split("\n", 1)[1])
    uploads = st.file_uploader("Images (PNG, JPEG, TIFF, DICOM)", type=TYPES, accept_multiple_files=True)
    items = []
    for upload in uploads or []:
        data = upload.getvalue()
        if len(data) > MAX_UPLOAD_BYTES:
            st.error(f"{upload.name}: larger than {MAX_UPLOAD_BYTES // 2**20} MiB; not analysed.")
            continue
        try:
            items.append((upload.name, predictor.load_bytes(data, name=upload.name)))
        except UnreadableImage as exc:
            st.error(f"{upload.name}: not a usable image ({exc.reason}).")
    if use_example:
        items.append(("example-mri-phantom.png", example_image()))
    for name, image in items:
        try:
            show_result(predictor, name, image, method, opacity, level, alpha)
        except OncolensError as exc:  # e.g. an alpha too small for the calibration images
            st.error(f"{name}: {exc}")
    if not items:
        st.info("Upload one or several images, or try the example.")
    show_slides()


def show_slides() -> None:
    """The slides scored by `oncolens slide` in the folder the app was started with (`--slides`): heatmap,
    slide-level scores and the top tiles of the chosen slide. Only that folder is read."""
    folder = os.environ.get("ONCOLENS_SLIDES")
    if not folder:
        return
    root = Path(folder)
    done = sorted(p.parent for p in [root / "summary.json", *root.glob("*/summary.json")] if p.exists())
    st.header("Slides")
    if not done:
        st.info(f"No finished `oncolens slide` output in {root} (a folder with summary.json).")
        return
    chosen = st.selectbox("Slide", [p.name for p in done])
    out = next(p for p in done if p.name == chosen)
    summary = json.loads((out / "summary.json").read_text())
    target = summary["target"]
    stats = summary.get("classes", {}).get(target, {})
    st.subheader(f"{chosen}: P({target})")
    columns = st.columns(4)
    columns[0].metric("tissue tiles", summary.get("tiles", 0))
    columns[1].metric("mean", f"{stats.get('mean', float('nan')):.3f}")
    columns[2].metric(f"top-{summary.get('top_k')} mean", f"{stats.get('top_k_mean', float('nan')):.3f}")
    columns[3].metric(f"tissue above {summary.get('threshold')}", f"{stats.get('tissue_fraction_above', 0):.1%}")
    if summary.get("tiles_unlike_training"):
        st.warning(f"{summary['tiles_unlike_training']:.0%} of the tiles are unlike the training images: do not "
                   "trust their scores.")
    if "probabilities" in summary:  # one decision for the whole slide (a multiple-instance model)
        st.metric(f"P({target}) for the slide (multiple-instance model)", f"{summary['probabilities'][target]:.3f}")
    views = summary.get("views") or [{"file": "heatmap.png", "caption": f"P({target}) per tile"},
                                     {"file": "top_tiles.png", "caption": "the top tiles"}]
    for view in views:  # the figures the slide's scorer made, in its order, each said in words
        if (out / Path(view["file"]).name).exists():
            st.image(str(out / Path(view["file"]).name), caption=view["caption"])
    if (out / "tiles.csv").exists():
        tiles = pd.read_csv(out / "tiles.csv")
        rank = summary.get("rank_tiles_by", f"prob_{target}")
        st.dataframe(tiles.sort_values(rank, ascending=False).head(20) if rank in tiles.columns else tiles.head(20),
                     hide_index=True)


main()
