"""Feature stores: built once from the released feature files, then read by image id, fast.

`store.py` holds the format, the reader (`FeatureStore`) and the resumable writer;
`builders.py` the builds from fc `.npy` folders, region TSVs and CLIP image towers;
`__main__.py` the command line (`python -m vlprobe_jax.data.feature_store build|info`).
"""

from vlprobe_jax.data.feature_store.builders import (build_clip_store, build_fc_store,
                                                     build_region_store, clip_embed_fn,
                                                     region_arrays)
from vlprobe_jax.data.feature_store.store import (BUILD_COMMAND, DEFAULT_SHARD_SIZE, FORMAT,
                                                  KINDS, MANIFEST, VERSION, FeatureStore,
                                                  StoreColumn, StoreWriter)

__all__ = ["BUILD_COMMAND", "DEFAULT_SHARD_SIZE", "FORMAT", "KINDS", "MANIFEST", "VERSION",
           "FeatureStore", "StoreColumn", "StoreWriter", "build_clip_store", "build_fc_store",
           "build_region_store", "clip_embed_fn", "region_arrays"]
