"""LFW View-2 check of the identity pipeline: YuNet alignment + SFace, 10-fold accuracy, AUC.

    python bench/lfw_check.py [--max-pairs-per-fold N] [--threads T] [--out PATH]

Prints accuracy mean +- std and AUC and writes them to ``bench/results/lfw_sface.json``
(the full protocol takes a few minutes on 2 CPU cores). Reference measured on this kind of
machine for the shared data: 99.42% +- 0.40, AUC 0.9985; the pipeline must reach >= 99.0%.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from evaluation.face import get_embedder  # noqa: E402
from evaluation.lfw import lfw_verification  # noqa: E402


def main() -> None:
    """Runs the protocol and writes the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--max-pairs-per-fold',
        type=int,
        default=None,
        help='same and different pairs kept per fold (default: all 300)',
    )
    parser.add_argument('--threads', type=int, default=0, help='onnxruntime threads (0: auto)')
    parser.add_argument('--out', type=Path, default=REPO / 'bench' / 'results' / 'lfw_sface.json')
    args = parser.parse_args()
    embedder = get_embedder('sface', num_threads=args.threads)
    cpu_start = time.process_time()
    result = lfw_verification(
        embedder=embedder, max_pairs_per_fold=args.max_pairs_per_fold, log=True
    )
    result.pop('scores')
    result['cpu_seconds'] = time.process_time() - cpu_start
    result['onnxruntime_threads'] = args.threads
    result['embedder'] = 'sface (face_recognition_sface_2021dec_int8bq, float32-dequantised)'
    result['detector'] = 'yunet (face_detection_yunet_2023mar_int8bq), central face'
    result['versions'] = {p: metadata.version(p) for p in ('onnxruntime', 'onnx', 'numpy')}
    result['machine'] = platform.processor() or platform.machine()
    print(
        f'LFW View-2 ({result["n_pairs"]} pairs, {result["n_images"]} images): accuracy '
        f'{100 * result["accuracy_mean"]:.2f}% +- {100 * result["accuracy_std"]:.2f}, '
        f'AUC {result["auc"]:.4f}, fallbacks {result["n_fallback"]}, '
        f'{result["seconds"]:.0f} s'
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
