"""Time and peak memory of ``--mode sr`` on one photo of 0.3, 3 and 12 megapixels::

    python bench/photo_memory.py [--model ecdp_x4_student] [--tag x4]

Each photo is smoothed noise with one held-out ``celeba_id128`` face of 24 px pasted in
(the size of the faces of a surveillance frame); each case is one whole ``main.py --mode sr``
process, so the figures are what a user sees: wall seconds and the process's peak resident
memory (``os.wait4``'s ``ru_maxrss``), with the default upscale (``sr.upscale=0``: the model's
factor, the long side capped at ``sr.upscale_max_side``) and, for the largest photo, at 4x
(a 16000x12000 output). Writes ``bench/results/photo_memory_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from utils.paths import shared_data_dir  # noqa: E402

SIZES = {'0.3 MP': (480, 640), '3 MP': (1500, 2000), '12 MP': (3000, 4000)}
FACE_PX = 24  # Side of the pasted face crop (a 128 px celeba_id128 crop, shrunk).
CASES = [(label, 0) for label in SIZES] + [('12 MP', 4)]  # (photo, sr.upscale)


def make_photo(height: int, width: int, face: np.ndarray) -> np.ndarray:
    """Smooth noise made at 1/8 size and enlarged (cheap at 12 MP), the face in the middle."""
    rng = np.random.default_rng(0)
    small = ndimage.gaussian_filter(rng.uniform(0, 255, (height // 8, width // 8, 3)), (2, 2, 0))
    photo = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((width, height)))
    photo = photo.copy()
    top, left = (height - FACE_PX) // 2, (width - FACE_PX) // 2
    photo[top : top + FACE_PX, left : left + FACE_PX] = face
    return photo


def run_case(photo: Path, out: Path, model: str, upscale: int) -> dict:
    """One ``main.py --mode sr`` process: its seconds, peak memory and what it wrote."""
    command = [sys.executable, str(REPO / 'main.py'), '--mode', 'sr', '--sr.model', model,
               '--sr.input', str(photo), '--sr.output', str(out),
               f'--sr.upscale={upscale}']  # fmt: skip
    start = time.perf_counter()
    log = out.with_name(out.name + '.log')
    with open(log, 'wb') as stderr:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)  # This child's own peak memory.
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(f'{command} failed:\n{log.read_text()[-3000:]}')
    manifest = json.loads((out / 'manifest.json').read_text())
    (record,) = manifest['photos']
    written = out / record['outputs'][0]
    size = png_size(written)
    return {'seconds': round(seconds, 1), 'scale': record['scale'], 'faces': len(record['faces']),
            'output': f'{size[0]}x{size[1]}', 'png_mb': round(written.stat().st_size / 2**20, 1),
            'peak_gb': round(usage.ru_maxrss / 2**20, 2)}  # fmt: skip


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header (Pillow refuses to open a 192-megapixel image as
    a possible decompression bomb)."""
    header = path.read_bytes()[:24]
    return struct.unpack('>II', header[16:24])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='ecdp_x4_student')
    parser.add_argument('--tag', default='x4')
    args = parser.parse_args()
    files = sorted((shared_data_dir() / 'celeba_id128' / 'images').glob('*.png'))
    with Image.open(files[-1]) as image:
        face = np.asarray(image.convert('RGB').resize((FACE_PX, FACE_PX), Image.LANCZOS))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, upscale in CASES:
            photo = Path(tmp) / f'{label.replace(" ", "")}.png'
            if not photo.exists():
                Image.fromarray(make_photo(*SIZES[label], face)).save(photo)
            result = run_case(photo, Path(tmp) / f'out_{label}_{upscale}', args.model, upscale)
            rows.append({'photo': label, 'upscale': upscale or 'default', **result})
            print(rows[-1], flush=True)
    write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    out = REPO / 'bench' / 'results' / f'photo_memory_{args.tag}'
    out.with_suffix('.json').write_text(json.dumps({'model': args.model, 'rows': rows}, indent=1))
    lines = [f'# --mode sr time and peak memory per photo size ({args.model})', '',
             f'`python bench/photo_memory.py --model {args.model} --tag {args.tag}`: one photo '
             f'with one {FACE_PX} px face, each case a whole process on {os.cpu_count()} cores.',
             '', '| photo | sr.upscale | scale used | output | PNG MB | wall s | peak RSS GB |',
             '|---|---|---|---|---|---|---|']  # fmt: skip
    for r in rows:
        lines.append(f'| {r["photo"]} | {r["upscale"]} | {r["scale"]} | {r["output"]} | '
                     f'{r["png_mb"]} | {r["seconds"]} | {r["peak_gb"]} |')  # fmt: skip
    out.with_suffix('.md').write_text('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
