"""One validated configuration for a run: defaults -> YAML -> CLI flags, written into every run directory.

``None`` means "use the backbone's / data's default" (timm's convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from graft.errors import ConfigError, first_line
from graft.files import read_text

FusionRule = Literal["mean", "max", "geometric", "borda"]


MAX_CONFIG_BYTES = 1_000_000  # a configuration is a page of settings; more is a mistake or an attack


class _NoAliases(yaml.SafeLoader):
    """YAML's safe loader without aliases: a config never needs them, and a few hundred bytes of nested aliases
    (a "billion laughs") expand into gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a graft config",
                                              event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """Plain data from YAML text: no Python objects (safe loader) and no aliases (:class:`_NoAliases`)."""
    loader = _NoAliases(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    format: Literal["auto", "folder", "csv", "lifeclef", "imagefolder"] = Field("auto", description=(
        "How DATA is read: auto recognises a class-per-folder tree, a CSV, a LifeCLEF XML directory or a "
        "Hugging Face imagefolder."))
    split_by: Literal["observation", "user"] = Field(
        "observation", description="What the validation split holds out: observations, or (user) whole photographers "
        "of a label - the regime a flora app meets; labels with one photographer stay in training.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="CSV column mapping, graft field -> CSV column (e.g. label: species)."
    )
    val_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="Validation share of the non-test part (3:1).")
    seed: int = Field(0, description=(
        "Seed of the train/validation split: the same seed gives the same split."))
    default_view: str | None = Field(None, description="View for images without one, e.g. LeafScan for a scan set.")
    taxonomy: str | None = Field(
        None, description="CSV of label, genus, family, authorship, common_names (;-separated), gbif: completes the "
        "genus/family the metadata gives; answers then rank genera and families too.")


class BackboneConfig(_Section):
    name: str = Field(
        "tf_efficientnet_lite0", description="A timm name, hf-hub:ORG/NAME, local-dir:/path or open_clip:NAME; "
        "a+b concatenates two backbones' features (`graft backbones` lists them).")
    weights: str | None = Field(None, description="Local .pth/.safetensors file; None = offline package or the hub.")
    pooling: Literal["auto", "avg", "max", "token"] = Field(
        "auto", description="auto = the pooling the weights were trained with (the class token for ViTs, the "
        "average for CNNs); another changes the features.")
    pretrained: bool = Field(True, description="False = seeded random weights (tests, smoke runs).")
    channels_last: bool = Field(
        True, description=(
        "NHWC memory layout: faster CPU inference for convolutional networks; in the cache key, as it moves "
        "the last float bits.")
    )
    image_size: int | None = Field(None, ge=16, description="Input resolution; None = the weights' own.")
    crop_mode: Literal["center", "squash", "border"] | None = Field(
        None, description=(
        "How an image is framed to the square input (timm's eval crop_mode): center crops the middle, "
        "squash resizes it whole, border pads it; None = the weights' own."))
    crop_pct: float | None = Field(
        None, gt=0, le=1, description=(
        "Share of the resized image the crop keeps (timm's crop_pct; 1 = nothing cut beyond the aspect "
        "ratio); None = the weights' own."))


class FeatureConfig(_Section):
    cache_dir: str | None = Field(None, description="None = $GRAFT_CACHE_DIR or the user's cache directory.")
    batch_size: int | None = Field(
        None, ge=1, description="Images per backbone forward; None = the device's (32 on a CPU, 256 on a GPU).")
    num_workers: int | None = Field(
        None, ge=0, description="Decode threads, preparing the next batch while the backbone runs the current one "
        "(PIL and onnxruntime release the GIL); 0 = decode in the main thread; None = one per core.")
    engine: Literal["auto", "onnx", "torch"] = Field(
        "auto", description=(
        "The backbone's forward for extraction and prediction: onnx = ONNX Runtime (faster on a CPU, "
        "features within 1e-4, so caches are shared); auto = onnx where it exports."))
    chunk_size: int = Field(256, ge=1, description="Images per cache chunk: what a killed run can lose at most.")
    train_views: int = Field(
        0, ge=0, description="Augmented views per training image (the one-group augmentation of finetune.augment), "
        "extracted once, cached, and trained on beside the originals; cross-fitting scores originals only.")
    decode: Literal["reduced", "full"] = Field(
        "reduced", description=(
        "reduced: JPEGs decoded at the smallest DCT scale that still covers the backbone's input (much "
        "faster on phone photos; in the cache key); full: every pixel."))


HeadKind = Literal["auto", "mlp", "linear", "prototype"]


