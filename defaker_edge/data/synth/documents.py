"""Documents: rendered receipts, forms and letters (real TrueType fonts), scanned, then tampered.

Rendering keeps every text line's position, font and size, so tampering can act like a forger
with a PDF editor or an image editor: replace digits in the same (or a similar) font on a patch
of matched background, copy characters from elsewhere in the page, erase a field, or splice a
line from another document. Paper colour, illumination, fibre texture, optics blur and scanner
noise are applied before tampering, so a tampered patch has to imitate them (as in real life).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

from . import fonts as F
from .postprocess import gaussian

_ITEMS = ("Coffee", "Bagel", "Milk 1L", "Bread", "Eggs x12", "Apples", "Rice 2kg", "Tea", "Butter", "Cheese",
          "Water 6pk", "Pasta", "Tomatoes", "Soap", "Batteries", "Notebook", "Pen set", "Chicken", "Juice", "Salad")
_WORDS = ("the", "invoice", "payment", "account", "balance", "due", "amount", "please", "remit", "within",
          "days", "reference", "order", "service", "period", "total", "contract", "number", "date", "office",
          "customer", "received", "transfer", "bank", "signed", "approved", "copy", "record", "notice", "fee")
_NAMES = ("Anna Keller", "John Smith", "Maria Lopez", "Wei Zhang", "Olga Petrova", "Ahmed Khan", "Lena Novak",
          "Tom Baker", "Sara Costa", "Ken Sato", "Eva Berg", "Raj Patel")
_STORES = ("CORNER MARKET", "CITY GROCERY", "FRESH & CO", "MAPLE STORE", "DAILY MART", "GREEN BASKET")
_FIELDS = ("Name", "Date of birth", "Account no.", "Amount", "Invoice no.", "Phone", "Date", "Reference",
           "Policy no.", "Postal code", "Total due", "ID number")


@dataclass
class TextItem:
    x: int
    y: int
    text: str
    font: str | None
    size: int
    ink: tuple[int, int, int]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def _date(rng) -> str:
    d, m, y = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(1990, 2027))
    fmt = int(rng.integers(3))
    return (f"{d:02d}/{m:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{d:02d}.{m:02d}.{y}")[fmt]


def _price(rng, hi=200.0) -> str:
    return f"{rng.uniform(0.5, hi):.2f}"


def _number(rng, k=None) -> str:
    k = k or int(rng.integers(4, 11))
    return "".join(str(int(d)) for d in rng.integers(0, 10, k))


def _sentence(rng, n) -> str:
    words = []
    for _ in range(n):
        r = rng.random()
        if r < 0.1:
            words.append(_number(rng, int(rng.integers(2, 6))))
        elif r < 0.15:
            words.append(_date(rng))
        else:
            words.append(_WORDS[int(rng.integers(len(_WORDS)))])
    s = " ".join(words)
    return s[:1].upper() + s[1:]


def _lines(rng, kind: str, cols: int) -> list[tuple[str, str]]:
    """(left text, right text) per line for a layout; '' means nothing on that side."""
    out: list[tuple[str, str]] = []
    if kind == "receipt":
        out += [(_STORES[int(rng.integers(len(_STORES)))], ""), (f"{int(rng.integers(1, 999))} Main St.", ""),
                (f"Tel {_number(rng, 3)}-{_number(rng, 4)}", ""), ("", ""), (_date(rng), f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}")]
        for _ in range(int(rng.integers(4, 30))):
            out.append((_ITEMS[int(rng.integers(len(_ITEMS)))], _price(rng, 60)))
        out += [("", ""), ("SUBTOTAL", _price(rng, 400)), (f"TAX {int(rng.integers(5, 21))}%", _price(rng, 40)),
                ("TOTAL", _price(rng, 450)), (f"CARD **** {_number(rng, 4)}", ""), (f"AUTH {_number(rng, 6)}", "")]
    elif kind == "form":
        out += [(("APPLICATION FORM", "PAYMENT ORDER", "CLAIM FORM", "REGISTRATION")[int(rng.integers(4))], ""), ("", "")]
        for _ in range(int(rng.integers(6, 30))):
            f = _FIELDS[int(rng.integers(len(_FIELDS)))]
            if "Name" in f:
                v = _NAMES[int(rng.integers(len(_NAMES)))]
            elif "Date" in f:
                v = _date(rng)
            elif "Amount" in f or "Total" in f:
                v = f"$ {int(rng.integers(1, 99))},{int(rng.integers(0, 1000)):03d}.{int(rng.integers(0, 100)):02d}"
            else:
                v = _number(rng)
            out.append((f"{f}:", v))
    else:  # letter
        out += [("", _date(rng)), (_NAMES[int(rng.integers(len(_NAMES)))], ""),
                (f"{int(rng.integers(1, 999))} Oak Avenue", ""), ("", ""), (f"Ref: {_number(rng, 8)}", ""), ("", "")]
        for _ in range(int(rng.integers(6, 40))):
            out.append((_sentence(rng, max(3, cols // 7)), ""))
        out += [("", ""), (f"Amount due: {_price(rng, 5000)} EUR", ""), ("Sincerely,", ""),
                (_NAMES[int(rng.integers(len(_NAMES)))], "")]
    return out


def render_document(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[TextItem], str]:
    """A clean rendered page (white paper, ink text) before scanning. Returns (RGB, items, layout)."""
    kind = ("receipt", "form", "letter")[int(rng.integers(3))]
    family = "mono" if kind == "receipt" and rng.random() < 0.7 else None
    font = F.pick_font(rng, family)
    size = int(np.clip(round(min(w, 1.4 * h) / rng.uniform(28, 60)), 9, 40))
    fnt = F.load(font, size)
    ink = tuple(int(v) for v in (rng.integers(0, 60), rng.integers(0, 60), rng.integers(0, 90)))
    pil = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(pil)
    margin = int(w * rng.uniform(0.04, 0.12))
    lh = int(size * rng.uniform(1.25, 1.7))
    right = w - margin
    cols = max(8, int((right - margin) / max(1.0, fnt.getlength("a"))))
    items: list[TextItem] = []
    y = int(margin * rng.uniform(0.5, 1.2))
    for left, rtext in _lines(rng, kind, cols):
        if y + lh > h - margin // 2:
            break
        for text, align in ((left, "l"), (rtext, "r")):
            if not text:
                continue
            tl = fnt.getlength(text)
            if tl > right - margin:  # too long for the page: cut at a character that fits
                while text and fnt.getlength(text) > right - margin:
                    text = text[:-1]
                if not text.strip():
                    continue
                tl = fnt.getlength(text)
            x = margin if align == "l" else int(right - tl)
            if align == "r" and items and items[-1].y == y and items[-1].box[2] + size > x:
                continue  # would overlap the left text on this line
            draw.text((x, y), text, font=fnt, fill=ink, anchor="la")
            x0, y0, x1, y1 = draw.textbbox((x, y), text, font=fnt, anchor="la")
            items.append(TextItem(x, y, text, font, size, ink, (int(x0), int(y0), int(x1) + 1, int(y1) + 1)))
        if kind == "form" and rng.random() < 0.3:  # form rules and boxes
            draw.line((margin, y + lh - 3, right, y + lh - 3), fill=(150, 150, 150), width=1)
        y += lh
    if not items:  # a page too small for its layout still gets one line to tamper with
        text = _number(rng, 3)
        draw.text((1, 1), text, font=fnt, fill=ink, anchor="la")
        x0, y0, x1, y1 = draw.textbbox((1, 1), text, font=fnt, anchor="la")
        items.append(TextItem(1, 1, text, font, size, ink, (int(x0), int(y0), min(w, int(x1) + 1), min(h, int(y1) + 1))))
    return np.asarray(pil).copy(), items, kind


def scan(rng: np.random.Generator, page: np.ndarray) -> np.ndarray:
    """Paper colour x illumination x fibre texture, optics blur, scanner noise."""
    h, w = page.shape[:2]
    paper = np.array([rng.uniform(225, 255), rng.uniform(220, 252), rng.uniform(205, 248)], np.float32)
    illum = cv2.resize(rng.normal(1.0, 0.03, (3, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    shade = cv2.convertScaleAbs(illum[..., None] * paper)  # paper colour x illumination, 8-bit
    x = cv2.GaussianBlur(page, (0, 0), float(rng.uniform(0.3, 0.9)))
    img = cv2.multiply(x, shade, scale=1.0 / 255.0)  # ink darkens the paper (multiplicative)
    fibre = cv2.GaussianBlur(gaussian(rng, (h, w)), (0, 0), 0.8) * np.float32(rng.uniform(2, 6))
    noise = gaussian(rng, (h, w, 3)) * np.float32(rng.uniform(0.8, 3.0)) + fibre[..., None]
    return cv2.add(img.astype(np.float32), noise, dtype=cv2.CV_8U)


# --- tampering -------------------------------------------------------------------------------

def _ring_stats(img, box, pad=3):
    """Median colour and noise std of a ring around a box: the background a forger matches."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = box
    X0, Y0, X1, Y1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
    roi = img[Y0:Y1, X0:X1].reshape(-1, 3).astype(np.float32)
    inner = np.ones((Y1 - Y0, X1 - X0), bool)
    inner[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0] = False
    ring = roi[inner.reshape(-1)] if inner.any() else roi
    med = np.median(ring, axis=0)
    std = float(np.clip(ring.std(axis=0).mean(), 0.5, 6.0))
    return med, std


