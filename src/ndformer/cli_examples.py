"""The examples shown under ``--help`` of the training commands."""

EXAMPLES_TRAIN = """
Examples:

  ndformer train --task digits --model vit-tiny --steps 1000 --out runs/digits

  ndformer train --task pathfinder2d-32 --model vit-tiny --pattern "neighborhood(7)" --steps 2000 --out runs/x

  ndformer train --task shapes3d-16 --model hvit-tiny --pattern "window(4)" --teacher conv --out runs/s

  ndformer train --task scenes-points --model volt-tiny --steps 800 --out runs/rooms  (point clouds)

  ndformer train --data my_scans/ --model volt-tiny --out runs/scans      (folder of labelled .ply/.npz)

  ndformer train --data my_images/ --model vit-small --out runs/mine      (folder of class folders)

  ndformer train ... --out runs/x --resume                                (continue a stopped run)
"""  # noqa: E501

EXAMPLES_EVALUATE = """
Examples:

  ndformer evaluate runs/x                    (the run's own task, test split)

  ndformer evaluate runs/x --data other.npz   (another data set with the same layout)
"""

EXAMPLES_PREDICT = """
Examples:

  ndformer train --task scenes-points --model volt-tiny --out runs/rooms

  ndformer predict runs/rooms scene.ply --out labels.ply    (x, y, z, label colours, label)

  ndformer predict runs/rooms scene.ply --out labels.ply --plot labels.png

  ndformer train --task organs3d --model segformer3d-tiny --out runs/organs

  ndformer predict runs/organs ct.nii.gz --out labels.nii.gz --roi 32 --overlap 0.25

  ndformer predict runs/rooms scan.npz --out labels.npz     (npz: xyz [n, 3], optional rgb)
"""

EXAMPLES_ARENA = """
Examples:

  ndformer arena                               (the default arena, about 7 minutes on 2 cores)

  ndformer arena --task pathfinder2d-32 --patterns full "window(8)" "neighborhood(7)" --minutes 30

  ndformer arena --task shapes3d-16 --patterns full "window(4)" --steps 800 --seeds 3

  ndformer arena --budget flops 2e14 --patterns full "neighborhood(5)"   (equal training FLOPs)

  ndformer arena --resume                      (after Ctrl-C or a crash: finished entries stay)

  ndformer arena --model vit-tiny --overrides '{"patch": 2}' --patterns full --token-merging 8

  ndformer arena --patterns full --keep-rate 0.7 0.5     (full attention with EViT fusion)

  ndformer arena --data my_scans.npz --model hvit-tiny --patterns "window(4)" "window(7)"

  ndformer arena --task scenes-points --model volt-tiny --batch-size 4 --patterns full "serialized('hilbert', 64)"

  ndformer arena --task organs3d --model vit-tiny --patterns full "neighborhood(3)" --models segformer3d-tiny conv-tiny --batch-size 8
"""  # noqa: E501

EXAMPLES_EXPORT = """
Examples:

  ndformer export runs/x --out model.onnx        (standard operators; checked with onnxruntime)

  ndformer export runs/x --out model.pt2         (torch.export; load after `import ndformer`)
"""
