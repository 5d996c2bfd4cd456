"""Synthetic presentation attacks rendered from real face photos: for tests and demos only, never for claims.

**Everything here is synthetic.** Real presentation-attack data (printed photos, replayed screens, masks held
up to a phone camera) needs a signed licence and cannot ship. These renderers imitate the visible cues of each
attack species with numpy and Pillow so that the liveness pipeline and its ISO/IEC 30107-3 metrics can be run
end to end on photos that can ship (scikit-image's astronaut and LFW subset). A model that separates these
renders has learned these renders; it says nothing about real attacks.

Species and what each render does (`apply_attack(image, species, seed, face_box)`):

* ``print``: the photo printed and held up: CMY halftone dot screen, paper fibre texture, gamut compression
  (lifted blacks, dimmer whites, lower saturation, warm paper tint), re-capture blur, the sheet slightly
  rotated and scaled on a room background with its white margin visible.
* ``screen_replay``: the photo shown on a phone or monitor: RGB sub-pixel grid with dark row gaps, moiré
  bands, a specular glare spot, raised black level and a cool tint, inside a dark bezel on a room background.
* ``video_replay``: a replayed video: the screen render plus horizontal motion blur, rolling refresh bands
  and heavy compression.
* ``cutout``: a print with the eyes cut out, real eyes showing through the holes (hole rims shadowed).
* ``paper_mask``: a flat paper mask over the face region: posterized, smoothed, matte, paper texture, a
  visible seam; eyes and the surroundings stay real.
* ``tampered_id``: the face pasted onto an ID-card layout: guilloche background, text bars, a hologram over
  the photo and laminate glare.
* ``low_light``: a screen replay in a dark room: bezel and room sink into darkness, the emissive screen stays
  visible, high-ISO noise and a colour cast.

Digital injection (a deepfake fed into the camera stream) leaves no capture cue to imitate and has no render.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgeclip._registry import add_once, lookup
from edgeclip.data.images import ImageLike, jpeg_round_trip, load_image
from edgeclip.errors import UsageError

FaceBox = tuple[int, int, int, int]  # x, y, width, height
AttackFn = Callable[[np.ndarray, FaceBox, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class AttackSpecies:
    """One synthetic attack species: its name (a folder name in eval data), what it imitates, its renderer."""

    name: str
    description: str
    render: AttackFn


_ATTACKS: dict[str, AttackSpecies] = {}


def register_attack(name: str, description: str) -> Callable[[AttackFn], AttackFn]:
    """Decorator adding an attack renderer to the registry; a second one of the same name is refused."""

    def decorate(fn: AttackFn) -> AttackFn:
        add_once(_ATTACKS, name, AttackSpecies(name, description, fn), "attack species")
        return fn

    return decorate


def list_attacks() -> list[str]:
    """Names of the synthetic attack species, in registration order."""
    return list(_ATTACKS)


def get_attack(name: str) -> AttackSpecies:
    """A registered species by name, or a UsageError listing the known ones."""
    return lookup(_ATTACKS, name, "attack species")


def apply_attack(image: ImageLike, species: str, seed: int = 0, face_box: FaceBox | None = None) -> np.ndarray:
    """A synthetic presentation attack of `species` rendered from a bona fide photo: uint8 HxWx3, same size.

    `face_box` (x, y, w, h) places face-bound effects (eye holes, masks, the ID photo); without it the face is
    taken to fill the middle of the image, as in a face crop.
    """
    attack = get_attack(species)
    rgb = np.asarray(load_image(image), dtype=np.float32) / 255.0
    height, width = rgb.shape[:2]
    if min(height, width) < 16:
        raise UsageError(f"image of {width}x{height} is too small for a synthetic attack: expected at least 16x16")
    box = _check_box(face_box, width, height)
    rng = np.random.default_rng([int(seed), list(_ATTACKS).index(species)])
    out = attack.render(rgb, box, rng)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _check_box(face_box: FaceBox | None, width: int, height: int) -> FaceBox:
    if face_box is None:
        side = int(0.6 * min(width, height))
        return ((width - side) // 2, (height - side) // 2, side, side)
    x, y, w, h = (int(v) for v in face_box)
    if w < 4 or h < 4 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise UsageError(f"face box {face_box} does not fit a {width}x{height} image: expected x, y, w, h inside it")
    return (x, y, w, h)


# --- building blocks (float32 HxWx3 arrays in 0..1) ----------------------------------------------------


def _to_pil(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8), "RGB")


def _from_pil(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _smooth_field(height: int, width: int, rng: np.random.Generator, cells: int = 6, channels: int = 3) -> np.ndarray:
    """A smooth random field in 0..1 (bicubic upsampling of a coarse random grid)."""
    coarse = (rng.random((cells, cells, channels)) * 255).astype(np.uint8)
    mode = "RGB" if channels == 3 else "L"
    field = Image.fromarray(coarse if channels == 3 else coarse[..., 0], mode).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    out = np.asarray(field, dtype=np.float32) / 255.0
    return out if channels == 3 else out[..., None]


def _room(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A plausible indoor background: smooth colour variation, muted, with fine noise."""
    base = 0.25 + 0.5 * _smooth_field(height, width, rng, cells=4)
    grey = base.mean(axis=2, keepdims=True)
    return np.clip(0.8 * grey + 0.2 * base + rng.normal(0, 0.015, (height, width, 3)), 0, 1).astype(np.float32)


