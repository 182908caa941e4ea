import os

import torch
from hypothesis import HealthCheck, settings

from ndformer._cache import kernel_cache

settings.register_profile(
    "default",
    max_examples=int(os.environ.get("NDFORMER_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("default")
torch.set_num_threads(min(2, torch.get_num_threads()))
# One build of the native kernels for the whole session, subprocesses included, however
# the tests move the task cache (NDFORMER_CACHE) to private folders.
os.environ.setdefault("NDFORMER_KERNEL_CACHE", str(kernel_cache()))
