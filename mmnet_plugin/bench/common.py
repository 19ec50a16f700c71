"""The harness's small helpers in one import (each lives in its own module):

- :mod:`.files`: atomic writes, :func:`safe_torch_load` and :class:`CheckpointError`;
- :mod:`.fingerprints`: configuration keys, derived seeds, episode-stream fingerprints and
  data-set digests;
- :mod:`.identity`: the code that made a result (source digest, git commit in a checkout),
  library versions and the device record;
- :mod:`.meters`: peak memory, a CUDA-synchronised stopwatch, quiet imports.

Nothing here touches global random state.
"""

from __future__ import annotations

from .files import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    safe_torch_load,
)
from .fingerprints import ImageDigest, config_key, dataset_digest, derive_seed, stream_fingerprint
from .identity import (
    PACKAGE_DIR,
    REPO_ROOT,
    checkout_root,
    code_identity,
    device_description,
    git_commit,
    source_digest,
    versions,
)
from .meters import PeakMemory, Stopwatch, load_average, quiet_import

__all__ = [
    "PACKAGE_DIR",
    "REPO_ROOT",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_bytes",
    "atomic_torch_save",
    "checkout_root",
    "config_key",
    "derive_seed",
    "versions",
    "git_commit",
    "device_description",
    "load_average",
    "PeakMemory",
    "Stopwatch",
    "quiet_import",
    "CheckpointError",
    "safe_torch_load",
    "source_digest",
    "code_identity",
    "dataset_digest",
    "ImageDigest",
    "stream_fingerprint",
]
