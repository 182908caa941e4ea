"""Write one generated room of the ``scenes-points`` task as a labelled .ply (or .npz).

    python scripts/make_room.py --points 20000 --seed 7 --out room.ply

The scene comes from the same generator as the task (seeds of the task's splits are
derived differently, so a small seed here is not one of its training scenes).
"""

from __future__ import annotations

import argparse

import numpy as np

from ndformer.tasks import write_ply
from ndformer.tasks.scenes import room_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20000, help="points in the scene")
    parser.add_argument("--seed", type=int, default=7, help="seed of the room")
    parser.add_argument("--out", required=True, help="a .ply or .npz path")
    args = parser.parse_args()
    xyz, rgb, label = room_scene(args.points, args.seed)
    if args.out.endswith(".npz"):
        np.savez_compressed(args.out, xyz=xyz, rgb=rgb, label=label)
    else:
        write_ply(args.out, xyz, label, rgb)
    print(f"wrote {args.out}: {len(xyz)} points, classes {sorted(set(label.tolist()))}")


if __name__ == "__main__":
    main()
