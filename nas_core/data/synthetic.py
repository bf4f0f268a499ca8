"""A seeded painter of street-like scenes with exact Cityscapes label ids, the default stand-in for Cityscapes.
Shapes are PIL polygons (as cityscapesscripts' json2labelImg draws labels) in a segment map; colours and
textures are applied per segment with vectorised numpy, so a frame costs milliseconds."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from nas_core.data.labels import LABEL_ID

PLAIN, WINDOWS, FOLIAGE, TILES, SKY, ASPHALT = range(6)
INSTANCE_CLASSES = ("person", "car")  # the drawn classes that have instances in Cityscapes

PALETTES = {  # base colours per class; every segment jitters its own copy, and palettes overlap on purpose
    "sky": [(90, 140, 200), (130, 170, 220), (180, 185, 195), (110, 150, 185)],
    "building": [(120, 120, 120), (180, 160, 130), (140, 75, 55), (200, 195, 185), (90, 95, 105)],
    "vegetation": [(60, 110, 40), (90, 140, 50), (40, 80, 35), (120, 120, 50)],
    "road": [(80, 80, 85), (100, 98, 95), (65, 68, 72)],
    "sidewalk": [(170, 150, 160), (150, 150, 145), (190, 175, 170)],
    "car": [(170, 30, 30), (30, 50, 140), (25, 25, 25), (220, 220, 220), (150, 150, 155), (40, 90, 50), (210, 180, 40)],
    "pole": [(120, 120, 120), (70, 80, 70), (150, 150, 140)],
    "traffic sign": [(200, 30, 30), (30, 70, 180), (230, 200, 40), (235, 235, 235)],
    "skin": [(230, 190, 160), (180, 130, 100), (110, 75, 55)],
}


class _Canvas:
    """Segment map being drawn plus one table row per segment (label id, instance id, colour, texture)."""

    def __init__(self, size: tuple[int, int], rng: np.random.Generator) -> None:
        self.height, self.width = size
        self.rng = rng
        self.image = Image.new("I", (self.width, self.height), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.rows: list[tuple[int, int, tuple[float, float, float], int, float, float]] = []
        self.instances = {name: 0 for name in INSTANCE_CLASSES}

    def segment(self, name: str, texture: int = PLAIN, colour: str | None = None,
                period: tuple[float, float] = (8, 8), instance: bool = False, part_of: int | None = None,
                rgb: tuple[float, float, float] | None = None) -> int:
        """A new segment of class `name` coloured from palette `colour` (default: the class's own); returns its index.

        `instance` starts a new instance; `part_of` (a segment index) joins that segment's instance instead.
        """
        label_id = LABEL_ID[name]
        instance_id = label_id
        if instance:
            instance_id = label_id * 1000 + self.instances[name]
            self.instances[name] += 1
        if part_of is not None:
            instance_id = self.rows[part_of][1]
        palette = PALETTES[colour or name]
        # drawn even when `rgb` overrides it, so each frame's random stream does not depend on such details
        base = np.array(palette[self.rng.integers(len(palette))], dtype=float) + self.rng.normal(0, 12, 3)
        self.rows.append((label_id, instance_id, rgb or tuple(np.clip(base, 0, 255)), texture, *period))
        return len(self.rows) - 1

    def polygon(self, seg: int, points) -> None:
        self.draw.polygon([(float(x), float(y)) for x, y in points], fill=seg)

    def ellipse(self, seg: int, cx: float, cy: float, rx: float, ry: float) -> None:
        self.draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=seg)

    def rect(self, seg: int, x0: float, y0: float, x1: float, y1: float) -> None:
        self.polygon(seg, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _noise(rng: np.random.Generator, size: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] with features about `cell` pixels wide (bilinear upsampling of random cells)."""
    height, width = size
    coarse = rng.random((max(2, int(height / cell) + 2), max(2, int(width / cell) + 2))).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BILINEAR))


