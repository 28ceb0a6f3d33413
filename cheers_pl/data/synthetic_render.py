"""Synthetic compositional world: crisp rasterisation of a scene (shapes, textures, digit glyphs).

No anti-aliasing: every pixel is exactly the background, an object's base colour, its texture variant or the
digit ink, so `cheers_pl.eval.scene_parser` can invert the rendering exactly. The geometry helpers
(`shape_mask`, `texture_mask`, `glyph_array`, `glyph_offset`) are shared with the parser.

Shapes live in their bounding box of half-extent (rx, ry) around the centre; with offsets (dx, dy):
circle (dx/rx)^2 + (dy/ry)^2 <= 1; square |dx| <= rx, |dy| <= ry; diamond |dx|/rx + |dy|/ry <= 1;
triangle pointing up (apex at dy = -ry, base at dy = +ry); cross with arms 2/5 of the box wide.
Textures are anchored at the object centre with period p (`SyntheticConfig.texture_period`), half h = p/2:
stripes = horizontal bands of h rows; checks = h x h checkerboard; dots = h x h dots on a p grid.
Digits use a built-in 3x5 bitmap font scaled by `SyntheticConfig.glyph_scale`, in black ink on a plate of
untextured base colour (glyph box plus one pixel), placed from the centre downwards where the plate fits the shape.

Shape legend: H, W image height/width; h, w glyph rows/cols.
"""

from functools import lru_cache

import numpy as np

from cheers_pl.data.synthetic_scene import INK_RGB, PALETTE, Scene, SceneObject, SyntheticConfig, variant_rgb

_FONT = {
    0: ("###", "#.#", "#.#", "#.#", "###"),
    1: (".#.", "##.", ".#.", ".#.", "###"),
    2: ("###", "..#", "###", "#..", "###"),
    3: ("###", "..#", "###", "..#", "###"),
    4: ("#.#", "#.#", "###", "..#", "..#"),
    5: ("###", "#..", "###", "..#", "###"),
    6: ("###", "#..", "###", "#.#", "###"),
    7: ("###", "..#", "..#", "..#", "..#"),
    8: ("###", "#.#", "###", "#.#", "###"),
    9: ("###", "#.#", "###", "..#", "###"),
}


def glyph_array(digit: int) -> np.ndarray:
    """The 5x3 boolean bitmap of `digit` (every glyph spans its full 5x3 box)."""
    if digit not in _FONT:
        raise ValueError(f"digit must be an int in 0..9, got {digit!r}")
    return np.array([[c == "#" for c in row] for row in _FONT[digit]], dtype=bool)


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """Boolean mask of `shape` at offsets (dx, dy) from its centre; exact arithmetic for (half-)integers."""
    ax, ay = np.abs(dx), np.abs(dy)
    in_box = (ax <= rx) & (ay <= ry)
    if shape == "circle":
        return (dx * ry) ** 2 + (dy * rx) ** 2 <= (rx * ry) ** 2
    if shape == "square":
        return in_box
    if shape == "diamond":
        return ax * ry + ay * rx <= rx * ry
    if shape == "triangle":
        return (dy <= ry) & (2 * ax * ry <= (dy + ry) * rx)
    if shape == "cross":
        return in_box & ((5 * ax <= 2 * rx) | (5 * ay <= 2 * ry))
    raise ValueError(f"unknown shape {shape!r}")


def texture_mask(texture: str, dx: np.ndarray, dy: np.ndarray, period: int) -> np.ndarray:
    """Boolean mask of texture (variant-colour) pixels at integer offsets (dx, dy) from the object centre."""
    half = period // 2
    if texture == "solid":
        return np.zeros(np.broadcast(dx, dy).shape, dtype=bool)
    if texture == "stripes":
        return np.broadcast_to((dy // half) % 2 == 1, np.broadcast(dx, dy).shape)
    if texture == "checks":
        return ((dx // half) + (dy // half)) % 2 == 1
    if texture == "dots":
        return (dx % period < half) & (dy % period < half)
    raise ValueError(f"unknown texture {texture!r}")


@lru_cache(maxsize=64)
def glyph_offset(shape: str, radius: int, scale: int) -> tuple[int, int] | None:
    """Top-left (row, col) offset from the object centre of a digit glyph whose plate fits the shape, or None."""
    gh, gw = 5 * scale, 3 * scale
    col0 = -(gw // 2)
    for row0 in range(-(gh // 2), radius - gh + 1):
        # the glyph plus a one-pixel plate must lie inside the shape, so ink never touches the outline
        dy, dx = np.mgrid[row0 - 1 : row0 + gh + 1, col0 - 1 : col0 + gw + 1]
        if shape_mask(shape, dx, dy, radius, radius).all():
            return row0, col0
    return None


def object_layers(obj: SceneObject, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(body, texture, ink) boolean masks of `obj` over its (2r+1)^2 bounding box."""
    r = cfg.radius(obj.size)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    body = shape_mask(obj.shape, dx, dy, r, r)
    tex = texture_mask(obj.texture, dx, dy, cfg.texture_period) & body
    ink = np.zeros_like(body)
    if obj.digit is not None:
        offset = glyph_offset(obj.shape, r, cfg.glyph_scale)
        if offset is None:
            raise ValueError(f"digit does not fit a {obj.size} {obj.shape} at image_size {cfg.image_size}")
        s = cfg.glyph_scale
        top, left = offset[0] + r, offset[1] + r
        glyph_hw = np.kron(glyph_array(obj.digit), np.ones((s, s), dtype=bool))
        gh, gw = glyph_hw.shape
        ink[top : top + gh, left : left + gw] = glyph_hw
        tex[top - 1 : top + gh + 1, left - 1 : left + gw + 1] = False  # the plate
    return body, tex, ink


def object_bbox(obj: SceneObject, cfg: SyntheticConfig) -> tuple[int, int, int, int]:
    """Inclusive pixel bounding box (x0, y0, x1, y1) of `obj`."""
    r = cfg.radius(obj.size)
    return obj.x - r, obj.y - r, obj.x + r, obj.y + r


def render(scene: Scene, cfg: SyntheticConfig) -> np.ndarray:
    """Rasterise `scene` into a uint8 H x W x 3 image (no anti-aliasing)."""
    size = scene.image_size
    if size != cfg.image_size:
        raise ValueError(f"scene.image_size {size} differs from cfg.image_size {cfg.image_size}")
    img_HW3 = np.empty((size, size, 3), dtype=np.uint8)
    img_HW3[:] = cfg.background
    for obj in scene.objects:
        if obj.color not in PALETTE:
            raise ValueError(f"unknown color {obj.color!r}")
        x0, y0, x1, y1 = object_bbox(obj, cfg)
        if x0 < 0 or y0 < 0 or x1 >= size or y1 >= size:
            raise ValueError(f"object {obj} leaves the {size}x{size} image")
        body, tex, ink = object_layers(obj, cfg)
        patch = img_HW3[y0 : y1 + 1, x0 : x1 + 1]
        patch[body] = PALETTE[obj.color]
        patch[tex] = variant_rgb(PALETTE[obj.color])
        patch[ink] = INK_RGB
    return img_HW3
