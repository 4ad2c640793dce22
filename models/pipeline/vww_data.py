"""Visual-wake-words data: 96x96 RGB scenes composed from emoji glyphs, or COCO-VWW folders when present.

Synthetic set (the default): emoji designs of three independent artist sets, grouped by the Unicode
emoji-test.txt groups (Debian's ``unicode-data``): Noto Color Emoji (Debian's ``fonts-noto-color-emoji``),
Twemoji (npm ``emoji-datasource-twitter``, 64-pixel PNGs, CC BY 4.0) and OpenMoji (npm ``openmoji``, SVGs
rasterised with ``rsvg-convert`` from Debian's ``librsvg2-bin``, CC BY-SA 4.0); ``make models`` fetches the two
npm tarballs into build/npm/ with ``npm pack``. A scene draws all its glyphs from one source. *Person* glyphs
are the People & Body subgroups person, person-gesture, person-role, person-fantasy, person-activity,
person-sport, person-resting and family, in all skin tones. *Non-person* glyphs are Animals & Nature, Food & Drink, Travel & Places, Activities and Objects.
Faces (Smileys & Emotion), hands, body parts, person symbols, symbols and flags are left out of both classes
as ambiguous. Glyphs are split by base emoji (skin tones of one emoji stay in one split, and one base emoji
falls in the same split in every source), so the test set shows figures the model never saw in any design. A scene is a procedural background (gradients, horizons, blocks, smooth noise,
stripes) with 0-3 non-person glyphs as clutter and, for the *person* class, 1-2 person glyphs on top; glyphs
are scaled (people 32-88 px, things 18-80 px), rotated a little, may be cut by the frame or overlap; the scene then gets colour jitter,
blur, noise and low-resolution resampling. A quarter of the training scenes are "easy" (one large glyph, no
clutter); validation and test scenes never are. Labels: 0 = no person, 1 = person (MLPerf Tiny vww01 order).

Real data: ``--vww-dir DIR`` with ``DIR/person/*`` and ``DIR/non_person/*`` images (the Visual Wake Words
split of COCO), resized to 96x96, split 80/10/10 with the seed.
"""

import logging
import io
import subprocess
import tarfile
from pathlib import Path

import numpy as np

log = logging.getLogger("pipeline.vww")

SIZE = 96
LABELS = ("non_person", "person")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NPM_DIR = Path(__file__).resolve().parents[2] / "build" / "npm"
#: Emoji design sources: Noto from the Debian font, the others from npm tarballs (package, version, image folder).
NPM_SOURCES = {"twemoji": ("emoji-datasource-twitter", "16.0.0", "package/img/twitter/64/"),
               "openmoji": ("openmoji", "17.0.0", "package/color/svg/")}
SOURCES = ("noto",) + tuple(NPM_SOURCES)
PERSON_SUBGROUPS = {"person", "person-gesture", "person-role", "person-fantasy", "person-activity",
                    "person-sport", "person-resting", "family"}
NON_PERSON_GROUPS = {"Animals & Nature", "Food & Drink", "Travel & Places", "Activities", "Objects"}
GLYPH_PX = 80                     # glyphs are cached at this size, then scaled per scene
PERSON_PX = (32, 88)              # person glyph size range in a scene (pixels of the 96-pixel side)
THING_PX = (18, 80)               # non-person glyph size range
LOWRES_PX = (48, 72)              # the "low-resolution sensor" step resamples through this size range


def emoji_catalogue(path=EMOJI_TEST):
    """[(characters, base name, label, subgroup)] for every fully-qualified emoji in the two classes."""
    if not path.is_file():
        raise SystemExit(f"pipeline: {path} is missing — apt-get install unicode-data fonts-noto-color-emoji")
    group = subgroup = None
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and "; fully-qualified" in line:
            codes, rest = line.split(";", 1)
            chars = "".join(chr(int(c, 16)) for c in codes.split())
            name = rest.split("#", 1)[1].strip().split(" ", 2)[2]      # after the glyph and "E1.0"
            base = name.split(":")[0].strip()
            if group == "People & Body" and subgroup in PERSON_SUBGROUPS:
                out.append((chars, base, 1, subgroup))
            elif group in NON_PERSON_GROUPS:
                out.append((chars, base, 0, subgroup))
    return out