def _draw_layout(c: _Canvas) -> None:
    rng, h, w = c.rng, c.height, c.width
    horizon = h * rng.uniform(0.36, 0.5)
    vx = w * rng.uniform(0.35, 0.65)
    road_half = w * rng.uniform(0.45, 0.8)  # half width of the road at the bottom row
    walk_half = road_half * rng.uniform(1.5, 2.2)
    top_half = w * 0.01

    def depth(y: float) -> float:  # 0 at the horizon, 1 at the bottom row
        return (y - horizon) / (h - horizon)

    def edge(y: float, half: float, side: int) -> float:
        return vx + side * (top_half + (half - top_half) * depth(y))

    def metre(y: float) -> float:  # pixels per metre at ground row y, taking the road as 8 m wide
        return 2 * (top_half + (road_half - top_half) * depth(y)) / 8.0

    c.rect(c.segment("sky", SKY), 0, 0, w, h)
    for side in (-1, 1):  # facades along both sides converge to the vanishing point
        x = vx + side * w * rng.uniform(0.02, 0.08)
        while 0 <= x <= w:
            x_next = x + side * w * rng.uniform(0.06, 0.25)
            if rng.random() < 0.8:
                rise = h * rng.uniform(0.4, 1.6)
                tops = [horizon - rise * abs(xx - vx) / w - h * 0.03 for xx in (x, x_next)]
                kind = ("building", WINDOWS) if rng.random() < 0.8 else ("vegetation", FOLIAGE)
                period = (rng.uniform(0.01, 0.03) * w, rng.uniform(0.02, 0.05) * h)
                seg = c.segment(kind[0], kind[1], period=period)
                c.polygon(seg, [(x, tops[0]), (x_next, tops[1]), (x_next, h), (x, h)])
            x = x_next
    tiles = (rng.uniform(0.02, 0.05) * w, rng.uniform(0.02, 0.04) * h)
    walk = c.segment("sidewalk", TILES, period=tiles)
    c.polygon(walk, [(edge(horizon, walk_half, -1), horizon), (edge(horizon, walk_half, 1), horizon),
                     (edge(h, walk_half, 1), h), (edge(h, walk_half, -1), h)])
    road = c.segment("road", ASPHALT)
    c.polygon(road, [(edge(horizon, road_half, -1), horizon), (edge(horizon, road_half, 1), horizon),
                     (edge(h, road_half, 1), h), (edge(h, road_half, -1), h)])
    marking = c.segment("road", colour="sidewalk")  # white-ish paint is still road
    for t in np.arange(rng.uniform(0, 0.2), 1.0, 0.2):
        y0, y1 = horizon + (h - horizon) * t ** 2, horizon + (h - horizon) * (t + 0.1) ** 2
        c.polygon(marking, [(vx - metre(y0) * 0.1, y0), (vx + metre(y0) * 0.1, y0),
                            (vx + metre(y1) * 0.1, y1), (vx - metre(y1) * 0.1, y1)])

    objects = []  # (ground row, painter); drawn far to near so nearer objects occlude
    for _ in range(rng.integers(2, 7)):  # cars on the road
        y = horizon + (h - horizon) * rng.uniform(0.08, 0.85) ** 1.3
        x = rng.uniform(edge(y, road_half, -1), edge(y, road_half, 1))
        objects.append((y, lambda y=y, x=x: _car(c, x, y, metre(y))))
    for kind, count in (("person", rng.integers(1, 8)), ("pole", rng.integers(1, 5)), ("tree", rng.integers(0, 4))):
        for _ in range(count):
            y = horizon + (h - horizon) * rng.uniform(0.05, 0.8) ** 1.3
            side = rng.choice([-1, 1])
            near, far = edge(y, road_half, side), edge(y, walk_half, side)
            x = near + (far - near) * (rng.uniform(0.05, 0.3) if kind == "pole" else rng.uniform(0.1, 0.9))
            painter = {"person": _person, "pole": _pole, "tree": _tree}[kind]
            objects.append((y, lambda y=y, x=x, painter=painter: painter(c, x, y, metre(y))))
    for _, paint in sorted(objects, key=lambda item: item[0]):
        paint()
    if rng.random() < 0.5:  # the ego vehicle's bonnet, ignored in evaluation as in real Cityscapes frames
        c.ellipse(c.segment("ego vehicle", colour="car"), w / 2, h * 1.08, w * 0.7, h * rng.uniform(0.1, 0.16))


def _car(c: _Canvas, x: float, y: float, m: float) -> None:
    width, height = 1.8 * m, 1.5 * m
    body = c.segment("car", instance=True)
    window = c.segment("car", colour="road", part_of=body)
    tyre = c.segment("car", colour="road", part_of=body, rgb=(20.0, 20.0, 20.0))
    for wx in (x - width * 0.4, x + width * 0.3):
        c.rect(tyre, wx, y - 0.25 * m, wx + width * 0.1, y)
    c.rect(body, x - width / 2, y - height * 0.6, x + width / 2, y - 0.2 * m)
    c.polygon(body, [(x - width * 0.42, y - height * 0.6), (x + width * 0.42, y - height * 0.6),
                     (x + width * 0.32, y - height), (x - width * 0.32, y - height)])
    c.polygon(window, [(x - width * 0.36, y - height * 0.62), (x + width * 0.36, y - height * 0.62),
                       (x + width * 0.28, y - height * 0.94), (x - width * 0.28, y - height * 0.94)])


def _person(c: _Canvas, x: float, y: float, m: float) -> None:
    tall = 1.75 * m * c.rng.uniform(0.85, 1.1)
    clothes = c.segment("person", instance=True, colour=["car", "building", "vegetation"][c.rng.integers(3)])
    head = c.segment("person", colour="skin", part_of=clothes)
    legs = c.segment("person", colour="road", part_of=clothes)
    half = tall * 0.13
    c.polygon(legs, [(x - half, y), (x - half * 0.2, y - tall * 0.48), (x + half * 0.2, y - tall * 0.48),
                     (x + half, y)])
    c.polygon(clothes, [(x - half, y - tall * 0.45), (x + half, y - tall * 0.45), (x + half * 0.8, y - tall * 0.85),
                        (x - half * 0.8, y - tall * 0.85)])
    c.ellipse(head, x, y - tall * 0.92, tall * 0.07, tall * 0.08)


