"""Write scikit-image's bundled natural photographs as PNGs into a folder: a far out-of-distribution set
for any medical model. Usage: .venv/bin/python scripts/natural_images.py OUT_DIR"""

import sys
from pathlib import Path

from PIL import Image
from skimage import data

# photographs and textures only (not skimage's immunohistochemistry or retina images: those are medical)
NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text", "horse",
         "clock", "hubble_deep_field", "grass", "gravel", "brick", "cat")

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "natural_images")
    out.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        try:
            array = getattr(data, name)()
        except Exception as exc:  # an image scikit-image would have to download: skipped offline
            print(f"skipped {name}: {type(exc).__name__}")
            continue
        if array.dtype == bool:
            array = array.astype("uint8") * 255
        Image.fromarray(array).save(out / f"{name}.png")
    print(f"{len(list(out.glob('*.png')))} images in {out}")