def _ink(img, box) -> tuple[int, int, int]:
    x0, y0, x1, y1 = box
    roi = img[y0:y1, x0:x1].reshape(-1, 3)
    lum = roi.astype(np.int32).sum(1)
    dark = roi[lum <= np.percentile(lum, 8)]
    return tuple(int(v) for v in np.median(dark, axis=0)) if len(dark) else (30, 30, 30)


def _bg_patch(rng, shape, med, std):
    return np.clip(np.rint(med + gaussian(rng, shape) * np.float32(std)), 0, 255).astype(np.uint8)


def _mutate(rng, text: str) -> str:
    digits = [i for i, c in enumerate(text) if c.isdigit()]
    chars = list(text)
    if digits:
        for i in rng.choice(digits, size=min(len(digits), int(rng.integers(1, 4))), replace=False):
            chars[i] = str((int(chars[i]) + int(rng.integers(1, 10))) % 10)
        return "".join(chars)
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    if letters:
        i = int(rng.choice(letters))
        alt = "abcdefghijklmnopqrstuvwxyz".replace(chars[i].lower(), "")
        chars[i] = alt[int(rng.integers(len(alt)))]
    return "".join(chars)


def _pick(rng, items, need_digits=True):
    cand = [it for it in items if any(c.isdigit() for c in it.text)] if need_digits else []
    cand = cand or [it for it in items if len(it.text.strip()) > 1] or items
    return cand[int(rng.integers(len(cand)))]