def _square(image):
    """The RGBA PIL ``image`` cropped to its drawn pixels, centred on a transparent square, GLYPH_PX side;
    None when nothing is drawn or the drawing is a sequence shown as several glyphs side by side."""
    from PIL import Image
    box = image.getbbox()
    if box is None:
        return None
    w, h = box[2] - box[0], box[3] - box[1]
    if w > 1.4 * h or w < 20 or h < 20:        # the font drew a sequence as several glyphs: skip it
        return None
    glyph = image.crop(box)
    side = max(w, h)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(glyph, ((side - w) // 2, (side - h) // 2))
    return np.asarray(square.resize((GLYPH_PX, GLYPH_PX), Image.LANCZOS))


def _noto_images(catalogue):
    from PIL import Image, ImageDraw, ImageFont
    if not EMOJI_FONT.is_file():
        raise SystemExit(f"pipeline: {EMOJI_FONT} is missing — apt-get install fonts-noto-color-emoji")
    font = ImageFont.truetype(str(EMOJI_FONT), 109)
    for chars, *_ in catalogue:
        canvas = Image.new("RGBA", (400, 160), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((8, 8), chars, font=font, embedded_color=True)
        yield canvas


def _codepoint_key(codes):
    """The lookup key of an emoji's code points: lower-case hex joined by '-', variation selector 16 dropped."""
    return "-".join(f"{c:x}" for c in codes if c != 0xFE0F)


def npm_tarball(source):
    package, version, _ = NPM_SOURCES[source]
    return NPM_DIR / f"{package}-{version}.tgz"


def _npm_images(catalogue, source):
    """The source's image of each catalogue emoji (None where it has none), read from its npm tarball."""
    from PIL import Image
    package, version, folder = NPM_SOURCES[source]
    path = npm_tarball(source)
    if not path.is_file():
        raise SystemExit(f"pipeline: {path} is missing — run `make models`, or: "
                         f"mkdir -p {NPM_DIR} && cd {NPM_DIR} && npm pack {package}@{version}")
    files = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name.startswith(folder) and "/" not in member.name[len(folder):]:
                stem = member.name[len(folder):].rsplit(".", 1)[0]
                files[_codepoint_key(int(c, 16) for c in stem.split("-"))] = tar.extractfile(member).read()
    for chars, *_ in catalogue:
        data = files.get(_codepoint_key(ord(c) for c in chars))
        if data is None:
            yield None
        elif folder.endswith("svg/"):
            try:
                png = subprocess.run(["rsvg-convert", "-w", "160", "-h", "160"], input=data,
                                     capture_output=True, check=True).stdout
            except FileNotFoundError:
                raise SystemExit("pipeline: rsvg-convert is missing (it draws the OpenMoji SVGs) — "
                                 "apt-get install librsvg2-bin") from None
            yield Image.open(io.BytesIO(png)).convert("RGBA")
        else:
            yield Image.open(io.BytesIO(data)).convert("RGBA")


def render_glyphs(catalogue, source="noto"):
    """(RGBA uint8 array GLYPH_PX square, base, label, subgroup) for the emoji that ``source`` (one of
    SOURCES) draws as one glyph."""
    images = _noto_images(catalogue) if source == "noto" else _npm_images(catalogue, source)
    glyphs = []
    for (chars, base, label, subgroup), image in zip(catalogue, images):
        square = None if image is None else _square(image)
        if square is not None:
            glyphs.append((square, base, label, subgroup))
    return glyphs


def split_by_base(glyphs, seed, fractions=(0.75, 0.1, 0.15), bases_of=None):
    """{split: {label: [(glyph array, subgroup)]}}, every base emoji (all its skin tones) in one split.

    ``bases_of``: the glyphs whose base emoji are split (default ``glyphs``); a base emoji only in ``glyphs``
    goes to training. With the Noto glyphs here, every source splits the base emoji as Noto alone does, so a
    base emoji held out is held out in every design.
    """
    rng = np.random.default_rng(seed)
    out = {s: {0: [], 1: []} for s in ("train", "val", "test")}
    for label in (0, 1):
        bases = sorted({b for _, b, lab, _ in (glyphs if bases_of is None else bases_of) if lab == label})
        order = [bases[i] for i in rng.permutation(len(bases))]
        n_train = int(round(fractions[0] * len(order)))
        n_val = int(round(fractions[1] * len(order)))
        where = {b: ("train" if i < n_train else "val" if i < n_train + n_val else "test")
                 for i, b in enumerate(order)}
        for g, b, lab, sub in glyphs:
            if lab == label:
                out[where.get(b, "train")][label].append((g, sub))
    return out


# -- scenes -------------------------------------------------------------------------------------------------

def _smooth_noise(rng, cells):
    from PIL import Image
    small = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((SIZE, SIZE), Image.BICUBIC)).astype(np.float32)


def background(rng):
    """A 96x96x3 float32 procedural background in [0, 255]."""
    kind = rng.integers(5)
    y = np.linspace(0, 1, SIZE, dtype=np.float32)[:, None, None]
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if kind == 0:                                   # vertical gradient
        img = c1 * (1 - y) + c2 * y + np.zeros((SIZE, SIZE, 3), np.float32)
    elif kind == 1:                                 # sky over ground with a horizon
        horizon = rng.uniform(0.3, 0.8)
        img = np.where(y < horizon, c1 * (1 - 0.4 * y), c2 * (0.7 + 0.3 * y)) + np.zeros((SIZE, SIZE, 3))
    elif kind == 2:                                 # smooth noise (foliage, clouds, carpet)
        img = 0.5 * _smooth_noise(rng, int(rng.integers(3, 24))) + 0.5 * c1
    elif kind == 3:                                 # stripes or tiles
        period = rng.uniform(6, 30)
        xx = np.arange(SIZE)[None, :, None]
        yy = np.arange(SIZE)[:, None, None]
        pattern = ((xx // period + (yy // period) * rng.integers(0, 2)) % 2).astype(np.float32)
        img = c1 * pattern + c2 * (1 - pattern)
    else:                                           # blocks (buildings, furniture, shelves)
        img = np.zeros((SIZE, SIZE, 3), np.float32) + c1
        for _ in range(rng.integers(3, 12)):
            x0, y0 = rng.integers(0, SIZE, 2)
            w, h = rng.integers(8, 60, 2)
            img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
    img = img + rng.normal(0, rng.uniform(0, 12), (SIZE, SIZE, 3))
    return np.clip(img, 0, 255).astype(np.float32)


def _paste(rng, img, glyph, size_px):
    from PIL import Image
    g = Image.fromarray(glyph)
    if rng.random() < 0.5:
        g = g.transpose(Image.FLIP_LEFT_RIGHT)
    g = g.rotate(float(rng.uniform(-25, 25)), resample=Image.BILINEAR, expand=False)
    g = np.asarray(g.resize((size_px, size_px), Image.BILINEAR)).astype(np.float32)
    x0 = int(rng.integers(-size_px // 3, SIZE - 2 * size_px // 3))
    y0 = int(rng.integers(-size_px // 3, SIZE - 2 * size_px // 3))
    xs, ys = max(0, x0), max(0, y0)
    xe, ye = min(SIZE, x0 + size_px), min(SIZE, y0 + size_px)
    patch = g[ys - y0:ye - y0, xs - x0:xe - x0]
    alpha = patch[..., 3:4] / 255.0
    img[ys:ye, xs:xe] = img[ys:ye, xs:xe] * (1 - alpha) + patch[..., :3] * alpha


def scene(rng, label, people, things, easy=False):
    """One 96x96x3 uint8 scene of class ``label`` from the given (glyph, subgroup) lists, and the subgroups of
    the glyphs in it (the training-only auxiliary target).

    ``easy``: a single large glyph of the class and no clutter (used for part of the training set only, so the
    network first finds what a person glyph looks like; validation and test scenes are never easy).
    """
    from PIL import Image, ImageFilter
    img = background(rng)
    if easy:
        pool = people if label else things
        glyph, sub = pool[rng.integers(len(pool))]
        _paste(rng, img, glyph, int(rng.integers(44, 88)))
        layers, tags = [], {sub}
    else:
        n_things = int(rng.integers(0, 4)) if label else int(rng.integers(1, 5))
        layers = [(things[rng.integers(len(things))], False) for _ in range(n_things)]
        if label:
            layers += [(people[rng.integers(len(people))], True) for _ in range(1 + int(rng.random() < 0.3))]
        tags = {sub for (_, sub), _ in layers}
    # clutter first in random order, people last: a person may be cut by the frame but is never hidden
    order = [i for i in rng.permutation(len(layers)) if not layers[i][1]] + \
            [i for i in range(len(layers)) if layers[i][1]]
    for i in order:
        (glyph, _), is_person = layers[i]
        _paste(rng, img, glyph, int(rng.integers(*PERSON_PX) if is_person else rng.integers(*THING_PX)))
    img = img * rng.uniform(0.6, 1.3) + rng.uniform(-40, 40)               # brightness / contrast
    img = img * rng.uniform(0.85, 1.15, 3)                                  # white balance
    if rng.random() < 0.15:
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)         # greyscale camera
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        pil = pil.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5))))
    if rng.random() < 0.3:                                                  # low-resolution sensor
        small = int(rng.integers(*LOWRES_PX))
        pil = pil.resize((small, small), Image.BILINEAR).resize((SIZE, SIZE), Image.BILINEAR)
    out = np.asarray(pil).astype(np.float32) + rng.normal(0, rng.uniform(0, 8), (SIZE, SIZE, 3))
    return np.clip(np.round(out), 0, 255).astype(np.uint8), tags


def synthetic(seed, counts, easy_fraction=0.25, train_sources=SOURCES, test_sources=SOURCES):
    """Scenes per split, ``{split: (images uint8 (n, 96, 96, 3), labels, sources)}`` with ``counts[split]``
    images per class, the glyph counts per split and source, and ``{split: multi-hot (n, len(subgroups))}`` of
    the emoji subgroups in each scene with the subgroup names.

    Every scene draws its glyphs from one design source (``sources``: its index in SOURCES), the sources taking
    turns: training and validation scenes from ``train_sources``, test scenes from ``test_sources``, so a test
    source left out of ``train_sources`` is scored on designs of an artist set never seen in training. A
    fraction ``easy_fraction`` of the *training* scenes are easy ones (see :func:`scene`)."""
    for chosen in (train_sources, test_sources):
        unknown = set(chosen) - set(SOURCES)
        if unknown or not chosen:
            raise SystemExit(f"pipeline: emoji sources {', '.join(chosen) or '(none)'}: choose one or more of "
                             f"{', '.join(SOURCES)}")
    used = [s for s in SOURCES if s == "noto" or s in train_sources or s in test_sources]
    catalogue = emoji_catalogue()
    glyphs = {source: render_glyphs(catalogue, source) for source in used}
    parts = {source: split_by_base(glyphs[source], seed, bases_of=glyphs["noto"]) for source in used}
    subgroups = sorted({sub for source in used for *_, sub in glyphs[source]})
    column = {sub: i for i, sub in enumerate(subgroups)}
    stats = {source: {s: {LABELS[k]: len(v) for k, v in parts[source][s].items()} for s in parts[source]}
             for source in used}
    log.info("emoji glyphs per source and split: %s", stats)
    data, tags = {}, {}
    for i, split in enumerate(("train", "val", "test")):
        rng = np.random.default_rng(seed * 1000 + i)
        pool = [s for s in SOURCES if s in (test_sources if split == "test" else train_sources)]
        n = 2 * counts[split]
        labels = np.array([0, 1] * (n // 2), dtype=np.int64)
        sources = np.array([SOURCES.index(pool[(k // 2) % len(pool)]) for k in range(n)], dtype=np.int64)
        easy = rng.random(n) < (easy_fraction if split == "train" else 0.0)
        scenes = [scene(rng, int(y), parts[SOURCES[s]][split][1], parts[SOURCES[s]][split][0], bool(e))
                  for y, s, e in zip(labels, sources, easy)]
        multi_hot = np.zeros((n, len(subgroups)), dtype=np.float32)
        for row, (_, present) in enumerate(scenes):
            multi_hot[row, [column[sub] for sub in present]] = 1.0
        data[split] = (np.stack([img for img, _ in scenes]), labels, sources)
        tags[split] = multi_hot
    return data, stats, (tags, subgroups)


def vww_folders(root, seed, max_per_class=None):
    """COCO Visual Wake Words as ``root/person/*`` and ``root/non_person/*`` images, resized to 96x96."""
    from PIL import Image
    root = Path(root)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(LABELS):
        folder = root / name
        if not folder.is_dir():
            raise SystemExit(f"pipeline: {folder} is missing (expected {root}/person and {root}/non_person)")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if max_per_class:
            paths = [paths[i] for i in sorted(rng.permutation(len(paths))[:max_per_class])]
        for p in paths:
            with Image.open(p) as im:
                images.append(np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)))
            labels.append(label)
    images, labels = np.stack(images), np.array(labels, dtype=np.int64)
    order = rng.permutation(len(labels))
    n_train, n_val = int(0.8 * len(order)), int(0.1 * len(order))
    cut = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {s: (images[idx], labels[idx]) for s, idx in cut.items()}