def _pole(c: _Canvas, x: float, y: float, m: float) -> None:
    tall, half = m * c.rng.uniform(3.5, 6.0), max(0.6, 0.08 * m)
    c.rect(c.segment("pole"), x - half, y - tall, x + half, y)
    if c.rng.random() < 0.7:
        sign, r = c.segment("traffic sign"), 0.35 * m
        cy = y - tall + r
        shape = c.rng.integers(3)
        if shape == 0:
            c.ellipse(sign, x, cy, r, r)
        elif shape == 1:
            c.rect(sign, x - r, cy - r, x + r, cy + r)
        else:
            c.polygon(sign, [(x - r, cy - r), (x + r, cy - r), (x, cy + r)])


def _tree(c: _Canvas, x: float, y: float, m: float) -> None:
    tall = m * c.rng.uniform(4.0, 8.0)
    c.rect(c.segment("vegetation", colour="building"), x - 0.15 * m, y - tall * 0.6, x + 0.15 * m, y)
    crown = c.segment("vegetation", FOLIAGE)
    for _ in range(c.rng.integers(2, 5)):
        c.ellipse(crown, x + c.rng.normal(0, 0.6) * m, y - tall * c.rng.uniform(0.6, 0.85),
                  m * c.rng.uniform(1.0, 2.2), m * c.rng.uniform(1.0, 2.0))


def paint_street_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one frame.

    Returns:
        image (H, W, 3) uint8, labelIds (H, W) uint8 and instanceIds (H, W) uint16 in Cityscapes encoding
        (label id * 1000 + index for person and car, the label id elsewhere).
    """
    c = _Canvas(size, rng)
    _draw_layout(c)
    seg = np.asarray(c.image)
    label_id, instance_id, colour, texture, period_x, period_y = (np.array(col) for col in zip(*c.rows))
    tex = texture[seg]
    image = colour.astype(np.float32)[seg]  # (H, W, 3)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    px, py = period_x.astype(np.float32)[seg], period_y.astype(np.float32)[seg]
    shade = np.ones(size, dtype=np.float32)
    windows = (tex == WINDOWS) & (xx % px > 0.45 * px) & (yy % py > 0.4 * py)
    shade[windows] = rng.uniform(0.35, 0.7)
    shade[(tex == TILES) & ((xx % px < 1.2) | (yy % py < 1.2))] = 0.8
    fine = _noise(rng, size, max(2.0, size[1] / 170))
    shade = np.where(tex == FOLIAGE, shade * (0.6 + 0.8 * fine), shade)
    shade = np.where(tex == ASPHALT, shade * (0.9 + 0.2 * fine), shade)
    image *= shade[..., None]
    clouds = (tex == SKY) * np.clip(_noise(rng, size, size[1] / 8) * 1.6 - 0.6, 0, 1) * rng.uniform(0.3, 0.9)
    image += (255 - image) * clouds[..., None]
    light = 0.75 + 0.5 * _noise(rng, size, size[1] / 3)  # uneven illumination over the frame
    image = image * light[..., None] * rng.uniform(0.8, 1.2) + rng.normal(0, 6, (*size, 3)).astype(np.float32)
    return (np.clip(image, 0, 255).astype(np.uint8), label_id.astype(np.uint8)[seg],
            instance_id.astype(np.uint16)[seg])


def _near_edge(ids: np.ndarray, radius: int) -> np.ndarray:
    """True where a change of id lies within `radius` pixels (a box), via an integral image of the edges."""
    edge = np.zeros(ids.shape, dtype=bool)
    horizontal, vertical = ids[:, 1:] != ids[:, :-1], ids[1:] != ids[:-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:] |= vertical
    edge[:-1] |= vertical
    table = np.pad(edge.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    height, width = ids.shape
    y0 = np.clip(np.arange(height) - radius, 0, height)[:, None]
    y1 = np.clip(np.arange(height) + radius + 1, 0, height)[:, None]
    x0 = np.clip(np.arange(width) - radius, 0, width)[None]
    x1 = np.clip(np.arange(width) + radius + 1, 0, width)[None]
    return (table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]) > 0


def coarsen(label_ids: np.ndarray, instance_ids: np.ndarray, rng: np.random.Generator,
            drop: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Coarse annotation from a fine one: boundaries eroded to 'unlabeled' (id 0) and some instances left out.

    Like real gtCoarse polygons, what remains lies inside objects and whole objects may be missing.
    """
    uniform = ~_near_edge(instance_ids, radius=max(2, label_ids.shape[0] // 64))
    instances = np.unique(instance_ids[instance_ids >= 1000])
    dropped = instances[rng.random(instances.size) < drop]
    keep = uniform & ~np.isin(instance_ids, dropped)
    return np.where(keep, label_ids, 0).astype(np.uint8), np.where(keep, instance_ids, 0).astype(np.uint16)
