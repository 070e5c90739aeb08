"""LightningModule: loss sum, logging, optimiser and schedule, validation -> COCO evaluation,
prediction on image files."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from detector.data import boxes_to_original
from detector.engine.build import attach_gradient_probes, build_model
from detector.engine.config import Config, from_dict, to_dict
from detector.engine.evaluation import detections_to_coco_results, evaluate_coco, evaluate_voc


class DetectorModule(pl.LightningModule):
    """Trains the detector; each validation epoch runs COCOeval once on all ranks' detections.

    ``val_dataset`` provides the ground truth (``coco``, ``class_names``,
    ``label_to_category_id``); it is attached by the caller (``training.py``/``evaluate.py``)
    because it is data, not a hyperparameter. With ``train.gradient_stats`` the regression
    heads carry gradient probes (``gradient_probes``), read by the GradientStatistics callback.
    """

    def __init__(self, config: dict[str, Any], class_names: list[str], label_to_category_id: dict[int, int],
                 trunk_state: dict[str, Tensor] | None = None):
        """``trunk_state``: pretrained trunk weights (``build.load_trunk_weights``) for a new run;
        not a hyperparameter (a checkpoint holds every weight)."""
        super().__init__()
        self.save_hyperparameters(ignore=["trunk_state"])
        self.cfg: Config = from_dict(config)
        self.class_names = list(class_names)
        self.label_to_category_id = {int(k): int(v) for k, v in label_to_category_id.items()}
        self.model = build_model(self.cfg, num_classes=len(self.class_names), trunk_state=trunk_state)
        self.gradient_probes = attach_gradient_probes(self.model) if self.cfg.train.gradient_stats else []
        self.val_dataset = None
        self.last_metrics: dict[str, Any] | None = None
        self.last_results: list[dict[str, Any]] = []
        self.last_metrics_step = -1
        self._val_detections: list[dict[str, Any]] = []
        self._predictions: list[dict[str, Any]] = []
        self.last_predictions: list[dict[str, Any]] = []
        self.diverged: dict[str, Any] | None = None  # set at the first non-finite loss
        self.record_curves = False  # precision-recall curves in the metrics (evaluate.py sets it)
        self._last_finite_losses: dict[str, float] | None = None

    @classmethod
    def from_config(cls, cfg: Config, dataset, trunk_state: dict[str, Tensor] | None = None) -> "DetectorModule":
        return cls(to_dict(cfg), dataset.class_names, dataset.label_to_category_id, trunk_state)

    # --- training ---------------------------------------------------------------------------

    def training_step(self, batch: tuple[list[Tensor], list[dict]], batch_idx: int) -> Tensor | None:
        images, targets = batch
        losses = self.model(images, targets)
        total = sum(losses.values())
        values = torch.stack([total.detach(), *(v.detach() for v in losses.values())])
        # One host sync per step (NMS has one anyway): a non-finite loss must stop the run before
        # its gradients reach the weights. Under DDP every rank must agree, or the others would
        # wait forever in the gradient all-reduce.
        finite = bool(self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(values).all()), all=True))
        if not finite:
            self.diverged = {"step": self.global_step, "epoch": self.current_epoch,
                             "losses": {k: float(v) for k, v in zip(["loss", *losses], values.tolist())},
                             "last_finite_losses": self._last_finite_losses}
            self.trainer.should_stop = True
            return None  # Lightning skips backward and the optimiser step
        self._last_finite_losses = {k: float(v) for k, v in zip(["loss", *losses], values.tolist())}
        batch_size = len(images)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, on_step=True, on_epoch=False,
                      batch_size=batch_size)
        self.log("train/loss", total.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
        return total

    # --- checkpoints ------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The RPN and RoI samplers draw from torch's global generator: a resumed run continues
        # the same stream (Lightning restores model, optimiser, schedule and loop counters).
        checkpoint["rng"] = {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def configure_optimizers(self):
        t = self.cfg.train
        # No weight decay on norms and biases (standard practice; decaying BN scales hurts).
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            if parameter.requires_grad:
                (no_decay if parameter.ndim <= 1 else decay).append(parameter)
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if t.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=t.lr)
        else:
            optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
        total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(t.warmup_steps, total_steps)

        def factor(step: int) -> float:
            if step < warmup:  # linear warm-up from 0.1 x lr
                return 0.1 + 0.9 * step / max(warmup, 1)
            if t.schedule == "constant":
                return 1.0
            progress = (step - warmup) / max(total_steps - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- validation -------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val_detections = []

    def validation_step(self, batch: tuple[list[Tensor], list[dict]], batch_idx: int) -> None:
        images, targets = batch
        self._val_detections += self.detect(images, targets)

    def detect(self, images: list[Tensor], infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Detections of images resized as validation does, in the pixels of the original files
        (where the ground truth lives): one dict per image with its ``image_id``, ``boxes``
        (D, 4) xyxy, ``scores`` (D,) and ``labels`` (D,) 1..K, on the CPU."""
        detections = self.model(images)
        return [{"image_id": int(info["image_id"]),
                 "boxes": boxes_to_original(detection["boxes"], image.shape[-2:], info["orig_size"]).cpu(),
                 "scores": detection["scores"].cpu(),
                 "labels": detection["labels"].cpu()}
                for image, detection, info in zip(images, detections, infos)]

    def on_validation_epoch_end(self) -> None:
        detections = self._gather(self._val_detections)
        results = detections_to_coco_results(detections, self.label_to_category_id)
        metrics = evaluate_coco(self.val_dataset.coco, results, self.class_names, self.label_to_category_id,
                                image_ids=self.val_dataset.image_ids, curves=self.record_curves)
        if self.cfg.data.name == "voc":  # VOC users compare with VOC numbers: AP50 by the devkit's rule too
            metrics.update(evaluate_voc(self.val_dataset.coco, results, image_ids=self.val_dataset.image_ids))
        self.last_metrics, self.last_results = metrics, results
        self.last_metrics_step = self.global_step
        ap_at_90 = metrics["ap_per_iou"]["0.90"]
        logged = {f"val/{k}": float(v) for k, v in metrics["stats"].items()}
        logged["val/AP90"] = float(ap_at_90)
        # Every rank computed the same numbers from the same gathered detections: no sync.
        self.log("val/AP", logged.pop("val/AP"), prog_bar=True)
        self.log_dict(logged)

    # --- prediction (scripts/predict.py) ---------------------------------------------------

    def on_predict_epoch_start(self) -> None:
        self._predictions = []

    def predict_step(self, batch: tuple[list[Tensor], list[dict], list[dict]], batch_idx: int) -> list[dict[str, Any]]:
        """A batch of :class:`~detector.data.ImageFiles`: its images' infos with their detections,
        and the infos (with their ``error``) of the files left out, gathered in ``last_predictions``."""
        images, infos, left_out = batch
        # Every image of the batch may have been left out.
        entries = left_out + ([{**info, **detection} for info, detection in zip(infos, self.detect(images, infos))]
                              if images else [])
        self._predictions += entries
        return entries

    def on_predict_epoch_end(self) -> None:
        self.last_predictions = self._gather(self._predictions)

    def _gather(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every rank's entries (one per image, with its ``image_id``), each image once, by id.

        A DistributedSampler pads the dataset by repeating images so that ranks get equal
        shares; the repeats would count as false positives, so duplicates are dropped by id.
        """
        if self.trainer is not None and self.trainer.world_size > 1:
            gathered: list[list[dict[str, Any]] | None] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, entries)
            entries = [e for part in gathered for e in part]
        unique: dict[int, dict[str, Any]] = {}
        for entry in entries:
            unique.setdefault(entry["image_id"], entry)
        return [unique[i] for i in sorted(unique)]
