"""Drawing SynthAVS frames with exact instance maps.

Objects are drawn with hard edges (no anti-aliasing), in z order, then the occluder on top.
The same pass that paints a pixel writes its owner into the instance map, so a ground-truth
mask built from the map is exactly the set of pixels where the object shows.

Pixel (row y, column x) is sampled at its centre (x + 0.5, y + 0.5). Shapes are defined in
object-local coordinates (u, v) scaled by the radius, inside the unit disk, with v pointing
down like image rows.
"""
from __future__ import annotations

import numpy as np

from tasks.synthavs.scene import BackgroundSpec, Occluder, SceneObject, SceneSpec, level_envelope

OCCLUDER_ID = -1  # instance-map value of occluder pixels (0 = background, k + 1 = object k)
TEXTURE_DEPTH = 0.45  # how much darker the texture's dark parts are


# -- shapes ----------------------------------------------------------------------------------

def _star(u: np.ndarray, v: np.ndarray, points: int, inner: float, outer: float = 1.0,
          offset: float = -np.pi / 2) -> np.ndarray:
    """Inside a star (inner < outer * cos(pi/points)) or regular polygon (inner = that value).

    Folds the angle into one half-sector and tests the side of the edge outer-vertex -> inner-vertex.
    """
    rho = np.hypot(u, v)
    phi = np.mod(np.arctan2(v, u) - offset, 2 * np.pi / points)
    phi = np.minimum(phi, 2 * np.pi / points - phi)
    half = np.pi / points
    ax, ay = outer, 0.0
    bx, by = inner * np.cos(half), inner * np.sin(half)
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    cross_p = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    cross_o = (bx - ax) * (0 - ay) - (by - ay) * (0 - ax)
    return cross_p * cross_o >= 0  # on the same side of the edge as the centre


def _polygon(u, v, n: int, r: float = 0.95, offset: float = -np.pi / 2):
    """Inside a regular n-gon with circumradius r and a vertex at angle `offset`: the
    intersection of n half-planes (cheaper than the star test's angles)."""
    apothem = r * np.cos(np.pi / n)
    inside = np.ones(u.shape, dtype=bool)
    for k in range(n):
        a = offset + (2 * k + 1) * np.pi / n  # direction of edge k's midpoint
        inside &= u * np.cos(a) + v * np.sin(a) <= apothem
    return inside