class HeadConfig(_Section):
    kind: HeadKind = Field(
        "auto", description=(
        "auto = the linear head and the MLP over their grids, chosen out of fold; mlp = the founding "
        "recipe's head; linear; prototype = cosine to class means."))
    selection: Literal["crossfit", "holdout"] = Field(
        "crossfit", description="crossfit: K folds over the non-evaluation part choose the head by out-of-fold S; "
                                "holdout: early stopping on the validation split (the previous default, MLP only).")
    folds: int = Field(5, ge=2, description="K of the cross-fitting, grouped as head.group_by says, stratified by label.")
    group_by: Literal["auto", "observation", "user"] = Field(
        "auto", description=(
        "What a fold never cuts in two: an observation, or (user) all one photographer took of a label, so "
        "out of fold means new photographers; auto = user where it can."))
    within_se: float = Field(
        1.0, ge=0, description=(
        "Candidates within this many standard errors of the best out-of-fold S are level; among them the "
        "first family in head.robustness wins (0 = the best S always)."))
    robustness: list[Literal["mlp", "linear", "prototype"]] = Field(
        default_factory=lambda: ["mlp", "linear", "prototype"], description=(
        "Families from most to least robust under new photographers, which breaks ties: an averaged bag of "
        "heads holds up best under dataset shift."))
    c_grid: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0],
                                description="Inverse L2 strengths tried for the linear head.")
    c: float = Field(0.1, gt=0, description="The linear head's inverse L2 strength (cross-fitting writes the chosen).")
    epoch_grid: list[int] = Field(
        default_factory=lambda: [5, 10, 15, 20], description=(
        "MLP epoch counts cross-fitting tries, in order; it stops at a tie while the MLP trails: epochs "
        "that out-of-fold S does not reward cost time for nothing."))
    grid_min_gain: float = Field(
        0.005, ge=0, description=(
        "Out-of-fold S an MLP epoch count must gain over the best before it to go on (less is a tie; ties "
        "keep the shorter count) while the MLP trails."))
    scale: float = Field(20.0, gt=0, description="Prototype head: cosine similarity x scale = logits.")
    mlp_min_images_per_class: float = Field(
        0.0, ge=0, description=(
        "auto tries the MLP only with this many training images per class (0 = always): it costs several "
        "times the other heads."))
    bag: bool = Field(
        True, description=(
        "MLP: ship the K fold heads of cross-fitting, their probabilities averaged, instead of one head "
        "refit on everything: steadier, and no refit."))
    repeats: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description=(
        "Cross-fitting repeats, each with its own folds; auto: 3 below head.repeat_below_images_per_class "
        "images per class, else 1: few-shot choices are noisy."))
    repeat_below_images_per_class: float = Field(
        20.0, ge=0, description="repeats: auto repeats cross-fitting where classes have fewer training images than this:"
        " few images per class is where a bag's heads disagree most, and where a head takes seconds.")
    genus_weight: float = Field(
        1.0, ge=0, description=(
        "Genus-aware ranking: a species' score adds this times the log of its genus's mean probability (0 = "
        "off): a new photo's genus is easier than its species."))
    power: float = Field(
        0.5, gt=0, le=1, description=(
        "Power normalisation sign(x)|x|^power before standardising (1 = off): pooled ReLU features are "
        "sparse and heavy-tailed, and a square root evens them out."))
    members: int = Field(1, ge=1, description="MLP heads averaged in the final head (cross-fitting writes R x K with bag).")
    hidden_layers: int = Field(3, ge=0, description="MLP hidden layers (the founding recipe: 3).")
    width: int = Field(512, ge=1, description=(
        "Units per MLP hidden layer (the founding recipe: 512)."))
    activation: Literal["selu", "relu", "gelu", "silu"] = Field("selu", description=(
        "MLP activation; SELU (the founding recipe) keeps activations normalised without BatchNorm."))
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description=(
        "Dropout after each MLP hidden layer (the founding recipe: 0.5): heavy, because few-shot heads "
        "overfit."))
    epochs: int = Field(80, ge=1, description="MLP epochs (holdout: the upper bound for early stopping).")
    patience: int = Field(10, ge=1, description=(
        "holdout selection: epochs without a better validation loss before the MLP stops."))
    min_epochs: int = Field(
        10, ge=1, description="Floor on the refit's epochs (a tiny validation part can pick epoch 1)."
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description=(

        "Softens the MLP's targets (0 = plain cross-entropy); off by default, as it did not help out of "
        "fold."))
    refit: bool = Field(
        True, description="When the data has its own test part, retrain on train+val for the chosen epoch count."
    )
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate for the MLP.")
    weight_decay: float = Field(0.0, ge=0, description=(
        "Adam's weight decay for the MLP (dropout already regularises it)."))
    batch_size: int = Field(128, ge=1, description=(
        "MLP minibatch size: as accurate as smaller batches, and faster."))
    class_weights: str = Field("none", description="none, auto (inverse frequency) or a CSV/JSON file label->weight.")
    precision: Literal["auto", "32-true", "bf16-mixed"] = Field(
        "auto", description=(
        "The MLP's training matmuls: bf16-mixed multiplies in bfloat16 (weights stay float32); auto = "
        "bf16-mixed where the CPU or GPU does it natively."))
    memory_mb: float = Field(
        4096.0, ge=0, description="Cross-fitting streams the training features from a row file in the cache directory "
        "instead of memory when they are larger than this (0 = always stream).")
    seed: int = Field(0, description=(
        "Seed of the folds and the heads' initialisation: the same seed gives the same head."))


