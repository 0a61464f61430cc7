"""Fine-tune DETR on your own data in COCO format (a json per split, images in a folder).

  python train.py --config configs/coco_custom.py --workdir W \
    --config.dataset.train_images=DATA/train --config.dataset.train_json=DATA/train.json \
    --config.dataset.val_images=DATA/val --config.dataset.val_json=DATA/val.json \
    --config.init_from=checkpoints/detr_resnet50

num_classes is the largest category id + 1 (the official convention), read from the training json
unless --config.model.num_classes is given. `init_from` a converted official checkpoint keeps
everything but the class head, which is re-initialised for your classes. Check what the model
will see first: python -m detr_jax.data.inspect --config configs/coco_custom.py --split train ...
"""
from detr_jax.config import dataset_config, model_config, training_config


def get_config():
  # Official fine-tuning practice: the recipe's learning rates, a smaller batch; short schedule.
  config = training_config(total_steps=20_000, global_batch_size=8, lr_drop_step=15_000,
                           checkpoint_every=1000, eval_every=2000, log_every=50)
  config.model = model_config(num_classes=-1)  # -1: max category id + 1 of train_json
  config.dataset = dataset_config(name="coco_custom")
  return config