def _place(
    content: np.ndarray, background: np.ndarray, scale: float, angle: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paste `content` scaled and rotated about the centre onto `background`; returns the scene and the mask."""
    height, width = background.shape[:2]
    w, h = max(2, int(width * scale)), max(2, int(height * scale))
    sheet = _to_pil(content).resize((w, h), Image.Resampling.BICUBIC)
    mask = Image.new("L", (w, h), 255)
    sheet = sheet.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    jitter = rng.integers(-max(1, width // 40), max(1, width // 40) + 1, 2)
    left = (width - sheet.width) // 2 + int(jitter[0])
    top = (height - sheet.height) // 2 + int(jitter[1])
    scene = _to_pil(background)
    scene.paste(sheet, (left, top), mask)
    full_mask = Image.new("L", (width, height), 0)
    full_mask.paste(mask, (left, top), mask)
    return _from_pil(scene), np.asarray(full_mask, dtype=np.float32)[..., None] / 255.0


def _halftone(pixels: np.ndarray, period: float) -> np.ndarray:
    """CMY dot-screen halftone at three screen angles, as a laser or inkjet print renders continuous tone."""
    height, width = pixels.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty_like(pixels)
    for channel, degrees in enumerate((15.0, 75.0, 0.0)):
        a = math.radians(degrees)
        u = xs * math.cos(a) + ys * math.sin(a)
        v = -xs * math.sin(a) + ys * math.cos(a)
        screen = 0.25 * (np.cos(2 * np.pi * u / period) + np.cos(2 * np.pi * v / period)) + 0.5
        ink = 1.0 - pixels[..., channel]
        out[..., channel] = np.where(ink > screen, 0.0, 1.0)
    return out


def _gamut_compress(
    pixels: np.ndarray, black: float, white: float, saturation: float, tint: tuple[float, float, float]
) -> np.ndarray:
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = grey + saturation * (pixels - grey)
    return (black + (white - black) * pixels) * np.asarray(tint, dtype=np.float32)


def _blur(pixels: np.ndarray, radius: float) -> np.ndarray:
    return _from_pil(_to_pil(pixels).filter(ImageFilter.GaussianBlur(radius))) if radius > 0 else pixels


def _jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    return _from_pil(jpeg_round_trip(_to_pil(pixels), quality))


def _printed(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo as a printed sheet: halftone, compressed gamut, paper texture, white margin."""
    height, width = pixels.shape[:2]
    period = max(2.5, min(height, width) / rng.uniform(70, 110))
    dots = _halftone(pixels, period)
    # A print is seen from a distance: the dots blend partly into tone, but the screen stays visible.
    ink = 0.55 * dots + 0.45 * pixels
    ink = _gamut_compress(
        ink,
        rng.uniform(0.08, 0.16),
        rng.uniform(0.82, 0.9),
        rng.uniform(0.6, 0.8),
        (1.0, rng.uniform(0.96, 0.99), rng.uniform(0.86, 0.93)),
    )
    fibres = rng.normal(0, 0.035, (height, width, 1)).astype(np.float32)
    blotches = 0.06 * (_smooth_field(height, width, rng, cells=12, channels=1) - 0.5)
    sheet = np.clip(ink + fibres + blotches, 0, 1)
    margin = max(2, int(0.04 * min(height, width)))
    paper = np.full((height + 2 * margin, width + 2 * margin, 3), 0.9, np.float32) * np.asarray((1.0, 0.98, 0.9))
    paper[margin:-margin, margin:-margin] = sheet
    return _from_pil(_to_pil(paper).resize((width, height), Image.Resampling.BICUBIC))


def _screen(pixels: np.ndarray, rng: np.random.Generator, glare: bool = True) -> np.ndarray:
    """The photo as a lit display: sub-pixel grid, moiré, raised blacks, cool tint, optional glare."""
    height, width = pixels.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    shown = _gamut_compress(
        pixels,
        rng.uniform(0.05, 0.12),
        rng.uniform(0.9, 1.0),
        rng.uniform(0.85, 1.05),
        (rng.uniform(0.88, 0.95), rng.uniform(0.95, 1.0), 1.0),
    )
    pitch = max(3, round(min(height, width) / rng.uniform(90, 140)))
    grid = np.full((height, width, 3), 0.72, np.float32)
    for channel in range(3):
        grid[..., channel][(xs.astype(int) % 3) == channel] = 1.0
    grid[(ys.astype(int) % pitch) == 0] *= 0.6
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6.0, 14.0)
    bend = rng.uniform(0.0005, 0.002)
    phase = (xs * math.cos(angle) + ys * math.sin(angle) + bend * (xs - width / 2) ** 2) / period
    moire = 1.0 + rng.uniform(0.08, 0.16) * np.sin(2 * np.pi * phase)[..., None]
    out = shown * grid * moire
    if glare:
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.15, 0.6) * height
        sx, sy = rng.uniform(0.08, 0.2) * width, rng.uniform(0.05, 0.12) * height
        spot = np.exp(-(((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2))[..., None]
        out = out + rng.uniform(0.35, 0.6) * spot
    return np.clip(_blur(out, 0.6), 0, 1)


def _in_bezel(display: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A display framed by a dark device bezel with rounded corners."""
    height, width = display.shape[:2]
    border = max(3, int(rng.uniform(0.05, 0.09) * min(height, width)))
    tone = rng.uniform(0.03, 0.12)
    frame = Image.new("RGB", (width + 2 * border, height + 2 * border), (0, 0, 0))
    draw = ImageDraw.Draw(frame)
    shade = int(tone * 255)
    draw.rounded_rectangle((0, 0, frame.width - 1, frame.height - 1), radius=border * 2, fill=(shade,) * 3)
    frame.paste(_to_pil(display), (border, border))
    return _from_pil(frame.resize((width, height), Image.Resampling.BICUBIC))


def _eye_centres(box: FaceBox) -> list[tuple[float, float]]:
    x, y, w, h = box
    return [(x + 0.32 * w, y + 0.4 * h), (x + 0.68 * w, y + 0.4 * h)]


# --- species -----------------------------------------------------------------------------------------


@register_attack("print", "printed photo held up to the camera (halftone, paper texture, gamut compression)")
def _print_attack(pixels: np.ndarray, box: FaceBox, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    sheet = _printed(pixels, rng)
    scene, _ = _place(sheet, _room(height, width, rng), rng.uniform(0.86, 0.95), rng.uniform(-6, 6), rng)
    return _blur(scene, rng.uniform(0.4, 0.9))


@register_attack("screen_replay", "photo shown on a phone or monitor (pixel grid, moiré, glare, bezel)")
def _screen_attack(pixels: np.ndarray, box: FaceBox, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    device = _in_bezel(_screen(pixels, rng), rng)
    scene, _ = _place(device, _room(height, width, rng), rng.uniform(0.88, 0.97), rng.uniform(-4, 4), rng)
    return scene


@register_attack("video_replay", "video replayed on a screen (screen cues, motion blur, refresh bands, compression)")
def _video_attack(pixels: np.ndarray, box: FaceBox, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    moving = _motion_blur(pixels, max(3, int(rng.uniform(0.012, 0.03) * width)))
    device = _in_bezel(_screen(moving, rng, glare=rng.random() < 0.5), rng)
    ys = np.arange(height, dtype=np.float32)[:, None, None]
    bands = 1.0 - rng.uniform(0.06, 0.12) * (0.5 + 0.5 * np.sin(2 * np.pi * (ys / (height / rng.uniform(2, 4)))))
    scene, _ = _place(device * bands, _room(height, width, rng), rng.uniform(0.88, 0.97), rng.uniform(-4, 4), rng)
    return _jpeg(scene, int(rng.integers(12, 25)))


def _motion_blur(pixels: np.ndarray, length: int) -> np.ndarray:
    """Horizontal box blur over `length` pixels (camera or subject moving sideways)."""
    padded = np.pad(pixels, ((0, 0), (length // 2, length - 1 - length // 2), (0, 0)), mode="edge")
    total = np.cumsum(padded, axis=1, dtype=np.float64)
    total = np.concatenate([np.zeros_like(total[:, :1]), total], axis=1)
    return ((total[:, length:] - total[:, :-length]) / length).astype(np.float32)


@register_attack("cutout", "printed photo with the eyes cut out, real eyes showing through the holes")
def _cutout_attack(pixels: np.ndarray, box: FaceBox, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    sheet = _printed(pixels, rng)
    radius_x, radius_y = 0.11 * box[2], 0.06 * box[3]
    holes = Image.new("L", (width, height), 0)
    rims = Image.new("L", (width, height), 0)
    for cx, cy in _eye_centres(box):
        ImageDraw.Draw(holes).ellipse((cx - radius_x, cy - radius_y, cx + radius_x, cy + radius_y), fill=255)
        grow = max(1.5, 0.02 * box[2])
        ImageDraw.Draw(rims).ellipse(
            (cx - radius_x - grow, cy - radius_y - grow, cx + radius_x + grow, cy + radius_y + grow), fill=255
        )
    hole = np.asarray(holes, dtype=np.float32)[..., None] / 255.0
    rim = np.asarray(rims.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)[..., None] / 255.0
    # The real eyes are behind the sheet, a little darker (shadowed by the paper).
    sheet = sheet * (1.0 - 0.45 * rim * (1.0 - hole)) * (1 - hole) + 0.85 * pixels * hole
    return _blur(sheet, rng.uniform(0.3, 0.7))


@register_attack("paper_mask", "flat paper mask worn over the face (posterized, matte, visible seam)")
def _mask_attack(pixels: np.ndarray, box: FaceBox, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    x, y, w, h = box
    levels = int(rng.integers(4, 7))
    flat_image = _to_pil(_gamut_compress(pixels, 0.1, 0.9, 0.7, (1.0, 0.97, 0.92))).filter(ImageFilter.MedianFilter(5))
    flat = _from_pil(flat_image.quantize(levels, dither=Image.Dither.NONE).convert("RGB"))
    flat = np.clip(flat + rng.normal(0, 0.03, (height, width, 1)).astype(np.float32), 0, 1)
    region = Image.new("L", (width, height), 0)
    pad_x, pad_y = 0.08 * w, 0.1 * h
    ImageDraw.Draw(region).ellipse((x - pad_x, y - pad_y, x + w + pad_x, y + h + pad_y), fill=255)
    seam = region.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.GaussianBlur(1.0))
    radius_x, radius_y = 0.08 * w, 0.045 * h
    for cx, cy in _eye_centres(box):
        ImageDraw.Draw(region).ellipse((cx - radius_x, cy - radius_y, cx + radius_x, cy + radius_y), fill=0)
    mask = np.asarray(region.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)[..., None] / 255.0
    edge = np.asarray(seam, dtype=np.float32)[..., None] / 255.0
    out = flat * mask + pixels * (1 - mask)
    return np.clip(out * (1.0 - 0.6 * np.clip(4 * edge, 0, 1)), 0, 1)


@register_attack("tampered_id", "face photo pasted onto an ID card (guilloche, text, hologram, laminate glare)")
def _id_attack(pixels: np.ndarray, box: FaceBox, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    x, y, w, h = box
    card_w = width
    card_h = max(8, int(card_w / 1.586))
    ys, xs = np.mgrid[0:card_h, 0:card_w].astype(np.float32)
    tint = np.asarray((rng.uniform(0.75, 0.9), rng.uniform(0.8, 0.95), rng.uniform(0.85, 1.0)), np.float32)
    waves = sum(np.sin(2 * np.pi * (xs / p + 0.3 * np.sin(ys / q))) for p, q in ((17.0, 9.0), (23.0, 13.0)))
    card = tint * (0.9 + 0.05 * waves[..., None] / 2)
    card_img = _to_pil(np.clip(card, 0, 1))
    draw = ImageDraw.Draw(card_img)
    photo_w = int(0.42 * card_w)
    photo_h = min(int(photo_w * 1.25), card_h - 8)
    margin = max(3, card_w // 30)
    # The photo: the face with a little margin, cut from the bona fide capture.
    grow = 0.25
    crop = (
        max(0, int(x - grow * w)),
        max(0, int(y - grow * h)),
        min(width, int(x + (1 + grow) * w)),
        min(height, int(y + (1 + grow) * h)),
    )
    photo = _to_pil(pixels).crop(crop).resize((photo_w, photo_h), Image.Resampling.BICUBIC)
    top = (card_h - photo_h) // 2
    card_img.paste(photo, (margin, top))
    for i in range(5):
        bar_y = top + int((i + 0.5) * photo_h / 5.5)
        bar_len = int(rng.uniform(0.25, 0.5) * card_w)
        draw.rectangle(
            (photo_w + 2 * margin, bar_y, photo_w + 2 * margin + bar_len, bar_y + max(2, card_h // 40)),
            fill=(40, 40, 60),
        )
    out = _from_pil(card_img)
    rainbow = np.stack([np.sin(2 * np.pi * (xs + ys) / 40 + phase) for phase in (0, 2.1, 4.2)], axis=-1)
    holo = np.zeros((card_h, card_w, 1), np.float32)
    holo[top : top + photo_h, margin : margin + photo_w] = 0.07
    out = out + holo * rainbow
    cx, cy = rng.uniform(0.3, 0.9) * card_w, rng.uniform(0.2, 0.8) * card_h
    glare = np.exp(-(((xs - cx) / (0.25 * card_w)) ** 2 + ((ys - cy) / (0.1 * card_h)) ** 2))[..., None]
    out = np.clip(out + 0.3 * glare, 0, 1)
    canvas = np.full((height, width, 3), 0.0, np.float32)
    background = _room(height, width, rng)
    canvas[:] = background
    offset = (height - card_h) // 2
    if offset >= 0:
        canvas[offset : offset + card_h] = out
    else:
        canvas[:] = out[-offset : -offset + height]
    return _blur(canvas, 0.5)


@register_attack("low_light", "screen replay in a dark room (bezel hidden in darkness, high-ISO noise, colour cast)")
def _low_light_attack(pixels: np.ndarray, box: FaceBox, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    display = _screen(pixels, rng, glare=False)
    device = _in_bezel(display, rng)
    dark_room = _room(height, width, rng) * rng.uniform(0.05, 0.12)
    scene, screen_mask = _place(device, dark_room, rng.uniform(0.88, 0.97), rng.uniform(-4, 4), rng)
    # The emissive screen stays visible; everything it does not light falls to near black.
    exposure = rng.uniform(0.35, 0.55)
    lit = scene * (screen_mask * exposure + (1 - screen_mask) * 0.6)
    cast = np.asarray((rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.0), rng.uniform(1.0, 1.15)), np.float32)
    noisy = lit * cast + rng.normal(0, 0.04, lit.shape).astype(np.float32) + rng.normal(0, 0.03, (height, width, 1))
    return np.clip(noisy, 0, 1)
