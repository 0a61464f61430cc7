"""Drawing detections (boxes, labels, optional masks), panoptic segments and grids of pictures with PIL."""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128))


def class_colour(label):
  return PALETTE[int(label) % len(PALETTE)]


def ink(colour) -> tuple:
  """Black or white text, whichever reads better on `colour` (RGB)."""
  return (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140 else (255, 255, 255)


def outline_corners(box, size, line_width=1):
  """ImageDraw rectangle corners (x0, y0, x1, y1), ints with the last pixel inclusive, of an xyxy box
  [4] in picture pixels (end exclusive), for a picture of `size` (width, height); None when the box
  is not finite or lies outside the picture.

  Any box is drawable: the corners are ordered, a box thinner than a pixel (a 1-pixel-wide
  segment's box, x0 == x1) is drawn one pixel wide, and corners beyond the picture are clipped to
  just outside it, where an outline `line_width` wide stays invisible.
  """
  box = np.asarray(box, np.float64)
  if not np.isfinite(box).all():
    return None
  (x0, x1), (y0, y1) = np.sort(box[0::2]), np.sort(box[1::2])
  first = np.floor([x0, y0])
  last = np.maximum(first, np.ceil([x1, y1]) - 1)
  if (last < 0).any() or (first > np.subtract(size, 1)).any():
    return None
  low, high = -line_width, np.add(size, line_width - 1)
  return tuple(int(v) for v in np.concatenate([np.clip(first, low, high), np.clip(last, low, high)]))


def draw_detections(image, boxes, labels, scores=None, class_names=None, threshold=0.5, masks=None,
                    scale=1, mask_alpha=0.45):
  """Returns a PIL RGB image with the detections drawn.

  image uint8 [H, W, 3]; boxes [K, 4] xyxy pixels; labels [K]; scores [K] or None (ground truth:
  all drawn, no score in the text); masks bool [K, H, W] or None (alpha overlay); detections with
  score < threshold (or a NaN score) are skipped. scale: integer upsampling (nearest) so text stays
  readable. Any box is accepted (see `outline_corners`): empty, reversed or partly outside boxes
  are drawn, non-finite or fully outside ones are not.
  """
  image = np.asarray(image, np.uint8)
  boxes, labels = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels).reshape(-1)
  keep = np.ones(len(labels), bool) if scores is None else np.asarray(scores) >= threshold
  if masks is not None:
    canvas = image.astype(np.float32)
    for mask, label in zip(np.asarray(masks)[keep], labels[keep]):
      canvas[mask] = (1 - mask_alpha) * canvas[mask] + mask_alpha * np.array(class_colour(label))
    image = np.round(canvas).astype(np.uint8)
  picture = Image.fromarray(image).convert("RGB")
  if scale != 1:
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
  draw, font, line_width = ImageDraw.Draw(picture), ImageFont.load_default(), max(1, scale)
  for k in np.nonzero(keep)[0]:
    corners = outline_corners(boxes[k] * scale, picture.size, line_width)
    if corners is None:
      continue
    colour = class_colour(labels[k])
    draw.rectangle(corners, outline=colour, width=line_width)
    name = class_names[labels[k]] if class_names is not None else str(labels[k])
    text = name if scores is None else f"{name} {float(scores[k]):.2f}"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 4
    x0, y0 = corners[:2]
    tx = min(max(x0, 0), max(picture.width - tw, 0))  # at the box's left edge, inside the picture
    ty = y0 - th if y0 >= th else max(y0, 0)  # above the box, or inside it at the top edge
    ty = min(ty, max(picture.height - th, 0))
    draw.rectangle((tx, ty, tx + tw, ty + th), fill=colour)
    draw.text((tx + 2 - left, ty + 2 - top), text, fill=ink(colour), font=font)
  return picture


def draw_panoptic(image, png_ids, segments_info, names, scale: int = 1, alpha: float = 0.5) -> Image.Image:
  """The image uint8 [H, W, 3] with each segment of png_ids [H, W] blended in its own colour (weight
  `alpha`) and labelled with its class name (`names[category_id]`) at its pixel nearest to the
  segment's centre; scale: integer upsampling (nearest) so text stays readable."""
  canvas = np.asarray(image, np.float32).copy()
  for segment in segments_info:
    inside = png_ids == segment["id"]
    canvas[inside] = (1 - alpha) * canvas[inside] + alpha * np.array(class_colour(segment["id"]))
  picture = Image.fromarray(np.round(canvas).astype(np.uint8))
  if scale != 1:
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
  draw, font = ImageDraw.Draw(picture), ImageFont.load_default()
  for segment in segments_info:
    ys, xs = np.nonzero(png_ids == segment["id"])
    if not len(ys):
      continue
    k = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    x, y = int(xs[k]) * scale, int(ys[k]) * scale
    text = names[segment["category_id"]]
    left, top, right, bottom = draw.textbbox((x, y), text, font=font, anchor="mm")
    colour = class_colour(segment["id"])
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=colour)
    draw.text((x, y), text, fill=ink(colour), font=font, anchor="mm")
  return picture


def save_grid(images, path, cols=4, gap=4, background=(255, 255, 255)):
  """Pastes PIL images or uint8 [H, W, 3] arrays row by row into one picture saved at `path`."""
  pictures = [p if isinstance(p, Image.Image) else Image.fromarray(np.asarray(p, np.uint8)) for p in images]
  cell_w, cell_h = max(p.width for p in pictures), max(p.height for p in pictures)
  cols = min(cols, len(pictures))
  rows = -(-len(pictures) // cols)
  grid = Image.new("RGB", (cols * cell_w + (cols + 1) * gap, rows * cell_h + (rows + 1) * gap), background)
  for i, p in enumerate(pictures):
    r, c = divmod(i, cols)
    grid.paste(p.convert("RGB"), (gap + c * (cell_w + gap), gap + r * (cell_h + gap)))
  grid.save(path)
  return grid
