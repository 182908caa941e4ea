"""Write a MedMNIST-3D-like .npz of blob shapes to train on, as a user's own data would be.

    python scripts/make_blobs3d.py blobs3d.npz            # 900/150/300 volumes of 16^3
    python scripts/make_blobs3d.py small.npz --size 12 --counts 200 40 80

Layout: ``{train,val,test}_images`` [n, size, size, size] float32 and
``{train,val,test}_labels`` [n, 1] int64 (3 classes: ball, disc, rod).
"""

from __future__ import annotations

import argparse

import numpy as np

from ndformer.tasks.synthetic import blob_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the .npz file to write")
    parser.add_argument("--size", type=int, default=16, help="voxels per axis (default 16)")
    parser.add_argument("--counts", type=int, nargs=3, default=(900, 150, 300),
                        metavar=("TRAIN", "VAL", "TEST"), help="volumes per split")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arrays = {}
    for offset, (split, count) in enumerate(
        zip(("train", "val", "test"), args.counts, strict=True)
    ):
        images, labels = blob_shapes(count, args.size, args.seed * 3 + offset)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: {' / '.join(map(str, args.counts))} volumes of {args.size}^3")


if __name__ == "__main__":
    main()