class ViewsConfig(_Section):
    """Per-view preprocessing, as in the founding recipe's image preprocessing. Sigmas are in original-image pixels."""

    enabled: bool = Field(False, description=(
        "Crop Flower/Fruit/Leaf/Stem photos to their subject and whiten LeafScan backgrounds before "
        "extraction."))
    off: list[str] = Field(default_factory=list, description="Views to leave unchanged even when enabled.")
    flower_fruit_sigma: float = Field(2.5, gt=0, description=(
        "Gaussian blur (pixels) before the active contour of Flower and Fruit photos."))
    leaf_cut: float = Field(0.1, ge=0, lt=0.5, description="Fraction cut from every side of Leaf images first.")
    leaf_sigma: float = Field(2.0, gt=0, description=(
        "Gaussian blur (pixels) before the active contour of Leaf photos."))
    stem_cut: float = Field(0.2, ge=0, lt=0.5, description=(
        "Fraction cut from every side of Stem photos first: bark fills the frame and its edges are "
        "background."))
    stem_sigma: float = Field(2.0, gt=0, description=(
        "Gaussian blur (pixels) before the active contour of Stem photos."))
    work_size: int = Field(128, ge=32, description="Contours run on a copy this many pixels high/wide at most.")
    iterations: int = Field(40, ge=1, description="Morphological Chan-Vese iterations.")
    smoothing: int = Field(2, ge=0, le=4, description=(
        "Morphological Chan-Vese smoothing steps per iteration (0-4)."))
    margin: float = Field(0.05, ge=0, lt=0.5, description="Box grown by this fraction of its size on every side.")
    square: bool = Field(
        True, description="Grow the box to a square around the subject, so the backbone's centre crop keeps all of it."
    )
    min_box_fraction: float = Field(0.02, gt=0, lt=1, description="A smaller box is not trusted: uncropped instead.")
    max_box_fraction: float = Field(0.98, gt=0, le=1, description="A box this large found nothing: uncropped.")
    converge_change: float = Field(
        0.01, gt=0, le=1, description="Not converged if the last iteration changed more than this share of pixels."
    )


class AugmentConfig(_Section):
    """The founding recipe's scheme: with probability ``p`` exactly ONE group, chosen at random; else the real image."""

    p: float = Field(0.8, ge=0.0, le=1.0, description=(
        "Chance that a training image is augmented at all (the founding recipe: 0.8); otherwise the network "
        "sees the real photo."))
    groups: list[Literal["hflip", "rotate", "zoom", "contrast", "brightness", "noise"]] = Field(
        default_factory=lambda: ["hflip", "rotate", "zoom", "contrast", "brightness", "noise"], description=(
        "Transform groups; an augmented image gets exactly one, chosen at random, so it stays a plausible "
        "photo."))
    weights: list[float] | None = Field(None, description="Relative chance of each group; None = equal.")
    rotate_degrees: float = Field(15.0, ge=0, description="Largest rotation, either way.")
    zoom: float = Field(1.25, ge=1.0, description="Maximum zoom-in factor.")
    contrast: float = Field(0.3, ge=0, description="Largest contrast change, as a fraction.")
    brightness: float = Field(0.3, ge=0, description="Largest brightness change, as a fraction.")
    noise_sigma: float = Field(0.03, ge=0, description="Gaussian noise std on [0, 1] pixels.")