def shape_inside(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """bool array: is local point (u, v) inside shape `name`; always within the unit disk."""
    au, av = np.abs(u), np.abs(v)
    r2 = u * u + v * v
    if name == "circle":
        m = r2 <= 0.9 ** 2
    elif name == "square":
        m = np.maximum(au, av) <= 0.7
    elif name == "triangle":
        m = _polygon(u, v, 3, r=1.0)
    elif name == "star":
        m = _star(u, v, 5, inner=0.42)
    elif name == "plus":
        m = ((au <= 0.28) & (av <= 0.9)) | ((av <= 0.28) & (au <= 0.9))
    elif name == "ring":
        m = (r2 <= 0.95 ** 2) & (r2 >= 0.55 ** 2)
    elif name == "crescent":
        m = (r2 <= 0.95 ** 2) & ((u - 0.45) ** 2 + (v + 0.1) ** 2 > 0.8 ** 2)
    elif name == "heart":
        x, y = 1.3 * u, 0.15 - 1.3 * v
        m = (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0
    elif name == "diamond":
        m = au / 0.75 + av / 0.95 <= 1.0
    elif name == "hexagon":
        m = _polygon(u, v, 6, offset=0.0)
    elif name == "ellipse":
        m = (u / 0.95) ** 2 + (v / 0.5) ** 2 <= 1.0
    elif name == "bar":
        m = (au <= 0.9) & (av <= 0.33)
    elif name == "arrow":
        shaft = (av <= 0.2) & (u >= -0.9) & (u <= 0.2)
        head = (u >= 0.2) & (u <= 0.95) & (av <= 0.6 * (0.95 - u) / 0.75)
        m = shaft | head
    elif name == "half_disk":
        m = (u * u + (v - 0.4) ** 2 <= 0.9 ** 2) & (v <= 0.4)
    elif name == "trapezoid":
        m = (av <= 0.55) & (au <= 0.4 + 0.45 * (v + 0.55) / 1.1)
    elif name == "l_shape":
        m = ((u >= -0.7) & (u <= -0.25) & (av <= 0.75)) | ((u >= -0.7) & (u <= 0.7) & (v >= 0.3) & (v <= 0.75))
    elif name == "t_shape":
        m = ((au <= 0.75) & (v >= -0.75) & (v <= -0.3)) | ((au <= 0.22) & (av <= 0.75))
    elif name == "hourglass":
        m = (av <= 0.8) & (au <= 0.1 + 0.7 * av)
    elif name == "star4":
        m = _star(u, v, 4, inner=0.3)
    elif name == "pentagon":
        m = _polygon(u, v, 5)
    elif name == "hollow_square":
        s = np.maximum(au, av)
        m = (s <= 0.7) & (s >= 0.4)
    elif name == "teardrop":
        m = (u * u + (v - 0.25) ** 2 <= 0.55 ** 2) | ((v <= 0.25) & (v >= -0.85) & (au <= 0.55 * (v + 0.85) / 1.1))
    elif name == "octagon":
        m = _polygon(u, v, 8, offset=np.pi / 8)
    else:
        raise ValueError(f"unknown SynthAVS shape {name!r}")
    return m & (r2 <= 1.0)


# -- object state ----------------------------------------------------------------------------

def object_state(obj: SceneObject, time_s: float, size_amp: float, bright_amp: float):
    """(cx, cy, radius, angle, brightness, level) of obj at time_s.

    radius = base * (1 + size_amp * (level - 0.5)); brightness = 1 - bright_amp * (1 - level):
    the visible state follows the object's per-second level (its loudness when it sounds).
    """
    level = float(level_envelope(obj.levels, np.array([time_s]))[0])
    cx = obj.centre[0] + obj.amplitude[0] * np.sin(2 * np.pi * time_s / obj.period_s[0] + obj.phase[0])
    cy = obj.centre[1] + obj.amplitude[1] * np.sin(2 * np.pi * time_s / obj.period_s[1] + obj.phase[1])
    radius = obj.radius * (1.0 + size_amp * (level - 0.5))
    angle = obj.angle0 + obj.sway * np.sin(2 * np.pi * time_s / obj.sway_period_s)
    brightness = 1.0 - bright_amp * (1.0 - level)
    return float(cx), float(cy), float(radius), float(angle), float(brightness), level


def _local_coords(cx: float, cy: float, radius: float, angle: float, h: int, w: int):
    """Bounding-box slices and (u, v) local coordinates of the pixels in it (None if off-frame)."""
    x0, x1 = max(0, int(np.floor(cx - radius)) - 1), min(w, int(np.ceil(cx + radius)) + 2)
    y0, y1 = max(0, int(np.floor(cy - radius)) - 1), min(h, int(np.ceil(cy + radius)) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    xs = np.arange(x0, x1, dtype=np.float64) + 0.5 - cx
    ys = np.arange(y0, y1, dtype=np.float64) + 0.5 - cy
    dx, dy = np.meshgrid(xs, ys)
    c, s = np.cos(angle), np.sin(angle)
    u = (c * dx + s * dy) / radius
    v = (-s * dx + c * dy) / radius
    return (slice(y0, y1), slice(x0, x1)), u, v


def _object_box(obj: SceneObject, scene: SceneSpec, time_s: float):
    cx, cy, radius, angle, brightness, _ = object_state(
        obj, time_s, scene.sync_size_amplitude, scene.sync_brightness_amplitude)
    got = _local_coords(cx, cy, radius, angle, scene.height, scene.width)
    if got is None:
        return None
    box, u, v = got
    return box, u, v, shape_inside(obj.category.name, u, v), brightness


def object_mask(obj: SceneObject, scene: SceneSpec, time_s: float) -> np.ndarray:
    """bool [H, W]: the object's full silhouette at time_s, ignoring anything in front of it."""
    mask = np.zeros((scene.height, scene.width), dtype=bool)
    got = _object_box(obj, scene, time_s)
    if got is not None:
        box, _, _, inside, _ = got
        mask[box] = inside
    return mask


def _texture(kind: str, u: np.ndarray, v: np.ndarray, freq: float, angle: float) -> np.ndarray:
    """Texture pattern in [0, 1] in object coordinates (moves and turns with the object)."""
    if kind == "solid":
        return np.zeros_like(u)
    a = u * np.cos(angle) + v * np.sin(angle)
    b = -u * np.sin(angle) + v * np.cos(angle)
    if kind == "stripes":
        return (np.sin(2 * np.pi * freq * a) > 0).astype(np.float64)
    if kind == "checker":
        return ((np.floor(freq * a) + np.floor(freq * b)) % 2).astype(np.float64)
    if kind == "dots":
        fa, fb = np.mod(freq * a, 1.0) - 0.5, np.mod(freq * b, 1.0) - 0.5
        return (fa * fa + fb * fb < 0.09).astype(np.float64)
    if kind == "rings":
        return (np.sin(2 * np.pi * freq * np.hypot(u, v)) > 0).astype(np.float64)
    raise ValueError(f"unknown SynthAVS texture {kind!r}")


def occluder_mask(occ: Occluder, h: int, w: int) -> np.ndarray:
    """bool [H, W]: pixels covered by the occluder bar."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    nx, ny = -np.sin(occ.angle), np.cos(occ.angle)
    return np.abs((xs - occ.point[0]) * nx + (ys - occ.point[1]) * ny) <= occ.half_width


def occluder_layer(occ: Occluder, h: int, w: int):
    """(mask bool [H, W], colours uint8 [M, 3] of its M pixels): the bar is static, so it is
    drawn once per clip and pasted onto every frame."""
    mask = occluder_mask(occ, h, w)
    ys, xs = np.nonzero(mask)
    along = (xs + 0.5 - occ.point[0]) * np.cos(occ.angle) + (ys + 0.5 - occ.point[1]) * np.sin(occ.angle)
    shade = 1.0 - 0.3 * (np.sin(2 * np.pi * occ.stripe_freq * along) > 0)
    colours = np.clip(np.rint(np.asarray(occ.colour)[None, :] * shade[:, None]), 0, 255).astype(np.uint8)
    return mask, colours


# -- background ------------------------------------------------------------------------------

def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """[H, W] in [0, 1]: a random grid of cells x cells values, bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1))
    gy = np.linspace(0, cells, h)
    gx = np.linspace(0, cells, w)
    y0 = np.minimum(gy.astype(int), cells - 1)
    x0 = np.minimum(gx.astype(int), cells - 1)
    fy, fx = (gy - y0)[:, None], (gx - x0)[None, :]
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def background_image(bg: BackgroundSpec, h: int, w: int) -> np.ndarray:
    """uint8 [H, W, 3]: two colours blended by a smooth field, a pattern and fine grain."""
    rng = np.random.default_rng(bg.seed)
    blend = _smooth_field(rng, h, w, 3)
    img = np.asarray(bg.colour_a)[None, None, :] * (1 - blend[..., None]) + \
        np.asarray(bg.colour_b)[None, None, :] * blend[..., None]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    side = float(max(h, w))
    a = (xs * np.cos(bg.pattern_angle) + ys * np.sin(bg.pattern_angle)) / side
    b = (-xs * np.sin(bg.pattern_angle) + ys * np.cos(bg.pattern_angle)) / side
    f = bg.pattern_freq
    if bg.pattern == "stripes":
        pat = (np.sin(2 * np.pi * f * a) > 0).astype(np.float64)
    elif bg.pattern == "checker":
        pat = ((np.floor(f * a) + np.floor(f * b)) % 2).astype(np.float64)
    elif bg.pattern == "grid":
        pat = ((np.mod(f * a, 1.0) < 0.12) | (np.mod(f * b, 1.0) < 0.12)).astype(np.float64)
    elif bg.pattern == "blobs":
        pat = (_smooth_field(rng, h, w, max(2, int(f))) > 0.55).astype(np.float64)
    else:
        pat = np.zeros((h, w))
    grain = _smooth_field(rng, h, w, max(4, int(side // 4))) - 0.5
    shade = 1.0 - bg.contrast * (0.35 * pat + 0.4 * grain)
    return np.clip(np.rint(img * shade[..., None]), 0, 255).astype(np.uint8)


# -- frames ----------------------------------------------------------------------------------

def render_frame(scene: SceneSpec, time_s: float, background: np.ndarray | None = None, occluder=None):
    """The scene at time_s: (frame uint8 [H, W, 3], instance map int16 [H, W]).

    Instance map: 0 = background, k + 1 = object k (scene.objects[k]), OCCLUDER_ID = occluder.
    background / occluder: the clip's background_image and occluder_layer, when already made.
    """
    if background is None:
        background = background_image(scene.background, scene.height, scene.width)
    if occluder is None and scene.occluder is not None:
        occluder = occluder_layer(scene.occluder, scene.height, scene.width)
    frame = background.copy()
    ids = np.zeros((scene.height, scene.width), dtype=np.int16)
    for obj in sorted(scene.objects, key=lambda o: o.z):
        got = _object_box(obj, scene, time_s)
        if got is None:
            continue
        box, u, v, inside, brightness = got
        u, v = u[inside], v[inside]
        pat = _texture(obj.texture, u, v, obj.texture_freq, obj.texture_angle)
        paint = np.asarray(obj.colour)[None, :] * ((1.0 - TEXTURE_DEPTH * pat) * brightness)[:, None]
        region, region_ids = frame[box], ids[box]
        region[inside] = np.clip(np.rint(paint), 0, 255).astype(np.uint8)
        region_ids[inside] = obj.index + 1
    if occluder is not None:
        mask, colours = occluder
        frame[mask] = colours
        ids[mask] = OCCLUDER_ID
    return frame, ids
