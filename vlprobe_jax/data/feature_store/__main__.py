"""The command line of the feature stores: `python -m vlprobe_jax.data.feature_store`.

  build --kind fc|regions|clip|pixels --source ... --out STORE   build or resume a store
  info STORE                                              its kind, size and fields

`main(argv)` parses, builds through `feature_store.build_*_store` and prints the result.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vlprobe_jax.data import feature_store


def _resolve(spec: str):
  """'package.module:name' -> the object."""
  module, _, name = spec.partition(":")
  if not module or not name:
    raise ValueError(f"--embed-fn must look like 'package.module:function'; found {spec!r}.")
  return getattr(importlib.import_module(module), name)


_EXAMPLES = """examples:
  build --kind fc --source data/cocotalk_fc --out stores/fc
  build --kind regions --source train2014_obj36.tsv val2014_obj36.tsv --out stores/obj36
  build --kind regions --source imgfeat.tsv --layout rosita --out stores/rosita
  build --kind clip --source coco/images --out stores/clip \\
        --checkpoint /path/to/clip-vit-base-patch32
  build --kind clip --source coco/images --out stores/siglip --resize square \\
        --embed-fn vlprobe_jax.data.feature_store:siglip_embed_fn \\
        --checkpoint /path/to/siglip-base-patch16-224
  build --kind pixels --source coco/images --out stores/pixels384 --image-size 384
  info stores/fc
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Keeps the examples' line breaks and shows defaults, except for required options."""

  def _get_help_string(self, action):
    if action.required or action.default in (None, argparse.SUPPRESS, False):
      return action.help
    return f"{action.help} (default: {action.default})"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m vlprobe_jax.data.feature_store",
      description="Build and inspect feature stores (random-access, memory-mapped features by "
                  "COCO image id). Builds resume: rerun the same command after an interruption.",
      formatter_class=_HelpFormatter, epilog=_EXAMPLES)
  commands = parser.add_subparsers(dest="command", required=True)
  build = commands.add_parser(
      "build", help="build or resume a store", formatter_class=_HelpFormatter, epilog=_EXAMPLES,
      description="Reads the source once and writes shards of --shard-size images; logs "
                  "progress with an ETA. Interrupted? Rerun the same command: complete shards "
                  "are kept and their images skipped.")
  build.add_argument("--kind", required=True, choices=feature_store.KINDS,
                     help="fc: self-critical <cocoid>.npy folder; regions: LXMERT obj36 or "
                          "ROSITA TSV files; clip: a COCO image folder through --embed-fn; "
                          "pixels: a COCO image folder, resized (SigLIP, BLIP)")
  build.add_argument("--source", required=True, nargs="+",
                     help="the input folder (fc, clip) or TSV file(s) (regions)")
  build.add_argument("--out", required=True, help="the store directory (created or resumed)")
  build.add_argument("--on-error", default="stop", choices=("stop", "skip"),
                     help="a bad entry stops the build, or is skipped and counted in the log")
  build.add_argument("--shard-size", type=int, default=None,
                     help=f"images per shard (default per kind: {feature_store.DEFAULT_SHARD_SIZE})")
  build.add_argument("--feature-dim", type=int, default=2048,
                     help="expected fc / region feature width")
  build.add_argument("--layout", default="auto", choices=("auto", "obj36", "rosita"),
                     help="regions: the TSV column layout")
  build.add_argument("--max-regions", type=int, default=36, help="regions: boxes per image")
  build.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                     help="regions: storage dtype of the region features")
  build.add_argument("--embed-fn", default="vlprobe_jax.data.feature_store:clip_embed_fn",
                     help="clip: 'module:function'; function(checkpoint) returns embed_fn("
                          "pixels [B,S,S,3] uint8) -> [B, D]")
  build.add_argument("--checkpoint", default=None,
                     help="clip: passed to the --embed-fn function (the default one takes a "
                          "Hugging Face CLIP directory)")
  build.add_argument("--image-size", type=int, default=224,
                     help="clip, pixels: square input size (BLIP: 384)")
  build.add_argument("--resize", default=None, choices=feature_store.RESIZES,
                     help="clip, pixels: 'crop' (shorter side, centre crop: CLIP) or 'square' "
                          "(the whole image: SigLIP, BLIP); default crop for clip, square for "
                          "pixels")
  build.add_argument("--batch-size", type=int, default=64, help="clip: images per embed_fn call")
  build.add_argument("--progress-every", type=float, default=10.0,
                     help="seconds between progress lines")
  info = commands.add_parser("info", help="print a store's kind, size and fields")
  info.add_argument("store", help="the store directory")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  if not logging.getLogger().handlers:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
  if args.command == "info":
    store = feature_store.FeatureStore(args.store)
    print(f"{store.path}: {store.kind} store, {len(store):,} images, "
          f"{'finished' if store.finished else 'INCOMPLETE (rerun its build)'}")
    for name, (shape, dtype) in store.fields.items():
      print(f"  {name}: {list(shape)} {dtype}")
    return 0
  shard_size = args.shard_size or feature_store.DEFAULT_SHARD_SIZE[args.kind]
  common = dict(out=args.out, shard_size=shard_size, on_error=args.on_error,
                progress_every_s=args.progress_every)
  if args.kind != "regions" and len(args.source) != 1:
    raise SystemExit(f"--kind {args.kind} takes one --source folder; found {args.source}.")
  if args.kind == "fc":
    store = feature_store.build_fc_store(args.source[0], feature_dim=args.feature_dim, **common)
  elif args.kind == "regions":
    store = feature_store.build_region_store(args.source, layout=args.layout, max_regions=args.max_regions,
                               feature_dim=args.feature_dim, dtype=args.dtype, **common)
  elif args.kind == "pixels":
    store = feature_store.build_pixel_store(args.source[0], image_size=args.image_size,
                                            resize=args.resize or "square", **common)
  else:
    make = _resolve(args.embed_fn)
    embed_fn = make(args.checkpoint) if args.checkpoint else make()
    store = feature_store.build_clip_store(args.source[0], embed_fn=embed_fn, image_size=args.image_size,
                             batch_size=args.batch_size, resize=args.resize or "crop", **common)
  print(f"{store.path}: {store.kind} store with {len(store):,} images.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