def text_replace(rng, img, items):
    """Change digits/letters of one line, redrawn in the same (or a similar) font on matched background."""
    it = _pick(rng, items)
    new = _mutate(rng, it.text)
    same = rng.random() < 0.6
    font = it.font if same else F.similar_font(rng, it.font)
    size = it.size if same or rng.random() < 0.5 else max(6, it.size + int(rng.choice([-1, 1])))
    fnt = F.load(font, size)
    h, w = img.shape[:2]
    old = F.load(it.font, it.size)
    if same and len(new) == len(it.text):
        # only the changed characters' span, as a careful forger would
        diff = [i for i, (a, b) in enumerate(zip(it.text, new)) if a != b] or [0]
        xa = int(it.x + old.getlength(it.text[:diff[0]])) - 1
        xb = int(np.ceil(it.x + old.getlength(it.text[:diff[-1] + 1]))) + 2
        box = (max(0, xa), max(0, it.box[1] - 2), min(w, xb), min(h, it.box[3] + 2))
    else:
        nb = fnt.getbbox(new, anchor="la")
        box = (max(0, min(it.box[0], it.x + int(nb[0])) - 2), max(0, min(it.box[1], it.y + int(nb[1])) - 2),
               min(w, max(it.box[2], it.x + int(nb[2]) + 1) + 2), min(h, max(it.box[3], it.y + int(nb[3]) + 1) + 2))
    med, std = _ring_stats(img, box)
    ink = _ink(img, it.box)
    x0, y0, x1, y1 = box
    patch = Image.fromarray(_bg_patch(rng, (y1 - y0, x1 - x0, 3), med, std))
    ImageDraw.Draw(patch).text((it.x - x0, it.y - y0), new, font=fnt, fill=ink, anchor="la")
    p = np.asarray(patch)
    if rng.random() < 0.6:
        p = cv2.GaussianBlur(p, (0, 0), float(rng.uniform(0.3, 0.8)))
    out = img.copy()
    out[y0:y1, x0:x1] = p
    return img, out, {"old": it.text, "new": new, "same_font": bool(same)}


def _char_box(it: TextItem, k: int) -> tuple[int, int]:
    fnt = F.load(it.font, it.size)
    return int(round(it.x + fnt.getlength(it.text[:k]))), int(round(it.x + fnt.getlength(it.text[:k + 1])))


def char_copy_move(rng, img, items):
    """Copy one character's pixels (usually a digit) over another character of the same size."""
    tgt = _pick(rng, items)
    same_size = [it for it in items if it.size == tgt.size and it.font == tgt.font]
    src = same_size[int(rng.integers(len(same_size)))]
    ti = [i for i, c in enumerate(tgt.text) if c.isalnum()] or [0]
    si = [i for i, c in enumerate(src.text) if c.isalnum()] or [0]
    h, w = img.shape[:2]
    out = img.copy()
    moved = []
    for _ in range(int(rng.integers(1, 3))):
        k, j = int(rng.choice(ti)), int(rng.choice(si))
        tx0, _ = _char_box(tgt, k)
        sx0, sx1 = _char_box(src, j)
        # rows from the font's ascent to its descent, aligned on the text origin of both lines
        _, top, _, bot = F.load(src.font, src.size).getbbox("Hg0|", anchor="la")
        sy0, ty0 = max(0, src.y + int(top) - 1), max(0, tgt.y + int(top) - 1)
        hh = min(int(bot) - int(top) + 2, h - sy0, h - ty0)
        ww = min(max(1, sx1 - sx0), w - sx0, w - tx0)
        if hh <= 0 or ww <= 0:
            continue
        out[ty0:ty0 + hh, tx0:tx0 + ww] = img[sy0:sy0 + hh, sx0:sx0 + ww]
        moved.append(f"{src.text[j]}->{tgt.text[k]}")
    return img, out, {"moved": moved}