class FineTuneConfig(_Section):
    """Fine-tuning: the head on the backbone, the whole network trained further at a low learning rate."""

    epochs: int = Field(10, ge=1, description=(
        "Most epochs; early stopping on validation loss usually ends sooner."))
    max_minutes: float | None = Field(
        None, gt=0, description="Wall-clock budget: training stops when it runs out and the best finished epoch is "
        "kept (minutes x cores = CPU minutes). None = no budget.")
    optimizer: Literal["auto", "sgd", "adamw"] = Field(
        "auto", description=(
        "auto: sgd for BatchNorm networks (EfficientNet, ResNet), adamw with layer decay and warm-up for "
        "LayerNorm ones (ViT, ConvNeXt, CLIP), as each family is tuned."))
    lr: float | None = Field(
        None, gt=0, description=(
        "Learning rate; None = the optimizer's (sgd 1e-4, adamw 3e-5): low, so the pretrained features are "
        "adjusted, not overwritten."))
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD's momentum.")
    weight_decay: float | None = Field(None, ge=0, description="None: sgd 1e-4, adamw 0.05 (weights only).")
    layer_decay: float | None = Field(
        None, gt=0, le=1, description="Layer-wise LR decay: block i of n trains at lr x decay^(n - i); None: adamw "
        "0.75, sgd 1 (off).")
    warmup_epochs: float | None = Field(
        None, ge=0, description="Linear LR warm-up over this many epochs; None: adamw 1, sgd 0.")
    backbone_lr_scale: float = Field(1.0, gt=0, description="Backbone LR = lr x this (e.g. 0.1 to move it less).")
    train_blocks: int | None = Field(None, ge=0, description="Train only the top N backbone stages; None = all.")
    freeze_bn: bool = Field(True, description="Keep BatchNorm in inference mode (Keras' transfer-learning advice).")
    batch_size: int = Field(16, ge=1, description="Images per training step.")
    patience: int = Field(3, ge=1, description="Early stopping patience on validation loss.")
    plateau_patience: int = Field(1, ge=0, description=(
        "Epochs without a better validation loss before ReduceLROnPlateau lowers the learning rate."))
    plateau_factor: float = Field(0.1, gt=0, lt=1, description="ReduceLROnPlateau's factor on the learning rate.")
    precision: Literal["auto", "32-true", "bf16-mixed"] = Field(
        "auto", description="auto: bf16-mixed on a GPU that multiplies bfloat16 natively, else 32-true (on a CPU "
        "channels_last float32 trains faster than bf16).")
    channels_last: bool = Field(True, description=(
        "NHWC memory layout while training: faster for convolutional networks on CPUs and GPUs."))
    compile: bool = Field(
        False, description=(
        "torch.compile the training step (eager if compiling fails); off by default, as its minutes of "
        "compiling did not pay back on short runs."))
    num_workers: int | None = Field(None, ge=0, description=(
        "DataLoader worker processes; None = from the host's cores."))
    min_vote: float | None = Field(None, description="Drop training images whose vote is below this.")
    devices: int = Field(1, ge=1, description=(
        "GPUs (or CPU processes) per node; more than one trains under DDP."))
    num_nodes: int = Field(1, ge=1, description=(
        "Machines for DDP training (torchrun or SLURM starts them)."))
    seed: int = Field(0, description=(
        "Seed of the loaders, augmentation and initialisation; --resume restores its streams."))
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class PredictConfig(_Section):
    fusion: FusionRule | Literal["auto"] = Field(
        "mean", description=(
        "How an observation's photos combine: mean, max, geometric or borda; auto = the rule with the best "
        "out-of-fold S, if it beats mean by 0.01."))
    top_k: int = Field(5, ge=1, description="Labels listed per answer.")
    tta: list[Literal["hflip", "rotate", "zoom", "bright", "contrast"]] = Field(
        default_factory=list, description=(
        "Test-time augmentations besides the original (hflip rotate zoom bright contrast); their predictions are "
        "averaged.")
    )
    calibrate: bool = Field(True, description="Temperature-scale probabilities (fitted on the validation split).")
    reject_threshold: float | None = Field(
        None, ge=0, le=1, description="Answer 'unknown' when the fused top probability is below this."
    )


