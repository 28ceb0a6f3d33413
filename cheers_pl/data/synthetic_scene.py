"""Synthetic compositional world: palette, configuration and the scene description.

A scene is a few non-overlapping, axis-aligned coloured shapes on a plain background. Every object has a
shape, a colour, a size, a texture and (large objects only) an optional digit glyph. Everything here is plain
data; sampling lives in `synthetic.py`, pixels in `synthetic_render.py`, language in `synthetic_text.py`.

Colour scheme (chosen so that nearest-palette classification of every pixel is unambiguous):
- object base colour: `PALETTE[color]`;
- texture pixels (stripes / checks / dots): the base colour mixed 50 % with black (`variant_rgb`), so the
  object's colour stays recoverable from either kind of pixel;
- digit ink: black (`INK_RGB`), drawn on a plate of untextured base colour;
- background: `SyntheticConfig.background` (light grey by default).
"""

from dataclasses import asdict, dataclass, fields

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "purple": (150, 50, 200),
    "orange": (240, 120, 20),
    "cyan": (30, 190, 200),
}
INK_RGB: tuple[int, int, int] = (0, 0, 0)
KNOWN_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
KNOWN_TEXTURES: tuple[str, ...] = ("solid", "stripes", "checks", "dots")
# Object half-extent (bounding box is 2r+1 pixels) as a fraction of the image size: 5 px / 10 px at 64 px.
SIZE_RADIUS_FRAC: dict[str, float] = {"small": 5 / 64, "large": 10 / 64}
SPLITS: tuple[str, ...] = ("train", "val", "test")
REGIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
MIN_BACKGROUND_DIST = 60.0