def erase(rng, img, items):
    """Erase a line or a word: background fill with matched noise, or inpainting of the ink."""
    it = _pick(rng, items, need_digits=rng.random() < 0.5)
    x0, y0, x1, y1 = it.box
    words = it.text.split(" ")
    if len(words) > 1 and rng.random() < 0.5:
        k = int(rng.integers(len(words)))
        pre = " ".join(words[:k]) + (" " if k else "")
        fnt = F.load(it.font, it.size)
        x0 = int(it.x + fnt.getlength(pre))
        x1 = int(np.ceil(it.x + fnt.getlength(pre + words[k]))) + 1
    h, w = img.shape[:2]
    box = (max(0, x0 - 2), max(0, y0 - 2), min(w, x1 + 2), min(h, y1 + 2))
    X0, Y0, X1, Y1 = box
    out = img.copy()
    if rng.random() < 0.5:
        med, std = _ring_stats(img, box)
        out[Y0:Y1, X0:X1] = _bg_patch(rng, (Y1 - Y0, X1 - X0, 3), med, std)
        method = "fill"
    else:
        pad = 6
        ry0, ry1, rx0, rx1 = max(0, Y0 - pad), min(h, Y1 + pad), max(0, X0 - pad), min(w, X1 + pad)
        roi = np.ascontiguousarray(img[ry0:ry1, rx0:rx1])
        lum = roi.astype(np.int32).sum(2)
        hole = np.zeros(lum.shape, np.uint8)
        sub = lum[Y0 - ry0:Y1 - ry0, X0 - rx0:X1 - rx0]
        hole[Y0 - ry0:Y1 - ry0, X0 - rx0:X1 - rx0] = (sub < np.median(sub) - 40) * 255
        hole = cv2.dilate(hole, np.ones((3, 3), np.uint8), iterations=int(rng.integers(1, 3)))
        out[ry0:ry1, rx0:rx1] = cv2.inpaint(roi, hole, 3, cv2.INPAINT_TELEA)
        method = "inpaint"
    return img, out, {"method": method}


def doc_splice(rng, img, items):
    """Paste a line from another rendered+scanned document over a line of this one."""
    h, w = img.shape[:2]
    page2, items2, _ = render_document(rng, h, w)
    doc2 = scan(rng, page2)
    src = _pick(rng, items2)
    tgt = _pick(rng, items)
    sx0, sy0, sx1, sy1 = src.box
    sx0, sy0, sx1, sy1 = max(0, sx0 - 3), max(0, sy0 - 3), min(w, sx1 + 3), min(h, sy1 + 3)
    patch = doc2[sy0:sy1, sx0:sx1].astype(np.float32)
    matched = rng.random() < 0.6
    if matched:
        med, _ = _ring_stats(img, tgt.box)
        med2, _ = _ring_stats(doc2, src.box)
        patch = patch + (med - med2)
    ty0, tx0 = max(0, tgt.box[1] - 3), max(0, tgt.box[0] - 3)
    ph, pw = min(patch.shape[0], h - ty0), min(patch.shape[1], w - tx0)
    out = img.copy()
    out[ty0:ty0 + ph, tx0:tx0 + pw] = np.clip(np.rint(patch[:ph, :pw]), 0, 255).astype(np.uint8)
    return img, out, {"text": src.text, "colour_matched": bool(matched)}


DOCUMENT_OPS = {
    "doc_text_replace": (text_replace, 3.0),
    "doc_char_copy_move": (char_copy_move, 1.5),
    "doc_erase": (erase, 1.5),
    "doc_splice": (doc_splice, 1.5),
}


def rescale_items(items: list[TextItem], sy: float, sx: float, h: int, w: int) -> list[TextItem]:
    """Text geometry after the page image was resized by (sy, sx); boxes padded by 1 px for rounding."""
    s = (sy + sx) / 2
    out = []
    for it in items:
        x0, y0, x1, y1 = it.box
        box = (max(0, int(x0 * sx) - 1), max(0, int(y0 * sy) - 1), min(w, int(np.ceil(x1 * sx)) + 1),
               min(h, int(np.ceil(y1 * sy)) + 1))
        out.append(TextItem(int(round(it.x * sx)), int(round(it.y * sy)), it.text, it.font,
                            max(6, int(round(it.size * s))), it.ink, box))
    return out
