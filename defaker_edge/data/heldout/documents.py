"""Documents for the held-out set: pages rendered with PIL and DejaVu, saved once as a scanner or a
PDF export would, then edited word by word or digit by digit. Written independently of the training
generator; token boxes are kept so edits land on real words and numbers."""

from __future__ import annotations

import os
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .codec import roundtrip

FONT_DIRS = ("/usr/share/fonts/truetype/dejavu",)
FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf")
WORDS = ("account payment total service delivery order customer invoice amount balance due date terms "
         "please remit within days thank you for your business regards manager office street city "
         "reference number item description quantity price tax net gross subtotal discount shipping "
         "handling report summary quarter revenue expenses contract agreement signed party hereby "
         "confirm receipt notice period following statement enclosed copy records department").split()


def _font_dirs():
    dirs = list(FONT_DIRS)
    try:  # matplotlib ships DejaVu too; used where the system fonts are absent
        import matplotlib
        dirs.append(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf"))
    except ImportError:
        pass
    return dirs


@lru_cache(maxsize=None)
def font_path(name: str) -> str:
    for d in _font_dirs():
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    from ...errors import DefakerError
    raise DefakerError(f"font {name} not found in {', '.join(_font_dirs())} (install fonts-dejavu-core)")


@lru_cache(maxsize=256)
def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_path(name), size)


def _number(rng) -> str:
    v = rng.integers(1, 99999) / 100
    return f"{v:,.2f}" if rng.random() < 0.6 else str(int(rng.integers(1, 9999)))


