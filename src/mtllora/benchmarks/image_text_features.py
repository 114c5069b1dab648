"""Image folders -> one HDF5 file of region features in the VL-T5 layout, for the image-text benchmark.

    python -m mtllora.benchmarks.image_text_features --images DIR [DIR ...] --output FILE.h5
        [--backbone pixels|clip-rn101] [--boxes 36] [--dim 128] [--seed 0] [--batch-size 32] [--device cpu]

Every image (*.png, *.jpg, *.jpeg; its id is the file name without extension, unique across the folders) becomes
a group `<img_id>` with `features` [boxes, dim] float32, `boxes` [boxes, 4] float32 (x1, y1, x2, y2 in pixels of the
original image: the grid cells), and scalars `img_w`, `img_h`, as VL-T5's Faster R-CNN files; the root attributes
record the backbone and settings. `mtllora.benchmarks.image_text_data.ImageFeatures` reads it and normalises the
boxes by img_w/img_h. (VL-Adapter's own CLIP files store no boxes, and its loaders feed VL-BART zero boxes; use
the boxes or zero them to match.)

Backbones:

- `clip-rn101`, the paper's: the official recipe of VL-Adapter `feature_extraction/coco_CLIP.py` with RN101. The
  image is resized to 224x224 (bicubic, aspect ratio not kept), normalised with CLIP's mean and std, and the last
  convolutional stage (`visual.layer4`) gives a 7x7 grid of 2048-d features; max pooling over the same bins as
  `nn.AdaptiveMaxPool2d` brings it to `--boxes` cells (36 = 6x6, what VL-Adapter's `--downsample` does inside the
  model; `--boxes 49` keeps the grid as the official files store it). Needs openai's `clip` package or `open_clip`
  (`pip install open_clip_torch`) and the RN101 weights they download on first use; offline, or without either
  package, it stops with a message saying so.
- `pixels`, the offline fallback: fixed, deterministic features computed from the pixels, so that the same image
  always gives the same features and a small model can learn colours, shapes, counts and positions. The image is
  resized to a g x g grid of 32-pixel cells (g*g = `--boxes`); each cell is described by 21 numbers (mean and
  standard deviation of R, G, B; the share of its pixels in each of the 8 corners of the RGB cube; the share of
  "ink", pixels differing from the background colour of the image border, in each quarter of the cell; the mean
  horizontal and vertical intensity gradients; the share of the ink's bounding box that the ink fills, which tells
  squares, circles and triangles apart), which a FIXED random matrix drawn from `--seed` projects to `--dim` numbers
  (linearly, so no information is lost when dim >= 21). Thousands of small images take seconds.

Official pre-extracted features (the paper profile). VL-Adapter's README (ylsung/VL_adapter) links the processed
CLIP features as one Google Drive archive (file id 1O_RU1iFh_sbItZCTkOHUrbVIQQ_89Djj; `gdrive download
1O_RU1iFh_sbItZCTkOHUrbVIQQ_89Djj`), to unpack as its `datasets/` folder:

    datasets/COCO/clip_features/data_clip_RN101_att/<img_id>.h5   VQA (Karpathy) and captioning
    datasets/VG/clip_features/data_clip_RN101_att/<img_id>.h5     GQA train and valid
    datasets/GQA/clip_features/data_clip_RN101_att/<img_id>.h5    GQA testdev
    datasets/nlvr/clip_features/data_clip_RN101_att/<img_id>.h5   NLVR2 (train-..., dev-..., test1-... images)

with the annotations beside them (datasets/vqa/karpathy_*.json, GQA/*.json, nlvr/*.json, COCO/dataset_coco.json).
Each file holds one group `<img_id>/features` [49, 2048] (RN101's 7x7 grid at 224x224, coco_CLIP.py's default
att_size 7) and no boxes; point `ImageFeatures` at those folders (`official_feature_paths(..., layout="clip")`) with
n_boxes=36 to pool them as the model's `--downsample` does. VL-T5's Faster R-CNN features (36 boxes with pixel
boxes, img_w, img_h) are in its Google Drive `datasets/` folder (id 1MBBhlkP83VMKS2Qe0SmFfzkHhMpIG5wf) as
COCO/features/{train,val}2014_obj36.h5, VG/features/vg_gqa_obj36.h5, GQA/features/gqa_testdev_obj36.h5 and
nlvr/features/{train,valid,test}_obj36.h5 (layout="butd"), or converted from LXMERT's tsv files
(nlp.cs.unc.edu/data/lxmert_data/mscoco_imgfeat/train2014_obj36.zip and the like) with VL-T5's
feature_extraction/tsv_to_h5.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from mtllora.benchmarks.image_text_data import downsample_grid
from mtllora.fileio import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CELL_PIXELS = 32  # pixel features: cell side after resizing
RAW_PIXEL_FEATURES = 21
CLIP_SIZE = 224
CLIP_GRID = 7  # RN101's last stage at 224x224: stride 32
CLIP_DIM = 2048
# CLIP's preprocessing statistics (openai/CLIP, as VL-Adapter's coco_CLIP.py uses them).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
CLIP_UNAVAILABLE = (
    "--backbone clip-rn101 needs CLIP RN101: install openai's `clip` package or `open_clip_torch` (they need "
    "torchvision), with network access to download the RN101 weights once (or the weights already in their cache). "
    "Offline, use --backbone pixels, or the official pre-extracted features described in this script's docstring."
)


def find_images(folders: Sequence[Path]) -> dict[str, Path]:
    """Returns image id -> path for the images of the folders (not recursive), in sorted order; an id found twice
    is an error, since the HDF5 file has one group per id."""
    images: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"--images {folder} is not a folder")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.stem in images:
                raise SystemExit(f"image id {path.stem!r} is in two files: {images[path.stem]} and {path}")
            images[path.stem] = path
    if not images:
        raise SystemExit(f"no {'/'.join(IMAGE_SUFFIXES)} images in {', '.join(map(str, folders))}")
    return images


def grid_side(n_boxes: int) -> int:
    """Returns the side of the square grid of `n_boxes` cells."""
    side = round(n_boxes**0.5)
    if side * side != n_boxes:
        raise SystemExit(f"--boxes must be a square number (the boxes are grid cells), got {n_boxes}")
    return side


def cell_boxes(width: int, height: int, side: int) -> np.ndarray:
    """Returns the [side*side, 4] pixel boxes (x1, y1, x2, y2) of a side x side grid over the image, row by row."""
    xs, ys = np.linspace(0, width, side + 1), np.linspace(0, height, side + 1)
    return np.array([[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(side) for c in range(side)], dtype=np.float32)


def pixel_cell_features(rgb: np.ndarray, side: int) -> np.ndarray:
    """Returns the [side*side, 21] raw descriptors of the cells of an RGB image (values 0..1, side*32 pixels
    square): colour mean and spread, RGB-cube histogram, ink per cell quarter, mean gradients, ink fill."""
    cell = rgb.shape[0] // side

    def per_cell(values: np.ndarray) -> np.ndarray:  # [S, S, ...] -> [cells, cell*cell, ...], cells row by row
        shaped = values.reshape(side, cell, side, cell, *values.shape[2:]).swapaxes(1, 2)
        return shaped.reshape(side * side, cell * cell, *values.shape[2:])

    pixels = per_cell(rgb)
    corner = (pixels > 0.5).astype(np.int64) @ np.array([4, 2, 1])
    histogram = (corner[..., None] == np.arange(8)).mean(axis=1)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    ink = np.abs(rgb - np.median(border, axis=0)).max(axis=2) > 0.2
    half = cell // 2
    quarters = ink.reshape(side, 2, half, side, 2, half).mean(axis=(2, 5)).transpose(0, 2, 1, 3)
    # How much of the ink's bounding box the ink fills: about 1 for a square, 0.79 for a circle, 0.5 for a triangle.
    cell_ink = per_cell(ink).reshape(side * side, cell, cell)

    def span(inked: np.ndarray) -> np.ndarray:  # [cells, cell] -> first to last inked index, inclusive
        return cell - inked.argmax(axis=1) - inked[:, ::-1].argmax(axis=1)

    box_area = span(cell_ink.any(axis=2)) * span(cell_ink.any(axis=1))
    fill = cell_ink.sum(axis=(1, 2)) / box_area  # an empty cell: 0 / cell**2
    gray = rgb.mean(axis=2)
    dx = np.abs(np.diff(gray, axis=1, append=gray[:, -1:]))
    dy = np.abs(np.diff(gray, axis=0, append=gray[-1:]))
    return np.concatenate(
        [
            pixels.mean(axis=1),
            pixels.std(axis=1),
            histogram,
            quarters.reshape(side * side, 4),
            per_cell(dx).mean(axis=1)[:, None],
            per_cell(dy).mean(axis=1)[:, None],
            fill[:, None],
        ],
        axis=1,
    )


def pixel_backbone(n_boxes: int, dim: int, seed: int) -> Callable[[list[Image.Image]], list[np.ndarray]]:
    """Returns the `pixels` extractor: images -> [n_boxes, dim] float32 features each."""
    side = grid_side(n_boxes)
    projection = np.random.default_rng(seed).standard_normal((RAW_PIXEL_FEATURES, dim)) / RAW_PIXEL_FEATURES**0.5

    def extract(images: list[Image.Image]) -> list[np.ndarray]:
        out = []
        for image in images:
            size = side * CELL_PIXELS
            rgb = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255
            out.append((pixel_cell_features(rgb, side) @ projection).astype(np.float32))
        return out

    return extract


def load_clip_rn101(device: str) -> Any:
    """Returns CLIP RN101's image tower in eval mode, from openai's `clip` package or `open_clip`; stops with a
    clear message when neither is installed or the weights cannot be loaded (e.g. offline)."""
    try:
        import clip  # openai/CLIP

        def load() -> Any:
            return clip.load("RN101", device=device, jit=False)[0]
    except ImportError:
        try:
            import open_clip
        except ImportError:
            raise SystemExit(CLIP_UNAVAILABLE) from None

        def load() -> Any:
            return open_clip.create_model("RN101", pretrained="openai", device=device)

    try:
        model = load()
    except Exception as err:  # a download or cache failure surfaces as many exception types
        raise SystemExit(
            f"could not load the CLIP RN101 weights ({type(err).__name__}: {err}). {CLIP_UNAVAILABLE}"
        ) from err
    return model.visual.float().eval()


def clip_backbone(n_boxes: int, device: str) -> Callable[[list[Image.Image]], list[np.ndarray]]:
    """Returns the `clip-rn101` extractor: images -> [n_boxes, 2048] float32 grid features each."""
    import torch

    grid_side(n_boxes)
    visual = load_clip_rn101(device)
    captured: dict[str, Any] = {}
    # The last conv stage's output, before CLIP's attention pooling: what VL-Adapter's modified encode_image returns.
    visual.layer4.register_forward_hook(lambda module, inputs, output: captured.__setitem__("grid", output))
    cells = cell_boxes(CLIP_GRID, CLIP_GRID, CLIP_GRID)  # placeholder boxes; only the features are pooled here

    def extract(images: list[Image.Image]) -> list[np.ndarray]:
        batch = np.stack(
            [
                (
                    np.asarray(im.resize((CLIP_SIZE, CLIP_SIZE), Image.Resampling.BICUBIC), dtype=np.float32) / 255
                    - CLIP_MEAN
                )
                / CLIP_STD
                for im in images
            ]
        ).transpose(0, 3, 1, 2)
        with torch.no_grad():
            visual(torch.from_numpy(batch).to(device))
        grids = captured["grid"].float().cpu().numpy()  # [B, 2048, 7, 7]
        out = []
        for grid in grids:
            features = grid.reshape(CLIP_DIM, -1).T  # [49, 2048], cells row by row
            if n_boxes != len(features):
                features, _ = downsample_grid(features, cells, n_boxes)
            out.append(np.ascontiguousarray(features, dtype=np.float32))
        return out

    return extract


def extract_features(
    images: dict[str, Path],
    output: Path,
    extract: Callable[[list[Image.Image]], list[np.ndarray]],
    n_boxes: int,
    batch_size: int,
    attributes: dict[str, Any],
) -> None:
    """Writes every image's features, grid-cell boxes and size to `output` (through a temporary file, so an
    interrupted run leaves no partial file behind)."""
    side = grid_side(n_boxes)
    output.parent.mkdir(parents=True, exist_ok=True)
    ids = list(images)
    with atomic_path(output) as partial, h5py.File(partial, "w") as f:
        f.attrs.update(attributes)
        for start in range(0, len(ids), batch_size):
            batch_ids = ids[start : start + batch_size]
            batch = []
            for image_id in batch_ids:
                with Image.open(images[image_id]) as image:
                    batch.append(image.convert("RGB"))
            for image_id, image, features in zip(batch_ids, batch, extract(batch), strict=True):
                group = f.create_group(image_id)
                group["features"] = features
                group["boxes"] = cell_boxes(image.width, image.height, side)
                group["img_w"] = image.width
                group["img_h"] = image.height


def main(argv: Sequence[str] | None = None) -> None:
    """Parses the command line and writes the feature file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="image folders (not recursive)")
    parser.add_argument("--output", type=Path, required=True, help="the HDF5 file to write")
    parser.add_argument("--backbone", choices=("pixels", "clip-rn101"), default="pixels")
    parser.add_argument("--boxes", type=int, default=36, help="grid cells per image (a square number)")
    parser.add_argument("--dim", type=int, help=f"feature size: pixels only (default 128); clip-rn101 is {CLIP_DIM}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pixels backbone's fixed projection")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="clip-rn101 only: torch device")
    args = parser.parse_args(argv)
    images = find_images(args.images)
    start = time.perf_counter()
    if args.backbone == "pixels":
        dim = args.dim or 128
        if dim < 1:
            parser.error(f"--dim must be positive, got {dim}")
        extract = pixel_backbone(args.boxes, dim, args.seed)
        attributes = {"seed": args.seed}
    else:
        if args.dim not in (None, CLIP_DIM):
            parser.error(f"clip-rn101 features are {CLIP_DIM}-d; --dim {args.dim} is for the pixels backbone")
        dim = CLIP_DIM
        extract = clip_backbone(args.boxes, args.device)
        attributes = {"image_size": CLIP_SIZE}
    attributes.update(
        backbone=args.backbone, n_boxes=args.boxes, dim=dim, layout="<img_id>/{features,boxes,img_w,img_h}"
    )
    extract_features(images, args.output, extract, args.boxes, args.batch_size, attributes)
    print(
        f"{len(images)} images -> {args.output} ({args.backbone}, {args.boxes} boxes x {dim}) "
        f"in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
