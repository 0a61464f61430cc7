"""The official COCO categories, as data: detection names by class id and the panoptic categories.

Facts from public sources: the class list of the official DETR demo notebook (ids 0..90, "N/A" where
COCO has no category) and panopticapi's panoptic_coco_categories.json (133 categories; things 1..90
with the detection names, stuff 92..200).
"""

# Index = class id of the official detection models (num_classes 91).
DETECTION_NAMES = (
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A",
    "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

# (id, name, isthing) of the official panoptic models (num_classes 250).
PANOPTIC_CATEGORIES = (
    (1, "person", True), (2, "bicycle", True), (3, "car", True), (4, "motorcycle", True),
    (5, "airplane", True), (6, "bus", True), (7, "train", True), (8, "truck", True), (9, "boat", True),
    (10, "traffic light", True), (11, "fire hydrant", True), (13, "stop sign", True),
    (14, "parking meter", True), (15, "bench", True), (16, "bird", True), (17, "cat", True),
    (18, "dog", True), (19, "horse", True), (20, "sheep", True), (21, "cow", True), (22, "elephant", True),
    (23, "bear", True), (24, "zebra", True), (25, "giraffe", True), (27, "backpack", True),
    (28, "umbrella", True), (31, "handbag", True), (32, "tie", True), (33, "suitcase", True),
    (34, "frisbee", True), (35, "skis", True), (36, "snowboard", True), (37, "sports ball", True),
    (38, "kite", True), (39, "baseball bat", True), (40, "baseball glove", True), (41, "skateboard", True),
    (42, "surfboard", True), (43, "tennis racket", True), (44, "bottle", True), (46, "wine glass", True),
    (47, "cup", True), (48, "fork", True), (49, "knife", True), (50, "spoon", True), (51, "bowl", True),
    (52, "banana", True), (53, "apple", True), (54, "sandwich", True), (55, "orange", True),
    (56, "broccoli", True), (57, "carrot", True), (58, "hot dog", True), (59, "pizza", True),
    (60, "donut", True), (61, "cake", True), (62, "chair", True), (63, "couch", True),
    (64, "potted plant", True), (65, "bed", True), (67, "dining table", True), (70, "toilet", True),
    (72, "tv", True), (73, "laptop", True), (74, "mouse", True), (75, "remote", True), (76, "keyboard", True),
    (77, "cell phone", True), (78, "microwave", True), (79, "oven", True), (80, "toaster", True),
    (81, "sink", True), (82, "refrigerator", True), (84, "book", True), (85, "clock", True),
    (86, "vase", True), (87, "scissors", True), (88, "teddy bear", True), (89, "hair drier", True),
    (90, "toothbrush", True), (92, "banner", False), (93, "blanket", False), (95, "bridge", False),
    (100, "cardboard", False), (107, "counter", False), (109, "curtain", False), (112, "door-stuff", False),
    (118, "floor-wood", False), (119, "flower", False), (122, "fruit", False), (125, "gravel", False),
    (128, "house", False), (130, "light", False), (133, "mirror-stuff", False), (138, "net", False),
    (141, "pillow", False), (144, "platform", False), (145, "playingfield", False), (147, "railroad", False),
    (148, "river", False), (149, "road", False), (151, "roof", False), (154, "sand", False),
    (155, "sea", False), (156, "shelf", False), (159, "snow", False), (161, "stairs", False),
    (166, "tent", False), (168, "towel", False), (171, "wall-brick", False), (175, "wall-stone", False),
    (176, "wall-tile", False), (177, "wall-wood", False), (178, "water-other", False),
    (180, "window-blind", False), (181, "window-other", False), (184, "tree-merged", False),
    (185, "fence-merged", False), (186, "ceiling-merged", False), (187, "sky-other-merged", False),
    (188, "cabinet-merged", False), (189, "table-merged", False), (190, "floor-other-merged", False),
    (191, "pavement-merged", False), (192, "mountain-merged", False), (193, "grass-merged", False),
    (194, "dirt-merged", False), (195, "paper-merged", False), (196, "food-other-merged", False),
    (197, "building-other-merged", False), (198, "rock-merged", False), (199, "wall-other-merged", False),
    (200, "rug-merged", False),
)


def panoptic_names(num_classes: int = 250) -> tuple:
  """Names indexed by class id 0..num_classes-1; "N/A" for ids without a panoptic category."""
  names = ["N/A"] * num_classes
  for category_id, name, _ in PANOPTIC_CATEGORIES:
    if category_id < num_classes:
      names[category_id] = name
  return tuple(names)


def is_thing_map(num_classes: int, categories=None) -> dict:
  """{class id: is a thing (else stuff)} for class ids 0..num_classes-1, as postprocess_panoptic takes it.

  categories: a panoptic json's categories [{"id", "isthing"}] (a category without "isthing" is a
  thing, a class id without a category is stuff); None: the official COCO rule of PostProcessPanoptic,
  ids up to 90 are things (as in PANOPTIC_CATEGORIES; the ids without a category too).
  """
  if categories is None:
    return {i: i <= 90 for i in range(num_classes)}
  things = {c["id"] for c in categories if c.get("isthing", 1)}
  return {i: i in things for i in range(num_classes)}
