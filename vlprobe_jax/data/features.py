"""Readers for the image-feature files people already have.

Three formats, read as they were released, one image at a time (never a whole file in memory):

- LXMERT's obj36 TSV (`train2014_obj36.tsv`, `val2014_obj36.tsv`; airsplay/lxmert
  `src/utils.py`): tab-separated img_id, img_h, img_w, objects_id, objects_conf, attrs_id,
  attrs_conf, num_boxes, boxes, features; the arrays are base64 of raw little-endian bytes:
  objects_id int64 [N], objects_conf float32 [N], attrs_id int64 [N], attrs_conf float32 [N],
  boxes float32 [N, 4] pixel x1, y1, x2, y2, features float32 [N, 2048].
- ROSITA's TSV (`imgfeat.tsv` + optional `imgfeat.lineidx`; MILVLG/rosita
  `utils/transfer_npz2tsv.py`): filename, features, img_h, img_w, num_boxes, boxes, objects_id,
  objects_conf, attrs_id, attrs_conf, with every array base64 as above.
- self-critical.pytorch's fc folder (`cocotalk_fc/<cocoid>.npy`, one [2048] float32 per image).

Plus the image folder itself (COCO jpgs), decoded with PIL for CLIP.

Every problem with an entry (wrong field count, bad base64, wrong byte length, wrong feature
dimension, truncated `.npy`, undecodable image) becomes a `FeatureError` naming the file, the
line or image id, what was expected and what was found. An `ErrorPolicy` decides what happens
next: "stop" raises it, "skip" logs it, counts it and moves on (the count is logged again at the
end, so a skip is never silent).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import re
from collections.abc import Iterator

import numpy as np

log = logging.getLogger(__name__)

OBJ36_COLUMNS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id",
                 "attrs_conf", "num_boxes", "boxes", "features")
ROSITA_COLUMNS = ("filename", "features", "img_h", "img_w", "num_boxes", "boxes", "objects_id",
                  "objects_conf", "attrs_id", "attrs_conf")
LAYOUTS = {"obj36": OBJ36_COLUMNS, "rosita": ROSITA_COLUMNS}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Shown in logs for the first few skipped entries; the rest are only counted.
_SKIPS_LOGGED = 10
_TRAILING_ID = re.compile(r"(\d+)(?:\.[A-Za-z0-9]+)?$")


class FeatureError(ValueError):
  """An entry of a feature file that cannot be used; the message says where and why."""


def parse_image_id(name: str) -> int:
  """COCO image id from a file name or TSV key.

  "391895", "COCO_val2014_000000391895", "val2014/COCO_val2014_000000391895.jpg" and
  "391895.npy" all give 391895.
  """
  match = _TRAILING_ID.search(os.path.basename(name.strip()))
  if not match:
    raise ValueError(f"cannot read a COCO image id from {name!r}: expected digits at the end "
                     "of the name, as in 'COCO_val2014_000000391895.jpg' or '391895.npy'.")
  return int(match.group(1))


class ErrorPolicy:
  """What to do with a bad entry: on_error="stop" raises, "skip" logs and counts it."""

  def __init__(self, on_error: str = "stop", what: str = "entries"):
    if on_error not in ("stop", "skip"):
      raise ValueError(f"on_error must be 'stop' or 'skip'; found {on_error!r}.")
    self.on_error = on_error
    self.what = what
    self.skipped = 0

  def handle(self, error: FeatureError, count: int = 1) -> None:
    """Raises `error` ("stop"), or counts `count` dropped entries and logs it ("skip")."""
    if self.on_error == "stop":
      raise error
    self.skipped += count
    if self.skipped <= _SKIPS_LOGGED:
      log.warning("skipped (on_error='skip'): %s", error)
    elif self.skipped == _SKIPS_LOGGED + 1:
      log.warning("more bad %s are being skipped; only their count is logged from now on.",
                  self.what)

  def log_summary(self) -> None:
    if self.skipped:
      log.warning("skipped %d bad %s in total (on_error='skip').", self.skipped, self.what)


def as_policy(on_error: str | ErrorPolicy, what: str) -> ErrorPolicy:
  return on_error if isinstance(on_error, ErrorPolicy) else ErrorPolicy(on_error, what)


@dataclasses.dataclass
class RegionRecord:
  """The regions of one image, as stored in the TSV (boxes in pixels).

  Attributes:
    image_id: the COCO image id.
    image_h, image_w: image height and width in pixels.
    boxes: [N, 4] float32 pixel x1, y1, x2, y2.
    features: [N, D] float32.
    objects_id, objects_conf: [N] detector class ids and confidences.
    source: "file:line" where the row was read, for messages.
  """
  image_id: int
  image_h: int
  image_w: int
  boxes: np.ndarray
  features: np.ndarray
  objects_id: np.ndarray
  objects_conf: np.ndarray
  source: str = ""

  def normalized_boxes(self) -> np.ndarray:
    """[N, 4] float32 boxes x1/W, y1/H, x2/W, y2/H, the LXMERT convention."""
    scale = np.array([self.image_w, self.image_h, self.image_w, self.image_h], np.float32)
    return (self.boxes / scale).astype(np.float32)


def _decode_array(text: bytes, dtype, count: int, width: int, where: str, column: str,
                  widths=None) -> np.ndarray:
  """base64 of raw bytes -> [count, width] (or [count] when width == 0) array of `dtype`.

  `widths` maps a byte size per element to a dtype for the columns whose integer or float width
  varies between extractors (ROSITA's objects_id may be int32 or int64).
  """
  try:
    raw = base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError) as error:
    raise FeatureError(f"{where}: column {column!r} is not valid base64 ({error}); the row is "
                       "corrupt: re-extract or re-download this file.") from None
  elements = count * max(width, 1)
  if widths is not None and elements and len(raw) % elements == 0 and (
      len(raw) // elements) in widths:
    dtype = widths[len(raw) // elements]
  itemsize = np.dtype(dtype).itemsize
  expected = elements * itemsize
  if len(raw) != expected:
    shape = f"[{count}, {width}]" if width else f"[{count}]"
    hint = "a truncated row"
    if width and count and len(raw) % (count * itemsize) == 0:
      hint = (f"i.e. [{count}, {len(raw) // (count * itemsize)}]: a wrong feature dimension "
              "(set feature_dim to your features' width) or a truncated row")
    raise FeatureError(f"{where}: column {column!r} holds {len(raw)} bytes; expected {expected} "
                       f"({shape} {np.dtype(dtype).name}, from num_boxes={count}); {hint}.")
  array = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
  return array.reshape((count, width) if width else (count,))


class RegionTsvReader:
  """Streams the rows of an obj36 or ROSITA TSV as `RegionRecord`s.

  Attributes (updated while iterating, for progress reports):
    bytes_total: the file size.
    bytes_read: bytes consumed so far.
    num_rows: the row count from the `.lineidx` file when there is one, else None.
  """

  def __init__(self, path: str, layout: str = "auto", *, feature_dim: int = 2048,
               on_error: str | ErrorPolicy = "stop", skip_ids=frozenset()):
    """Opens nothing yet.

    Args:
      path: the `.tsv` file.
      layout: "obj36", "rosita" or "auto" (told apart by whether column 2 is a number, which is
        img_h in obj36 and base64 features in ROSITA).
      feature_dim: the expected region feature width.
      on_error: "stop" or "skip", or a shared `ErrorPolicy`.
      skip_ids: image ids whose rows are passed over without decoding (a resumed build).
    """
    if layout not in ("auto",) + tuple(LAYOUTS):
      raise ValueError(f"layout must be 'auto', 'obj36' or 'rosita'; found {layout!r}.")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"region feature TSV {path} does not exist.")
    self.path = path
    self.layout = layout
    self.feature_dim = feature_dim
    self.policy = as_policy(on_error, f"rows of {path}")
    self.skip_ids = skip_ids
    self.bytes_total = os.path.getsize(path)
    self.bytes_read = 0
    self.num_rows = self._read_lineidx()

  def _read_lineidx(self) -> int | None:
    lineidx = os.path.splitext(self.path)[0] + ".lineidx"
    if not os.path.isfile(lineidx):
      return None
    with open(lineidx) as f:
      return sum(1 for line in f if line.strip())

  def read_row(self, row_index: int) -> RegionRecord:
    """Random access to one row (0-based) through the `.lineidx` byte offsets."""
    lineidx = os.path.splitext(self.path)[0] + ".lineidx"
    if self.num_rows is None:
      raise FileNotFoundError(f"random access to {self.path} needs {lineidx} (one byte offset "
                              "per row, as ROSITA's tsv_writer makes).")
    with open(lineidx) as f:
      offsets = [int(line) for line in f if line.strip()]
    if not 0 <= row_index < len(offsets):
      raise IndexError(f"row {row_index} of {self.path}: {lineidx} lists {len(offsets)} rows.")
    with open(self.path, "rb") as f:
      f.seek(offsets[row_index])
      line = f.readline().rstrip(b"\r\n")
    record = self._parse(line, f"{self.path}:{row_index + 1}")
    if record is None:
      raise KeyError(f"{self.path}: row {row_index} is an image in skip_ids.")
    return record

  def __iter__(self) -> Iterator[RegionRecord]:
    # Lines are split on tabs here rather than by the csv module: no field-size limit to raise
    # (LXMERT's loader needs csv.field_size_limit(sys.maxsize) for the features column) and the
    # byte offset, which gives the progress and the ETA, stays known.
    self.bytes_read = 0
    with open(self.path, "rb") as f:
      for line_number, line in enumerate(f, start=1):
        self.bytes_read += len(line)
        line = line.rstrip(b"\r\n")
        if not line.strip():
          continue
        try:
          record = self._parse(line, f"{self.path}:{line_number}")
        except FeatureError as error:
          self.policy.handle(error)
          continue
        if record is not None:
          yield record

  def _parse(self, line: bytes, where: str) -> RegionRecord | None:
    fields = [field.strip() for field in line.split(b"\t")]
    layout = self.layout
    if layout == "auto":
      layout = "obj36" if len(fields) > 1 and fields[1].isdigit() else "rosita"
    columns = LAYOUTS[layout]
    if len(fields) != len(columns):
      raise FeatureError(f"{where}: {len(fields)} tab-separated fields; expected "
                         f"{len(columns)} ({', '.join(columns)}) for the {layout} layout.")
    row = dict(zip(columns, fields))
    key = row["img_id" if layout == "obj36" else "filename"].decode("utf-8", "replace")
    try:
      image_id = parse_image_id(key)
      image_h, image_w, count = (int(row[c]) for c in ("img_h", "img_w", "num_boxes"))
    except ValueError as error:
      raise FeatureError(f"{where}: cannot read the image id, img_h, img_w or num_boxes "
                         f"({error}); expected integers.") from None
    if image_id in self.skip_ids:
      return None
    where = f"{where} (image {image_id})"
    if image_h <= 0 or image_w <= 0 or count < 0:
      raise FeatureError(f"{where}: img_h={image_h}, img_w={image_w}, num_boxes={count}; "
                         "expected positive sizes and a non-negative box count.")
    if count == 0:
      raise FeatureError(f"{where}: num_boxes=0; expected at least one region (the detector "
                         "found nothing, or the row was cut).")
    ints = {4: np.int32, 8: np.int64}
    floats = {4: np.float32, 8: np.float64}
    features = _decode_array(row["features"], np.float32, count, self.feature_dim, where,
                             "features")
    boxes = _decode_array(row["boxes"], np.float32, count, 4, where, "boxes")
    check_regions(features, boxes, image_w, image_h, where)
    return RegionRecord(
        image_id=image_id, image_h=image_h, image_w=image_w,
        boxes=boxes,
        features=features,
        objects_id=_decode_array(row["objects_id"], np.int64, count, 0, where, "objects_id",
                                 ints).astype(np.int32),
        objects_conf=_decode_array(row["objects_conf"], np.float32, count, 0, where,
                                   "objects_conf", floats).astype(np.float32),
        source=where)


def check_finite(array: np.ndarray, where: str, what: str) -> None:
  """Raises `FeatureError` naming the first NaN or Inf of `array`."""
  bad = ~np.isfinite(array)
  if np.any(bad):
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise FeatureError(f"{where}: {what} hold {int(bad.sum())} NaN or Inf value(s), the first "
                       f"at index {first} ({array[first]}); expected finite values. The file "
                       "is damaged or came from a failed extraction: re-extract it.")


# Detector boxes are clipped to the image; half a pixel of slack for rounding in the extractors.
_BOX_SLACK = 0.5


def check_regions(features: np.ndarray, boxes: np.ndarray, image_w: int, image_h: int,
                  where: str) -> None:
  """Raises `FeatureError` for non-finite features or boxes, and for boxes that are inverted
  (x2 < x1 or y2 < y1) or outside the image ([0, W] x [0, H], pixels)."""
  check_finite(features, where, "features")
  check_finite(boxes, where, "boxes")
  inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
  outside = ((boxes[:, [0, 2]] < -_BOX_SLACK) | (boxes[:, [0, 2]] > image_w + _BOX_SLACK)).any(1)
  outside |= ((boxes[:, [1, 3]] < -_BOX_SLACK) | (boxes[:, [1, 3]] > image_h + _BOX_SLACK)).any(1)
  for name, bad in (("inverted (x2 < x1 or y2 < y1)", inverted),
                    (f"outside the {image_w}x{image_h} image", outside)):
    if np.any(bad):
      region = int(np.argmax(bad))
      raise FeatureError(f"{where}: {int(bad.sum())} box(es) {name}, the first region {region}: "
                         f"{boxes[region].tolist()} (pixel x1, y1, x2, y2); expected boxes "
                         "inside the image with x1 <= x2, y1 <= y2.")


def encode_region_row(record: RegionRecord, layout: str) -> str:
  """One TSV line (no newline) in the given layout: how the extractors wrote them.

  Used by the tests to make files in the real formats; attrs are written as zeros.
  """
  count = len(record.boxes)
  def b64(array, dtype):
    return base64.b64encode(np.ascontiguousarray(array, dtype).tobytes()).decode("ascii")
  values = {
      "img_id": f"COCO_val2014_{record.image_id:012d}",
      "filename": f"COCO_val2014_{record.image_id:012d}.jpg",
      "img_h": str(record.image_h), "img_w": str(record.image_w), "num_boxes": str(count),
      "boxes": b64(record.boxes, "<f4"), "features": b64(record.features, "<f4"),
      "objects_id": b64(record.objects_id, "<i8"), "objects_conf": b64(record.objects_conf, "<f4"),
      "attrs_id": b64(np.zeros(count), "<i8"), "attrs_conf": b64(np.zeros(count), "<f4"),
  }
  return "\t".join(values[c] for c in LAYOUTS[layout])


def read_fc_npy(path: str, feature_dim: int = 2048) -> np.ndarray:
  """One self-critical fc feature file -> [feature_dim] float32, checked.

  Raises:
    FeatureError: truncated or unreadable file, or a shape other than [D] / [1, D].
  """
  try:
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      shape, fortran, dtype = read_header(f)
      header_end = f.tell()
  except (ValueError, OSError, EOFError) as error:
    raise FeatureError(f"{path}: not a readable .npy file ({error}); expected a float32 array "
                       f"of shape [{feature_dim}]. Re-extract it.") from None
  expected = int(np.prod(shape)) * dtype.itemsize
  found = os.path.getsize(path) - header_end
  if found < expected:
    raise FeatureError(f"{path}: truncated .npy: the header says {shape} {dtype.name} "
                       f"({expected} bytes of data) but the file holds {found}. Re-extract it.")
  if tuple(shape) not in ((feature_dim,), (1, feature_dim)) or dtype.kind != "f" or fortran:
    raise FeatureError(f"{path}: array of shape {tuple(shape)} {dtype.name}; expected a float "
                       f"array of shape [{feature_dim}] (set feature_dim if your features "
                       "really have another width).")
  fc = np.load(path, allow_pickle=False).reshape(feature_dim).astype(np.float32)
  check_finite(fc, path, "fc features")
  return fc


class FcFolderReader:
  """Iterates a `<cocoid>.npy` folder, in image-id order, as (image_id, [D] float32) pairs."""

  def __init__(self, folder: str, *, feature_dim: int = 2048,
               on_error: str | ErrorPolicy = "stop", skip_ids=frozenset()):
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"fc feature folder {folder} does not exist; expected "
                              "self-critical's folder of <cocoid>.npy files.")
    self.folder = folder
    self.feature_dim = feature_dim
    self.policy = as_policy(on_error, f"files in {folder}")
    self.files = {}
    for name in os.listdir(folder):
      stem, ext = os.path.splitext(name)
      if ext == ".npy" and stem.isdigit():
        self.files[int(stem)] = os.path.join(folder, name)
    self.image_ids = sorted(i for i in self.files if i not in skip_ids)
    if not self.files:
      raise FileNotFoundError(f"{folder} holds no <cocoid>.npy files (e.g. 391895.npy).")

  def __len__(self) -> int:
    return len(self.image_ids)

  def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
    for image_id in self.image_ids:
      try:
        yield image_id, read_fc_npy(self.files[image_id], self.feature_dim)
      except FeatureError as error:
        self.policy.handle(error)


def list_images(image_dir: str) -> dict[int, str]:
  """COCO image id -> path for every image under `image_dir` (searched recursively)."""
  if not os.path.isdir(image_dir):
    raise FileNotFoundError(f"image folder {image_dir} does not exist.")
  images = {}
  for root, _, names in os.walk(image_dir):
    for name in names:
      if name.lower().endswith(IMAGE_SUFFIXES):
        try:
          images[parse_image_id(name)] = os.path.join(root, name)
        except ValueError:
          continue  # Not a COCO image name (a README thumbnail, say); not ours to read.
  return images


def load_image(source, size: int, where: str = "") -> np.ndarray:
  """An image file (path or bytes) -> [size, size, 3] uint8 RGB, CLIP's preprocessing.

  The shorter side is resized to `size` (bicubic), then the centre is cropped; normalisation
  is left to the model.

  Raises:
    FeatureError: the image cannot be decoded.
  """
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  where = where or (source if isinstance(source, str) else "<image bytes>")
  try:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
      image = image.convert("RGB")
      width, height = image.size
      scale = size / min(width, height)
      resized = (max(size, round(width * scale)), max(size, round(height * scale)))
      image = image.resize(resized, Image.BICUBIC)
      left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
      return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)
  except (OSError, ValueError, SyntaxError) as error:
    raise FeatureError(f"{where}: cannot decode the image ({error}); expected a JPEG or PNG. "
                       "Re-download it.") from None


class ImageColumn:
  """Images decoded on access: `column[index]` -> [n, size, size, 3] uint8.

  Stands in for `Split.pixels` when the images stay on disk; batches are decoded by the
  pipeline's threads.
  """

  def __init__(self, paths: list[str], size: int):
    self.paths = list(paths)
    self.size = size
    self.dtype = np.dtype(np.uint8)

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self.paths), self.size, self.size, 3)

  @property
  def ndim(self) -> int:
    return 4

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index) -> np.ndarray:
    if isinstance(index, (int, np.integer)):
      return load_image(self.paths[index], self.size)
    positions = np.arange(len(self.paths))[index]
    out = np.empty((len(positions), self.size, self.size, 3), np.uint8)
    for row, position in enumerate(positions):
      out[row] = load_image(self.paths[position], self.size)
    return out

  def __array__(self, dtype=None, copy=None):
    del copy  # A fresh array is made every time.
    return self[:].astype(dtype or np.uint8)
