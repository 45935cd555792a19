"""The six-face surveillance frame of issue 22, before and after::

    python bench/wild_frame.py [--model auto] [--tag after] [--repo CHECKOUT]
        [-- --sr.opt=value ...]

A 320x240 frame of smoothed noise holding six held-out ``celeba_id128`` test faces of six
people (YuNet box widths :data:`WIDTHS`, 10 to 28 px), one of them rolled by :data:`ROLL`
degrees, saved as JPEG quality :data:`JPEG_QUALITY`, goes through one ``main.py --mode sr``
process with the shipped model. Per placed face: whether it was found, its box width, the LR
scale (LR crop pixels per photo pixel), the model that restored it (or plain resizing, and
why), and the roll left after alignment (the angle of the detected eye line minus the placed
roll). Writes
``bench/results/wild_frame_<tag>.{json,md}`` and ``wild_frame_<tag>.jpg``: per face, the
frame enlarged by bicubic | the pasted SR | the HR face, at the output's scale.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from utils.paths import shared_data_dir  # noqa: E402

FRAME = (240, 320)  # Height, width.
#: YuNet box widths of the six faces (px); a celeba_id128 crop's YuNet box is 0.58 of its side.
WIDTHS = (10, 13, 16, 20, 24, 28)
BOX_OF_CROP = 0.58
ROLL = 20.0  # Degrees, counter-clockwise, of the face at ROLLED.
ROLLED = 4
JPEG_QUALITY = 60
CELLS = ((60, 50), (160, 50), (260, 50), (60, 160), (160, 160), (260, 160))  # Centres (x, y).
SHEET_QUALITY = 90  # JPEG quality of the picture (small in the repository).
FOUND_WITHIN = 0.5  # A detection is a placed face when its box centre is this many widths away.


def _faces(count: int) -> list[Path]:
    """``count`` test faces of distinct identities, spread over the split."""
    root = shared_data_dir() / 'celeba_id128'
    with open(root / 'faces.csv') as f:
        rows = [r for r in csv.DictReader(f) if r['split'] == 'test']
    chosen, seen = [], set()
    for row in rows[:: max(1, len(rows) // (4 * count))]:
        if row['identity'] not in seen:
            seen.add(row['identity'])
            chosen.append(root / row['file'])
    return chosen[:count]


def make_frame(paths: list[Path]) -> tuple[np.ndarray, list[dict]]:
    """The frame (uint8) and where each face went (centre, crop side, roll)."""
    noise = np.random.default_rng(0).uniform(0, 1, (*FRAME, 3))
    smooth = ndimage.gaussian_filter(noise, (6, 6, 0))
    frame = np.clip((smooth - smooth.mean()) * 4 + 0.5, 0, 1) * 255
    placed = []
    for k, (path, width, (cx, cy)) in enumerate(zip(paths, WIDTHS, CELLS, strict=True)):
        side = round(width / BOX_OF_CROP)
        roll = ROLL if k == ROLLED else 0.0
        with Image.open(path) as image:
            face = image.convert('RGB').rotate(roll, Image.BICUBIC, fillcolor=(128, 128, 128))
        face = np.asarray(face.resize((side, side), Image.LANCZOS), np.float64)
        yy, xx = np.mgrid[:side, :side] / (side - 1) * 2 - 1
        alpha = np.clip((1 - np.hypot(xx / 0.95, yy) ** 2) * 4, 0, 1)[..., None]
        top, left = cy - side // 2, cx - side // 2
        region = frame[top : top + side, left : left + side]
        region[:] = alpha * face + (1 - alpha) * region
        placed.append({'file': path.name, 'centre': [cx, cy], 'crop_side': side,
                       'width': width, 'roll': roll})  # fmt: skip
    return frame.astype(np.uint8), placed


def _match(placed: list[dict], found: list[dict]) -> list[dict | None]:
    """The detection of each placed face (nearest box centre within FOUND_WITHIN widths)."""
    matched = []
    for p in placed:
        best, distance = None, FOUND_WITHIN * p['crop_side']
        for face in found:
            x, y, w, h = face['box']
            d = float(np.hypot(x + w / 2 - p['centre'][0], y + h / 2 - p['centre'][1]))
            if d < distance:
                best, distance = face, d
        matched.append(best)
    return matched


def _restored_by(face: dict, model: str) -> str:
    """The model a face's manifest record names (a size ladder's choice; older checkouts
    name none: the one model), or plain resizing."""
    if face.get('method', 'sr') != 'sr':
        return 'resize (bicubic)'
    return face.get('model') or model


def _roll(landmarks: list) -> float:
    """Counter-clockwise roll (degrees) of the eye line of five landmarks (image-left eye
    first; image y points down)."""
    (lx, ly), (rx, ry) = landmarks[0], landmarks[1]
    return float(np.degrees(np.arctan2(-(ry - ly), rx - lx)))


def run_sr(frame_path: Path, out: Path, args: argparse.Namespace) -> dict:
    """One ``main.py --mode sr`` process of the checkout ``args.repo``: its manifest."""
    command = [sys.executable, str(args.repo / 'main.py'), '--mode', 'sr', '--sr.model',
               args.model, '--sr.input', str(frame_path), '--sr.output', str(out),
               *args.extra]  # fmt: skip
    subprocess.run(command, cwd=args.repo, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / 'manifest.json').read_text())


def sheet(frame: np.ndarray, pasted: np.ndarray, placed: list[dict], paths: list[Path]) -> Image:
    """Per face: bicubic of the frame | pasted SR | the HR face, each at the output's scale."""
    scale = pasted.shape[0] // frame.shape[0]
    bicubic = Image.fromarray(frame).resize(pasted.shape[1::-1], Image.BICUBIC)
    tile = max(p['crop_side'] for p in placed) * scale
    out = Image.new('RGB', (3 * tile, len(placed) * tile), 'white')
    for row, (p, path) in enumerate(zip(placed, paths, strict=True)):
        half = p['crop_side'] * scale // 2
        cx, cy = p['centre'][0] * scale, p['centre'][1] * scale
        box = (cx - half, cy - half, cx + half, cy + half)
        with Image.open(path) as hr:
            hr = hr.convert('RGB').rotate(p['roll'], Image.BICUBIC, fillcolor=(128, 128, 128))
            parts = [bicubic.crop(box), Image.fromarray(pasted).crop(box), hr]
        for col, part in enumerate(parts):
            out.paste(part.resize((tile, tile), Image.LANCZOS), (col * tile, row * tile))
    ImageDraw.Draw(out).text((2, 2), 'bicubic | SR | HR', fill=(255, 255, 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='auto', help='--sr.model: a shipped model, or auto')
    parser.add_argument('--tag', default='after')
    parser.add_argument(
        '--repo',
        type=Path,
        default=REPO,
        help='checkout whose main.py runs (e.g. a worktree of an older commit)',
    )
    parser.add_argument('extra', nargs='*', help='more main.py flags, after --')
    args = parser.parse_args()
    paths = _faces(len(WIDTHS))
    frame, placed = make_frame(paths)
    results = REPO / 'bench' / 'results'
    with tempfile.TemporaryDirectory() as tmp:
        frame_path = Path(tmp) / 'frame.jpg'
        Image.fromarray(frame).save(frame_path, quality=JPEG_QUALITY)
        with Image.open(frame_path) as image:
            frame = np.asarray(image.convert('RGB'))
        manifest = run_sr(frame_path, Path(tmp) / 'out', args)
        (photo,) = manifest['photos']
        with Image.open(Path(tmp) / 'out' / photo['outputs'][0]) as image:
            pasted = np.asarray(image.convert('RGB'))
    rows = []
    for p, face in zip(placed, _match(placed, photo['faces']), strict=True):
        row = {**p, 'found': face is not None}
        if face is not None:
            row.update(box_width=round(face['box'][2], 1), lr_scale=round(face['lr_scale'], 2),
                       model=_restored_by(face, args.model),
                       why=face.get('why', ''), source=face['source'],
                       residual_roll=round(_roll(face['landmarks']) - p['roll'], 1))  # fmt: skip
        rows.append(row)
    stem = results / f'wild_frame_{args.tag}'
    sheet(frame, pasted, placed, paths).save(stem.with_suffix('.jpg'), quality=SHEET_QUALITY)
    extra_faces = len(photo['faces']) - sum(r['found'] for r in rows)
    record = {'model': args.model, 'repo': str(args.repo), 'extra': args.extra,
              'scale': photo.get('scale'), 'faces': rows, 'extra_faces': extra_faces}  # fmt: skip
    stem.with_suffix('.json').write_text(json.dumps(record, indent=1))
    write_table(stem.with_suffix('.md'), rows, args)


def write_table(path: Path, rows: list[dict], args: argparse.Namespace) -> None:
    extra = ' '.join(args.extra)
    lines = [f'# Six-face frame ({args.model}{", " + extra if extra else ""})', '',
             f'`python bench/wild_frame.py --model {args.model} --tag {args.tag}'
             f'{" -- " + extra if extra else ""}`: a {FRAME[1]}x{FRAME[0]} JPEG (quality '
             f'{JPEG_QUALITY}) with six held-out celeba_id128 faces; picture: '
             f'`{path.with_suffix(".jpg").name}` (bicubic | SR | HR per face).', '',
             '| face | placed width px | roll placed | found | box width px | LR scale | model '
             '| residual roll |', '|---|---|---|---|---|---|---|---|']  # fmt: skip
    for k, r in enumerate(rows):
        lines.append(f'| {k} | {r["width"]} | {r["roll"]:g} | {"yes" if r["found"] else "no"} | '
                     f'{r.get("box_width", "")} | {r.get("lr_scale", "")} | {r.get("model", "")} '
                     f'| {r.get("residual_roll", "")} |')  # fmt: skip
    path.write_text('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