def render(rng, size=None):
    """A page (uint8 RGB) and its tokens: dicts with box, text, font, size, color, origin, numeric."""
    w = int(rng.integers(720, 1100)) if size is None else size[0]
    h = int(rng.integers(900, 1280)) if size is None else size[1]
    paper = int(rng.integers(236, 256))  # white to light grey, only a faint tint
    bg = tuple(int(min(255, paper + v)) for v in rng.integers(-5, 1, 3))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    fname = FONT_NAMES[int(rng.integers(0, len(FONT_NAMES)))]
    fs = int(rng.integers(13, 22))
    tokens = []

    def put(x, y, text, size=fs, name=fname, numeric=False):
        f = font(name, size)
        d.text((x, y), text, font=f, fill=ink)
        b = d.textbbox((x, y), text, font=f)
        box = (int(np.floor(b[0])), int(np.floor(b[1])), int(np.ceil(b[2])), int(np.ceil(b[3])))
        tokens.append({"box": box, "text": text, "font": name, "size": size, "color": ink,
                       "origin": (x, y), "numeric": numeric})
        return box

    margin = int(rng.integers(40, 90))
    y = margin
    bold = fname.replace(".ttf", "-Bold.ttf") if "Condensed" not in fname else "DejaVuSans-Bold.ttf"
    put(margin, y, " ".join(w.capitalize() for w in rng.choice(WORDS, 2)), int(fs * 1.6), bold)
    y += int(fs * 3)
    layout = ("letter", "invoice", "table")[int(rng.integers(0, 3))]
    line_h = int(fs * rng.uniform(1.4, 1.9))
    if layout in ("invoice", "table"):
        cols = int(rng.integers(3, 6))
        colw = (w - 2 * margin) // cols
        rows = int(rng.integers(6, min(30, (h - y - margin) // line_h - 3)))
        for r in range(rows + 1):
            for c in range(cols):
                x = margin + c * colw + 4
                if r == 0:
                    put(x, y, str(rng.choice(WORDS)).capitalize(), fs, bold)
                elif c == 0 and layout == "invoice":
                    put(x, y, str(rng.choice(WORDS)))
                else:
                    put(x, y, _number(rng), numeric=True)
            if layout == "table":
                d.line([(margin, y + line_h - 4), (w - margin, y + line_h - 4)], fill=ink, width=1)
            y += line_h
        y += line_h
        put(margin + (cols - 1) * colw + 4 - colw, y, "Total", fs, bold)
        put(margin + (cols - 1) * colw + 4, y, _number(rng), numeric=True)
        y += 2 * line_h
    while y < h - margin - line_h:  # running text: word by word so every word has its box
        x = margin
        for _ in range(40):
            wd = str(rng.choice(WORDS)) if rng.random() > 0.12 else _number(rng)
            tw = d.textlength(wd + " ", font=font(fname, fs))
            if x + tw > w - margin:
                break
            put(x, y, wd, numeric=wd[0].isdigit())
            x += tw
        y += line_h
        if rng.random() < 0.15:
            y += line_h  # paragraph break
    return np.asarray(im).copy(), tokens, {"layout": layout, "font": fname, "font_size": fs, "bg": bg}


def first_save(rng, page, tokens):
    """Scanner (skew, blur, noise, JPEG 60-95) or PDF export (JPEG 75-98, clean). Boxes follow the skew."""
    h, w = page.shape[:2]
    if rng.random() < 0.6:
        ang = float(rng.uniform(-1.2, 1.2))
        M = cv2.getRotationMatrix2D((w / 2, h / 2), ang, 1.0)
        bg = tuple(int(v) for v in np.median(page.reshape(-1, 3), 0))
        img = cv2.warpAffine(page, M, (w, h), flags=cv2.INTER_CUBIC, borderValue=bg)
        s = float(rng.uniform(0.3, 0.9))
        img = cv2.GaussianBlur(img, (0, 0), s)
        n = float(rng.uniform(0.5, 3.0))
        img = np.clip(img + rng.normal(0, n, img.shape), 0, 255).astype(np.uint8)
        q = int(rng.integers(60, 96))
        info = {"source": "scanner", "skew": round(ang, 2), "blur": round(s, 2), "noise": round(n, 2)}
        tokens = [_move(t, M) for t in tokens]
    else:
        img, q = page, int(rng.integers(75, 99))
        info = {"source": "pdf_export"}
    img = roundtrip(img, "JPEG", q)
    return img, tokens, {"format": "JPEG", "quality": q, **info}


def _move(t, M):
    x0, y0, x1, y1 = t["box"]
    pts = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64) @ M.T
    ox, oy = np.array([*t["origin"], 1.0]) @ M.T
    box = (int(np.floor(pts[:, 0].min())), int(np.floor(pts[:, 1].min())),
           int(np.ceil(pts[:, 0].max())), int(np.ceil(pts[:, 1].max())))
    return {**t, "box": box, "origin": (float(ox), float(oy))}


def crop_tokens(tokens, x, y, w, h):
    out = []
    for t in tokens:
        x0, y0, x1, y1 = t["box"]
        if x0 - x >= 2 and y0 - y >= 2 and x1 - x <= w - 2 and y1 - y <= h - 2:
            out.append({**t, "box": (x0 - x, y0 - y, x1 - x, y1 - y),
                        "origin": (t["origin"][0] - x, t["origin"][1] - y)})
    return out


def _background(img, box, pad=4):
    """The paper colour around a box: the brightest half of the ring's pixels, median."""
    x0, y0, x1, y1 = box
    h, w = img.shape[:2]
    r = img[max(0, y0 - pad):min(h, y1 + pad), max(0, x0 - pad):min(w, x1 + pad)].reshape(-1, 3)
    lum = r.sum(1)
    return np.median(r[lum >= np.median(lum)], 0)


def _pick(rng, tokens, numeric_first=True):
    num = [t for t in tokens if t["numeric"]]
    pool = num if (numeric_first and num and rng.random() < 0.75) else tokens
    return pool[int(rng.integers(0, len(pool)))]


def _fill(rng, img, box, pad=2):
    x0, y0, x1, y1 = box
    bg = _background(img, box)
    patch = img[y0 - pad:y1 + pad, x0 - pad:x1 + pad]
    noise = rng.normal(0, float(rng.uniform(0, 2.0)), patch.shape)
    img[y0 - pad:y1 + pad, x0 - pad:x1 + pad] = np.clip(bg + noise, 0, 255).astype(np.uint8)


def _new_text(rng, t):
    if t["numeric"]:
        s = list(t["text"])
        digits = [i for i, c in enumerate(s) if c.isdigit()]
        for i in rng.choice(digits, size=min(len(digits), int(rng.integers(1, 3))), replace=False):
            s[i] = str((int(s[i]) + int(rng.integers(1, 10))) % 10)
        return "".join(s)
    return str(rng.choice([w for w in WORDS if abs(len(w) - len(t["text"])) <= 2] or WORDS))


def text_edit(rng, img, tokens, donor=None):
    """Erase a word or number and type another in the same font and size (sharp or slightly blurred)."""
    t = _pick(rng, tokens)
    out = img.copy()
    _fill(rng, out, t["box"])
    new = _new_text(rng, t)
    layer = Image.fromarray(out)
    ImageDraw.Draw(layer).text(t["origin"], new, font=font(t["font"], t["size"]), fill=t["color"])
    out2 = np.asarray(layer)
    if rng.random() < 0.5:  # match the scan's softness in the edited box only
        x0, y0, x1, y1 = t["box"]
        out2 = out2.copy()
        sl = np.s_[max(0, y0 - 3):y1 + 3, max(0, x0 - 3):x1 + 6]
        out2[sl] = cv2.GaussianBlur(out2[sl], (0, 0), float(rng.uniform(0.4, 0.8)))
    return out2, {"old": t["text"], "new": new}


def char_copy(rng, img, tokens, donor=None):
    """Replace one character of a number with the same glyph cut from elsewhere on the page."""
    nums = [t for t in tokens if t["numeric"] and any(c.isdigit() for c in t["text"])]
    if len(nums) < 2:
        return text_edit(rng, img, tokens)
    t = nums[int(rng.integers(0, len(nums)))]
    f = font(t["font"], t["size"])
    src_pool = [(s, i) for s in nums if s is not t for i, c in enumerate(s["text"]) if c.isdigit()]
    s, i = src_pool[int(rng.integers(0, len(src_pool)))]
    j = int(rng.choice([k for k, c in enumerate(t["text"]) if c.isdigit()]))
    sx = int(round(s["origin"][0] + f.getlength(s["text"][:i])))
    cw = int(np.ceil(f.getlength(s["text"][i])))
    tx = int(round(t["origin"][0] + f.getlength(t["text"][:j])))
    sy0, sy1 = s["box"][1] - 1, s["box"][3] + 1
    ty0 = t["box"][1] - 1 + int(round((s["origin"][1] % 1) - (t["origin"][1] % 1)))
    hh = sy1 - sy0
    out = img.copy()
    h, w = img.shape[:2]
    if min(sx, tx, sy0, ty0) < 0 or max(sx, tx) + cw > w or max(sy1, ty0 + hh) > h:
        return text_edit(rng, img, tokens)
    out[ty0:ty0 + hh, tx:tx + cw] = img[sy0:sy1, sx:sx + cw]
    return out, {"char": s["text"][i], "replaced": t["text"][j], "in": t["text"]}


def erase(rng, img, tokens, donor=None):
    """Remove a word or number by painting the paper colour over it."""
    t = _pick(rng, tokens)
    out = img.copy()
    _fill(rng, out, t["box"])
    return out, {"erased": t["text"]}


def splice(rng, img, tokens, donor):
    """Paste a number (with its paper) cut from another document saved at another quality."""
    dimg, dtokens = donor
    t = _pick(rng, tokens)
    cand = [s for s in dtokens if s["numeric"]] or dtokens
    s = cand[int(rng.integers(0, len(cand)))]
    pad = 3
    x0, y0, x1, y1 = s["box"]
    patch = dimg[y0 - pad:y1 + pad, x0 - pad:x1 + pad]
    tx0, ty0 = t["box"][0] - pad, t["box"][1] - pad
    out = img.copy()
    _fill(rng, out, t["box"])  # the old text goes first, so no stroke of it survives beside the patch
    h, w = img.shape[:2]
    ph, pw = min(patch.shape[0], h - ty0), min(patch.shape[1], w - tx0)
    out[ty0:ty0 + ph, tx0:tx0 + pw] = patch[:ph, :pw]
    return out, {"old": t["text"], "new": s["text"]}


KINDS = {"doc_text_edit": text_edit, "doc_char_copy": char_copy, "doc_erase": erase, "doc_splice": splice}
