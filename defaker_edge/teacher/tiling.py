"""InternVL dynamic high-resolution tiling (DESIGN §3: the teacher prepares images with it).

The image is resized to the candidate grid (cols x rows of S-pixel tiles, min <= cols*rows <= max)
whose aspect ratio is closest to the image's, then cut row-major into S x S tiles, plus an S x S
thumbnail of the whole image when there is more than one tile. A tie in aspect distance goes to the
later (larger) grid when the image has more than half that grid's pixel area, so large images get
more tiles. Candidates are ordered by tile count, then (cols, rows), which makes the choice
deterministic. Resizing is bicubic; normalization reuses runtime.tiling.normalize (ImageNet).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def candidate_grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    grids = {(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if min_num <= i * j <= max_num}
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0], g[1]))


def choose_grid(width: int, height: int, image_size: int, min_num: int = 1, max_num: int = 12) -> tuple[int, int]:
    """(cols, rows) for a width x height image."""
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_num, max_num):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def _resize(img: np.ndarray, w: int, h: int, resample=Image.BICUBIC) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), resample))


def dynamic_tiles(img: np.ndarray, image_size: int, min_num: int = 1, max_num: int = 12,
                  use_thumbnail: bool = True) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [N, S, S, 3]: row-major tiles (+ thumbnail when N > 1)."""
    h, w = img.shape[:2]
    cols, rows = choose_grid(w, h, image_size, min_num, max_num)
    big = _resize(img, cols * image_size, rows * image_size)
    s = image_size
    tiles = [big[r * s:(r + 1) * s, c * s:(c + 1) * s] for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(_resize(img, s, s))
    return np.stack(tiles)


def sam_input(img: np.ndarray, size: int) -> np.ndarray:
    """SAM2's own input: a direct (bilinear) resize to size x size, no aspect keeping; uint8 [S, S, 3]."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return _resize(img, size, size, Image.BILINEAR)
