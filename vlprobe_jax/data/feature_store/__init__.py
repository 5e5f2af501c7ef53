"""Feature stores: built once from the released feature files, then read by image id, fast.

`store.py` holds the format, the reader (`FeatureStore`) and the resumable writer;
`builders.py` the builds from fc `.npy` folders, region TSVs, CLIP / SigLIP image towers and image
folders (resized pixels for SigLIP and BLIP);
`__main__.py` the command line (`python -m vlprobe_jax.data.feature_store build|info`).
"""

from vlprobe_jax.data.feature_store.builders import (RESIZES, build_clip_store, build_fc_store,
                                                     build_pixel_store, build_region_store,
                                                     clip_embed_fn, load_square_image,
                                                     region_arrays, siglip_embed_fn)
from vlprobe_jax.data.feature_store.store import (BUILD_COMMAND, DEFAULT_SHARD_SIZE, FORMAT,
                                                  KINDS, MANIFEST, VERSION, FeatureStore,
                                                  StoreColumn, StoreWriter)

__all__ = ["BUILD_COMMAND", "DEFAULT_SHARD_SIZE", "FORMAT", "KINDS", "MANIFEST", "VERSION",
           "FeatureStore", "RESIZES", "StoreColumn", "StoreWriter", "build_clip_store",
           "build_fc_store", "build_pixel_store", "build_region_store", "clip_embed_fn",
           "load_square_image", "region_arrays", "siglip_embed_fn"]
