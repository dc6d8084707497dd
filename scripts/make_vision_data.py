"""Write an offline image-classification task in the local image-folder layout: <dir>/<task>/<split>/<class>/*.png.

    python scripts/make_vision_data.py ~/.cache/lopa/vision          # then: run.py ... data_dir=~/.cache/lopa/vision

The images are scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download), stored at their own size:
the task upscales them to the model's input resolution when it loads a batch. Every fifth image of a class goes to
the test split, the others to train. Nothing is written into the repository or into shared data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEST_EVERY = 5


def write_digits(root: Path) -> dict[str, int]:
    """The digits as 8-bit grayscale PNGs under root/digits/{train,test}/<name>/; returns the images per split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = {"train": 0, "test": 0}
    seen = [0] * len(DIGIT_NAMES)
    for image, label in zip(digits.images, digits.target):
        split = "test" if seen[label] % TEST_EVERY == 0 else "train"
        folder = root / "digits" / split / DIGIT_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image / 16.0 * 255).astype(np.uint8)  # values 0..16 -> 0..255
        Image.fromarray(pixels).save(folder / f"{seen[label]:04d}.png")
        seen[label] += 1
        counts[split] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="data root to write into (pass it as data_dir=)")
    args = parser.parse_args(argv)
    counts = write_digits(args.directory.expanduser())
    print(f"wrote {counts['train']} train and {counts['test']} test images to {args.directory / 'digits'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