def variant_rgb(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Texture colour of an object: its base colour mixed 50 % with black."""
    return (rgb[0] // 2, rgb[1] // 2, rgb[2] // 2)


@dataclass
class SyntheticConfig:
    """The synthetic world: vocabulary, object counts, held-out compositions and the master seed."""

    image_size: int = 64  # pixels per side; tiny 64, any size >= 64 works (radii/texture/glyphs scale with it)
    min_objects: int = 1
    max_objects: int = 4
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond")  # subset of KNOWN_SHAPES
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "cyan")  # PALETTE names
    sizes: tuple[str, ...] = ("small", "large")  # digits are drawn on "large" objects only
    textures: tuple[str, ...] = ("solid", "stripes", "checks", "dots")
    digit_prob: float = 0.3  # probability that a large object carries a digit 0-9
    background: tuple[int, int, int] = (240, 240, 240)
    # colour-shape pairs that never occur in train (compositional generalisation)
    held_out_pairs: tuple[tuple[str, str], ...] = (
        ("red", "triangle"),
        ("blue", "circle"),
        ("green", "square"),
        ("yellow", "diamond"),
    )
    held_out_counts: tuple[int, ...] = (4,)  # object counts that never occur in train
    eval_held_out_prob: float = 0.5  # fraction of val/test scenes built around one held-out pair or count
    margin: int = 2  # minimum gap in pixels between object bounding boxes (and to the image border)
    seed: int = 0

    def __post_init__(self) -> None:
        # YAML / OmegaConf hand over lists; normalise to hashable tuples.
        self.shapes = tuple(self.shapes)
        self.colors = tuple(self.colors)
        self.sizes = tuple(self.sizes)
        self.textures = tuple(self.textures)
        self.background = tuple(int(c) for c in self.background)
        self.held_out_pairs = tuple(tuple(p) for p in self.held_out_pairs)
        self.held_out_counts = tuple(int(c) for c in self.held_out_counts)
        self._validate()

    def _validate(self) -> None:
        if self.image_size < 64:
            raise ValueError(f"image_size must be >= 64 (digits must fit large objects), got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        for name, values, known in (
            ("shapes", self.shapes, KNOWN_SHAPES),
            ("colors", self.colors, tuple(PALETTE)),
            ("sizes", self.sizes, tuple(SIZE_RADIUS_FRAC)),
            ("textures", self.textures, KNOWN_TEXTURES),
        ):
            bad = [v for v in values if v not in known]
            if not values or bad or len(set(values)) != len(values):
                raise ValueError(f"{name} must be a non-empty list of distinct values from {known}, got {values}")
        if not 0.0 <= self.digit_prob <= 1.0:
            raise ValueError(f"digit_prob must be in [0, 1], got {self.digit_prob}")
        if not 0.0 <= self.eval_held_out_prob <= 1.0:
            raise ValueError(f"eval_held_out_prob must be in [0, 1], got {self.eval_held_out_prob}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.margin < 1:
            raise ValueError(f"margin must be >= 1 so objects stay separable, got {self.margin}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background must be 3 ints in [0, 255], got {self.background}")
        for ref in reference_colors(self.colors):
            dist = sum((a - b) ** 2 for a, b in zip(ref, self.background, strict=True)) ** 0.5
            if dist < MIN_BACKGROUND_DIST:
                raise ValueError(f"background {self.background} is too close to object colour {ref}")
        for pair in self.held_out_pairs:
            if len(pair) != 2 or pair[0] not in self.colors or pair[1] not in self.shapes:
                raise ValueError(f"held_out_pairs entry {pair} must be (color in colors, shape in shapes)")
        for shape in self.shapes:
            if all((c, shape) in self.held_out_pairs for c in self.colors):
                raise ValueError(f"held_out_pairs hold out every colour of shape {shape!r}; train would lack it")
        for count in self.held_out_counts:
            if not self.min_objects <= count <= self.max_objects:
                raise ValueError(f"held_out_counts entry {count} is outside [min_objects, max_objects]")
        if not self.train_counts:
            raise ValueError(f"held_out_counts {self.held_out_counts} leave no object count for train")

    def radius(self, size: str) -> int:
        """Half-extent in pixels of an object of `size` (its bounding box is 2r+1 pixels wide)."""
        return round(SIZE_RADIUS_FRAC[size] * self.image_size)

    @property
    def texture_period(self) -> int:
        """Pixels per texture period (stripes / checks / dots); 4 at 64 px."""
        return 2 * max(2, self.image_size // 32)

    @property
    def glyph_scale(self) -> int:
        """Pixels per cell of the 3x5 digit font; 2 at 64 px (a 6x10 glyph)."""
        return max(2, self.image_size // 32)

    @property
    def digit_size(self) -> str:
        """The largest configured size; only objects of this size carry digits."""
        return max(self.sizes, key=self.radius)

    @property
    def train_counts(self) -> tuple[int, ...]:
        """Object counts allowed in train (and in in-distribution val/test scenes)."""
        return tuple(n for n in range(self.min_objects, self.max_objects + 1) if n not in self.held_out_counts)

    def is_held_out_pair(self, color: str, shape: str) -> bool:
        """Whether the colour-shape pair never occurs in train."""
        return (color, shape) in self.held_out_pairs


def reference_colors(colors: tuple[str, ...]) -> list[tuple[int, int, int]]:
    """Every colour an object pixel can have: base colours, their texture variants and the digit ink."""
    return [PALETTE[c] for c in colors] + [variant_rgb(PALETTE[c]) for c in colors] + [INK_RGB]


def grid_cell(x: float, y: float, image_size: int) -> tuple[int, int]:
    """(column, row) in 0..2 of the point (x, y) on a 3x3 grid of image thirds."""
    return int(x >= image_size / 3) + int(x >= 2 * image_size / 3), int(y >= image_size / 3) + int(
        y >= 2 * image_size / 3
    )


def region_cell(region: str) -> tuple[int, int]:
    """(column, row) in 0..2 of a region name from `REGIONS`."""
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    col = 0 if "left" in region else 2 if "right" in region else 1
    row = 0 if "top" in region else 2 if "bottom" in region else 1
    return col, row


def region_of(x: float, y: float, image_size: int) -> str:
    """One of `REGIONS`: the cell of a 3x3 grid (thirds of the image) that contains the point (x, y)."""
    col, row = grid_cell(x, y, image_size)
    col_name, row_name = ("left", "center", "right")[col], ("top", "middle", "bottom")[row]
    if row_name == "middle":
        return col_name
    return row_name if col_name == "center" else f"{row_name} {col_name}"


def region_phrase(region: str) -> str:
    """Prepositional phrase for a region: 'at the top left', 'on the left', 'in the center'."""
    if region == "center":
        return "in the center"
    if region in ("left", "right"):
        return f"on the {region}"
    return f"at the {region}"


@dataclass
class SceneObject:
    """One object: centre (x, y) in pixels, attributes by name, digit 0-9 or None."""

    shape: str
    color: str
    size: str
    x: int
    y: int
    texture: str = "solid"
    digit: int | None = None

    def to_json(self) -> dict:
        """Plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "SceneObject":
        """Inverse of `to_json`; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown SceneObject keys {sorted(unknown)}")
        return cls(**data)

    def region(self, image_size: int) -> str:
        """Region of the object's centre (see `region_of`)."""
        return region_of(self.x, self.y, image_size)


@dataclass
class Scene:
    """A full scene: its objects and the image side length they are placed in."""

    objects: list[SceneObject]
    image_size: int

    def to_json(self) -> dict:
        """Plain JSON-serialisable dict."""
        return {"image_size": self.image_size, "objects": [o.to_json() for o in self.objects]}

    @classmethod
    def from_json(cls, data: dict) -> "Scene":
        """Inverse of `to_json`."""
        return cls(objects=[SceneObject.from_json(o) for o in data["objects"]], image_size=int(data["image_size"]))
