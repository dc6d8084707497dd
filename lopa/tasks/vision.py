"""Few-shot image classification with CLIP (CoOp's and RLP's protocol).

k shots per class are drawn from the training split with the run's seed; the test split is evaluated once, after
training. `protocol: base_to_new` (CoCoOp) trains on the first ceil(C/2) classes (base) and reports accuracy on the
base classes' test images among the base classes, on the new classes' among the new ones, and their harmonic mean H.

Images come from a local folder `<data_dir>/<local_dir>/<split>/<class>/*.<ext>` when data_dir is set, else from a
torchvision dataset (`source.torchvision` under `source.torchvision_root`, needs torchvision) or the Hugging Face Hub (`source.hub_path`). They are
decoded and preprocessed (CLIP's resize, centre crop and normalisation) per batch, never held in memory as tensors.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lopa.errors import ConfigError, check_choice
from lopa.progress import progress_bar
from lopa.schema import VISION_PROTOCOLS
from lopa.tasks import TASK_KINDS
from lopa.tasks.base import Task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
EVAL_ORDER_SEED = 0  # evaluation rows are shuffled once, the same way for every run, so eval.limit keeps every class


def few_shot_indices(labels: list[int], classes: list[int], shots: int, seed: int) -> list[int]:
    """`shots` row indices per class in `classes` (all of a class's rows when it has fewer), drawn with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {c: [] for c in classes}
    for index, label in enumerate(labels):
        if label in by_class:
            by_class[label].append(index)
    chosen = []
    for c in classes:
        rows = by_class[c]
        order = torch.randperm(len(rows), generator=generator)[:shots].tolist()
        chosen += sorted(rows[i] for i in order)
    return chosen


def base_new_split(num_classes: int) -> tuple[list[int], list[int]]:
    """CoCoOp's split: the first ceil(C/2) labels are base, the rest new."""
    base = math.ceil(num_classes / 2)
    return list(range(base)), list(range(base, num_classes))


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


class ImageFolder:
    """`<root>/<class>/*.<ext>`, classes in sorted folder order (or the order of `class_folders`)."""

    def __init__(self, root: Path, class_folders: list[str] | None):
        if not root.is_dir():
            raise ConfigError(f"no image folder at {root} (expected <data_dir>/<task>/<split>/<class>/*.png; "
                              "scripts/make_vision_data.py writes one)")
        folders = class_folders or sorted(p.name for p in root.iterdir() if p.is_dir())
        self.paths, self.labels = [], []
        for label, folder in enumerate(folders):
            files = sorted(p for p in (root / folder).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            self.paths += files
            self.labels += [label] * len(files)
        if not self.paths:
            raise ConfigError(f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.class_names = [folder.replace("_", " ") for folder in folders]

    def image(self, index: int):
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            return image.convert("RGB")


class HubImages:
    """A Hugging Face dataset split: labels read from the label column, images decoded when a batch needs them."""

    def __init__(self, source: DictConfig, split: str):
        import datasets

        hub_split = (source.get("hub_splits") or {}).get(split, split)
        self.dataset = datasets.load_dataset(source.hub_path, source.get("hub_name"), split=hub_split)
        self.image_column, label_column = source.get("image_column", "image"), source.get("label_column", "label")
        self.labels = [int(y) for y in self.dataset[label_column]]
        feature = self.dataset.features[label_column]
        self.class_names = list(getattr(feature, "names", None) or [])

    def image(self, index: int):
        return self.dataset[index][self.image_column].convert("RGB")


class TorchvisionImages:
    """A torchvision dataset (`source.torchvision`: its class name) under `source.torchvision_root` (no download)."""

    LABEL_ATTRIBUTES = ("targets", "_labels", "labels", "y")

    def __init__(self, source: DictConfig, split: str):
        try:
            import torchvision.datasets
        except ImportError:
            raise ConfigError(f"task source torchvision={source.torchvision!r} needs torchvision (pip install "
                              "torchvision), or set data_dir to a local image folder") from None
        cls = getattr(torchvision.datasets, source.torchvision)
        split_kwargs = dict(source.get("torchvision_split_kwargs", {}).get(split, {"split": split}))
        self.dataset = cls(source.torchvision_root, **split_kwargs)
        labels = next((getattr(self.dataset, a) for a in self.LABEL_ATTRIBUTES if hasattr(self.dataset, a)), None)
        self.labels = [int(y) for y in labels] if labels is not None else [int(y) for _, y in self.dataset]
        self.class_names = list(getattr(self.dataset, "classes", []) or [])

    def image(self, index: int):
        return self.dataset[index][0].convert("RGB")


class ImageClassificationTask(Task):
    """Batches carry pixel_values, labels (indices into the batch's class set), groups (0 base, 1 new) and the class
    set's tokenised texts; the CLIP kind turns them into logits over those classes."""

    def __init__(self, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, fm_kind: str, data_dir: str | None):
        super().__init__(cfg, tokenizer, fm_kind, data_dir)
        if fm_kind != "clip":
            raise ConfigError(f"task {cfg.name!r} classifies images: it needs a CLIP model (model.kind=clip), "
                              f"not a {fm_kind} FM")
        check_choice("task.protocol", cfg.protocol, VISION_PROTOCOLS)  # also in the schema; here for direct use
        self.sources: dict[str, object] = {}
        self._class_tokens: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def primary_metric(self) -> str:
        return "harmonic_mean" if self.cfg.protocol == "base_to_new" else "accuracy"

    @cached_property
    def processor(self):
        from transformers import CLIPImageProcessorPil

        size = int(self.cfg.image_size)
        return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    def source(self, split_key: str):
        split = self.split_name(split_key)
        if split not in self.sources:
            source = self.cfg.source
            if self.data_dir is not None:
                self.sources[split] = ImageFolder(Path(self.data_dir) / source.local_dir / split,
                                                  list(self.cfg.class_names) if self.cfg.get("class_names") else None)
            elif source.get("torchvision") and source.get("torchvision_root"):
                self.sources[split] = TorchvisionImages(source, split)
            elif source.get("hub_path"):
                self.sources[split] = HubImages(source, split)
            else:
                raise ConfigError(f"task {self.name!r} has no source without data_dir (set data_dir, "
                                  "task.source.hub_path or task.source.torchvision)")
        return self.sources[split]

    @property
    def class_names(self) -> list[str]:
        if self.cfg.get("class_names"):
            return list(self.cfg.class_names)
        names = self.source("eval").class_names
        if not names:
            raise ConfigError(f"task {self.name!r}: its source names no classes; set task.class_names")
        return names

    def class_split(self) -> tuple[list[int], list[int]]:
        """(base, new) class labels; every class is base under the few-shot protocol."""
        if self.cfg.protocol == "base_to_new":
            return base_new_split(len(self.class_names))
        return list(range(len(self.class_names))), []

    def load(self, split_key: str, limit: int | None = None) -> list[dict]:
        """Training rows: `shots` per (base) class drawn with task.shot_seed; evaluation rows: all, in a fixed
        shuffled order, cut to `limit`."""
        source = self.source(split_key)
        split = self.split_name(split_key)
        if split_key == "train":
            indices = few_shot_indices(source.labels, self.class_split()[0], self.cfg.shots, int(self.cfg.shot_seed))
        else:
            indices = torch.randperm(len(source.labels), generator=torch.Generator().manual_seed(EVAL_ORDER_SEED)).tolist()
        rows = [{"split": split, "index": i, "label": source.labels[i]} for i in indices]
        return rows[:limit] if limit is not None else rows

    def text(self, row: dict) -> str:
        return self.cfg.template.format(self.class_names[row["label"]])

    def encode(self, row: dict, index: int, split_key: str) -> dict:
        label = int(row["label"])
        if not 0 <= label < len(self.class_names):
            raise ConfigError(f"task {self.name!r}: label {label} of row {index} is not one of its "
                              f"{len(self.class_names)} classes")
        base, _ = self.class_split()
        return {"split": row["split"], "index": row["index"], "label": label, "group": int(label not in base),
                "class_set": "train" if split_key == "train" else "eval",
                "example_key": f"{self.name}/{split_key}/{row['index']}", "encoder_text": self.text(row)}

    def class_texts(self, classes: list[int]) -> list[str]:
        """Zero-shot reads the hand-written template; a prompted method reads its context, then `prompted_template`."""
        template = self.cfg.prompted_template if self.num_virtual_tokens else self.cfg.template
        return [template.format(self.class_names[c]) for c in classes]

    def class_tokens(self, class_set: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [C, L] of a class set's texts, right-padded (made once per prompt length)."""
        key = (class_set, self.num_virtual_tokens)
        if key not in self._class_tokens:
            base, new = self.class_split()
            classes = base if class_set == "train" else base + new
            encoded = self.tokenizer(self.class_texts(classes), padding=True, return_tensors="pt")
            self._class_tokens[key] = (encoded.input_ids, encoded.attention_mask)
        return self._class_tokens[key]

    def collate(self, examples: list[dict]) -> dict:
        images = [self.sources[e["split"]].image(e["index"]) for e in examples]
        class_input_ids, class_attention_mask = self.class_tokens(examples[0]["class_set"])
        return {
            "pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"],
            "labels": torch.tensor([e["label"] for e in examples], dtype=torch.long),
            "groups": torch.tensor([e["group"] for e in examples], dtype=torch.long),
            "class_input_ids": class_input_ids,
            "class_attention_mask": class_attention_mask,
            "example_keys": [e["example_key"] for e in examples],
        }

    def dataloader(self, examples: list[dict], batch_size: int, shuffle: bool, **kwargs) -> DataLoader:
        return DataLoader(examples, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate, **kwargs)

    def group_logits(self, model, batch: dict) -> torch.Tensor:
        """[B, C] logits over every class with the other group's classes masked out (base among base, new among new)."""
        logits, _ = model(batch)
        base, _ = self.class_split()
        is_new_class = torch.arange(logits.shape[1], device=logits.device) >= len(base)
        other_group = is_new_class.unsqueeze(0) != batch["groups"].bool().unsqueeze(1)
        return logits.masked_fill(other_group, float("-inf"))

    @torch.no_grad()
    def evaluate(self, model, loader: DataLoader, accelerator, predictions: bool = False) -> dict:
        model.eval()
        predicted, labels, groups = [], [], []
        for batch in progress_bar(loader, desc="eval", accelerator=accelerator, nested=True):
            batch_predictions = self.group_logits(model, batch).argmax(-1)
            gathered = accelerator.gather_for_metrics((batch_predictions, batch["labels"], batch["groups"]))
            predicted += gathered[0].tolist()
            labels += gathered[1].tolist()
            groups += gathered[2].tolist()
        if not labels:
            raise ValueError("no examples to score")

        def accuracy(group: int | None) -> float | None:
            pairs = [(p, y) for p, y, g in zip(predicted, labels, groups) if group is None or g == group]
            return sum(p == y for p, y in pairs) / len(pairs) if pairs else None

        metrics: dict = {"num_examples": len(predicted)}
        if self.cfg.protocol == "base_to_new":
            base, new = accuracy(0), accuracy(1)
            metrics.update(base_accuracy=base, new_accuracy=new,
                           harmonic_mean=harmonic_mean(base, new) if base is not None and new is not None else None)
        else:
            metrics["accuracy"] = accuracy(None)
        return {**metrics, "predictions": predicted} if predictions else metrics


TASK_KINDS["image_classification"] = ImageClassificationTask
