"""Draw a trained run's segmentation of test volumes of its task next to their labels.

    python scripts/organs_figure.py runs/organs docs/models/organs3d.png --cases 0 1

Middle slices across each axis of every chosen test volume: the volume, its labels,
the prediction (``ndformer.viz.plot_volume_labels``), with each case's Dice per class.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory of a grid segmentation model")
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--cases", type=int, nargs="+", default=[0], help="test volumes")
    args = parser.parse_args()

    import matplotlib.pyplot as plt

    from ndformer.train import TrainConfig, load, predict, read_run, resolve_data
    from ndformer.train.metrics import class_dice, confusion
    from ndformer.viz import plot_volume_labels

    data = resolve_data(TrainConfig(**read_run(args.run)["train"]))
    model = load(args.run)
    images = []
    for case in args.cases:
        x, y = data.x["test"][case : case + 1], data.y["test"][case]
        pred = predict(model, data, x)[0]
        dice = class_dice(confusion(pred[None], y[None], data.num_classes))[0]
        scores = ", ".join(
            f"{name} {100 * float(d):.0f}"
            for name, d in zip(data.class_names, dice, strict=True)
            if not d.isnan()
        )
        figure = plot_volume_labels(x[0, 0], {"labels": y, "prediction": pred}, data.class_names)
        figure.suptitle(f"test case {case} - Dice (%): {scores}", fontsize=10)
        figure.canvas.draw()
        images.append(torch.from_numpy(np.asarray(figure.canvas.buffer_rgba()).copy()))
        plt.close(figure)
    height = max(i.shape[0] for i in images)
    padded = [torch.nn.functional.pad(i, (0, 0, 0, 0, 0, height - i.shape[0]), value=255)
              for i in images]  # fmt: skip
    plt.imsave(args.out, torch.cat(padded, dim=1).numpy())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