class GraftConfig(_Section):
    device: str = Field(
        "auto", description=(
        "Where fit, extract and finetune compute: auto (a CUDA GPU, then Apple MPS, else the CPU), cpu, "
        "cuda, cuda:N or mps."))
    data: DataConfig = Field(default_factory=DataConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    finetune: FineTuneConfig = Field(default_factory=FineTuneConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    resolved: dict[str, Any] = Field(
        default_factory=dict, description="Written by a run, not set: what it decided where the settings left a "
        "choice (head.kind, head.c, members...), as dotted settings; `fit` ignores it.")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        from graft.device import DEVICES, is_device_spec

        if not is_device_spec(value):
            raise ValueError(f"unknown device {value!r}; use {DEVICES}")
        return value

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> GraftConfig:
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ConfigError(f"{source}: invalid configuration:\n{error}") from error

    @classmethod
    def from_yaml(cls, path: str | Path) -> GraftConfig:
        path = Path(path)
        try:
            values = load_yaml(read_text(path, MAX_CONFIG_BYTES)) or {}
        except (OSError, ValueError, yaml.YAMLError) as error:  # ValueError: too large, or not UTF-8
            raise ConfigError(f"{path}: cannot read YAML ({first_line(error)}); give a UTF-8 YAML file of at most "
                              f"{MAX_CONFIG_BYTES:,} bytes without anchors or aliases") from error
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data, backbone, ...), got {type(values).__name__}")
        return cls.from_dict(values, source=str(path))

    def updated(self, overrides: dict[str, Any]) -> GraftConfig:
        """Return a copy with dotted overrides applied at any depth, e.g. ``{"head.epochs": 40,
        "finetune.augment.p": 0.5, "device": "cpu"}``; a section's name takes a mapping merged into it
        (``{"finetune.augment": {"p": 0.5}}``); ``None`` values are skipped."""
        values = self.model_dump()
        settings, known = set(self.dotted_keys()), set(self.dotted_keys(sections=True))
        for dotted, value in overrides.items():
            if value is None:
                continue
            if dotted not in known:
                raise ConfigError(f"unknown setting {dotted!r}; known: {sorted(settings)}")
            if isinstance(value, dict) and dotted not in settings:
                value = {**_get(values, dotted), **value}  # a section: the mapping's settings, the others kept
            _set(values, dotted, value)
        return GraftConfig.from_dict(values, source="overrides")

    def dotted_keys(self, sections: bool = False) -> list[str]:
        """Every setting's dotted name, sections opened at any depth (``finetune.augment.p``); with ``sections``,
        the sections' own names too (``finetune``, ``finetune.augment``)."""
        def walk(model: BaseModel, prefix: str) -> list[str]:
            keys = []
            for name, value in model:
                if isinstance(value, BaseModel):
                    keys += [f"{prefix}{name}"] * sections + walk(value, f"{prefix}{name}.")
                else:
                    keys.append(f"{prefix}{name}")
            return keys

        return walk(self, "")

    def with_resolved(self, decided: GraftConfig) -> GraftConfig:
        """These settings as given, with what ``decided`` (the same settings after a run's choices) differs in
        recorded under ``resolved``: a run's config.yaml keeps the user's inputs apart from its outcomes."""
        given, chosen = self.without_resolved(), decided.without_resolved()
        flat_given, flat_chosen = dict(_flat(given.model_dump())), dict(_flat(chosen.model_dump()))
        changes = {key: value for key, value in flat_chosen.items() if flat_given.get(key) != value}
        return given.model_copy(update={"resolved": changes})

    def without_resolved(self) -> GraftConfig:
        return self.model_copy(update={"resolved": {}})

    def effective(self) -> GraftConfig:
        """The settings a run computed with: the given ones with its ``resolved`` choices applied."""
        if not self.resolved:
            return self
        unknown = sorted(set(self.resolved) - set(self.dotted_keys()))
        if unknown:
            raise ConfigError(f"resolved names unknown settings {unknown}")
        values = self.without_resolved().model_dump()
        for dotted, value in self.resolved.items():  # None too: a run may have resolved a setting to None
            _set(values, dotted, value)
        return GraftConfig.from_dict(values, source="a run's resolved choices")

    def reference(self) -> list[tuple[str, Any, str]]:
        """(dotted name, value, description) of every setting, in declaration order: what `graft config` lists."""
        def walk(model: BaseModel, prefix: str) -> list[tuple[str, Any, str]]:
            rows = []
            for name, field in type(model).model_fields.items():
                value = getattr(model, name)
                if isinstance(value, BaseModel):
                    rows += walk(value, f"{prefix}{name}.")
                elif name != "resolved":  # a run's outcomes, not a setting
                    rows.append((f"{prefix}{name}", value, field.description or ""))
            return rows

        return walk(self, "")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _get(values: dict[str, Any], dotted: str) -> Any:
    for section in dotted.split("."):
        values = values[section]
    return values


def _set(values: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, key = dotted.split(".")
    node = values
    for section in sections:
        node = node[section]
    node[key] = value


def _flat(values: dict[str, Any], prefix: str = ""):
    """(dotted key, value) of a nested settings dump."""
    for key, value in values.items():
        if isinstance(value, dict) and key not in ("columns", "resolved"):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
