"""The training configuration: one frozen dataclass, built in layers and saved with every run.

Layers, later ones win: the dataclass defaults, the model's ``defaults()``, the model's
``paper_preset()`` (``--preset paper``), a YAML file (``--config run.yaml``), then the
command line (explicit flags and ``--set key=value``; dotted keys reach into nested
dicts, e.g. ``--set optimizers.d.lr=1e-4`` or ``--set model_options.loss=dice``).
The resolved configuration is written to ``RUN_DIR/config.yaml`` and into every
checkpoint, so a run can be repeated or resumed from either.

This module is a leaf of dataclasses and layer helpers (it imports ctseg.errors and
lkbase only, no torch: the CLI checks its arguments with it before torch is imported);
the model's layers are applied by ``ctseg.build.build_config``, above the models.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ctseg.errors import ConfigError
from lkbase.atomic import write_text_atomic

CROP_MODES = ("lesion", "random", "resize", "center")
SAMPLING_MODES = ("all", "lesion_only", "balanced")
AMP_MODES = ("auto", "off", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd", "adadelta")
DECAYS = ("constant", "linear")
REQUIRED_KEYS = ("model", "store", "target")


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """One network's optimiser: name and its hyper-parameters (unused ones are ignored)."""

    name: str = "adam"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    momentum: float = 0.0
    alpha: float = 0.99  # RMSprop smoothing
    rho: float = 0.9  # Adadelta
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer name must be one of {OPTIMIZERS}, found {self.name!r}")
        if not self.lr > 0:
            raise ConfigError(f"optimizer lr must be > 0, found {self.lr}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "OptimizerConfig":
        data = _known(cls, data, "optimizers.<network>")
        if "betas" in data:
            data["betas"] = tuple(float(b) for b in data["betas"])
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class Phase:
    """A stretch of training with its own learning rates and loss weights.

    ``lr`` maps a network name to its learning rate in this phase (absent: the
    optimiser's own ``lr``); ``loss_weights`` override the run's ``loss_weights``;
    ``decay`` "linear" takes the rates linearly towards 0 over the phase (pix2pix style).
    CTumorGAN's paper preset is two phases: lr 2e-4 with (alpha, beta, gamma) =
    (0, 1, 0) for 200 epochs, then 5e-5 with (1, 0, 100) for 100 epochs.
    """

    epochs: int
    lr: Mapping[str, float] = field(default_factory=dict)
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    decay: str = "constant"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"a phase needs epochs >= 1, found {self.epochs}")
        if self.decay not in DECAYS:
            raise ConfigError(f"phase decay must be one of {DECAYS}, found {self.decay!r}")

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "lr": dict(self.lr), "loss_weights": dict(self.loss_weights),
                "decay": self.decay}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Phase":
        data = _known(cls, data, "phases[]")
        return cls(epochs=int(data["epochs"]), lr={k: float(v) for k, v in (data.get("lr") or {}).items()},
                   loss_weights={k: float(v) for k, v in (data.get("loss_weights") or {}).items()},
                   decay=str(data.get("decay", "constant")))


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Random augmentation of training slices (torch, on the crop): all off with ``enabled: false``."""

    enabled: bool = True
    flip: bool = True  # left-right and up-down, each with probability 0.5
    rotate_deg: float = 10.0  # uniform in [-rotate_deg, rotate_deg]
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.0  # fraction of the crop, uniform in [-shift, shift] (random crops beyond the crop mode)
    intensity: float = 0.1  # brightness and contrast jitter, uniform in [-intensity, intensity]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["scale"] = list(self.scale)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "AugmentConfig":
        data = _known(cls, data, "augment")
        if "scale" in data:
            data["scale"] = tuple(float(s) for s in data["scale"])
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run needs; see the module docstring for how it is built."""

    model: str
    store: str
    target: tuple[str, ...]  # label name(s); several give one output channel each
    out: str = "run"
    model_options: Mapping[str, Any] = field(default_factory=dict)
    # data
    channels: tuple[int, ...] | None = None  # window channels to use (None: all)
    context: int = 0  # K neighbouring slices each side as extra channels (clamped at case ends)
    size: int = 256  # the model's input size (square)
    crop: str = "lesion"  # lesion | random | center: crops of `size`; resize: whole slice resized
    lesion_jitter: float = 0.25  # lesion crops: centre moved by up to this fraction of `size`
    # crop lesion: share of a lesion slice's crops centred on the lesion (rest: elsewhere in the body); 0.25
    # measured best for whole slices of a real CT (issue 13: 0.5 left heart and chest wall called lesion)
    lesion_crops: float = 0.25
    hard_negatives: float = 0.0  # crop lesion: share of crops centred where the model was most wrong
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sampling: str = "balanced"  # all | lesion_only | balanced
    lesion_fraction: float = 0.5  # balanced: share of lesion slices drawn
    patient_batches: bool = False  # batches of one patient's consecutive slices
    train_split: str = "train"  # a store split, or "all"
    val_split: str = "val"  # a store split, "all", or "none"
    cases: tuple[str, ...] | None = None  # only these cases (both sides)
    workers: int = 0
    # optimisation
    batch_size: int = 16
    epochs: int = 100  # ignored when phases are given (their sum; to_dict writes the sum)
    steps_per_epoch: int | None = None  # None: one pass over the sampled slices
    max_steps: int | None = None  # stop (and checkpoint) after this many steps in total
    optimizers: Mapping[str, OptimizerConfig] = field(default_factory=dict)
    phases: tuple[Phase, ...] = ()
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    frozen: tuple[str, ...] = ()  # networks not updated (e.g. a pretrained stage)
    # run
    amp: str = "auto"  # auto: bf16 on CUDA where supported, else fp16 with a GradScaler; off on CPU
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    threshold: float = 0.5  # binarisation of probabilities for Dice and masks
    # post-processing of each predicted case mask in 3D (ctseg.postprocess), applied by validation and the
    # default of predict/evaluate: a whole slice holds one lesion's worth of truth and many look-alikes
    # (vessels, heart, bowel), so by default only the largest connected component is kept (0: all)
    largest: int = 1
    min_size_mm3: float = 0.0  # drop components smaller than this
    val_every: int = 1  # epochs
    val_budget: float = 0.2  # validation may cost this share of training time (more: validated less often; 0: off)
    val_batch_size: int = 16
    early_stopping: int = 0  # epochs without improvement before stopping (0: off)
    checkpoint_every: int = 0  # steps (0: at the end of each epoch only)
    log_every: int = 10  # steps between TensorBoard scalars
    image_every: int = 1  # epochs between TensorBoard image grids (0: never)

    def __post_init__(self) -> None:
        if not self.target:
            raise ConfigError("target: at least one label name is needed")
        checks = [("crop", self.crop, CROP_MODES), ("sampling", self.sampling, SAMPLING_MODES),
                  ("amp", self.amp, AMP_MODES)]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"{key} must be one of {allowed}, found {value!r}")
        positive = {"size": self.size, "batch_size": self.batch_size, "epochs": self.epochs,
                    "val_every": self.val_every, "val_batch_size": self.val_batch_size}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, found {value}")
        if self.context < 0 or self.workers < 0:
            raise ConfigError(f"context and workers must be >= 0, found {self.context} and {self.workers}")
        for key in ("lesion_fraction", "lesion_crops", "hard_negatives"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key} must be in [0, 1], found {getattr(self, key)}")
        if self.hard_negatives and self.workers:
            raise ConfigError("hard_negatives needs workers: 0 (the loop refreshes the candidates in the dataset)")
        if self.largest < 0 or self.min_size_mm3 < 0:
            raise ConfigError(f"largest and min_size_mm3 must be >= 0, found {self.largest} and {self.min_size_mm3}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), found {self.threshold}")

    # ---- derived ---------------------------------------------------------------------------
    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases) if self.phases else self.epochs

    def phase_at(self, epoch: int) -> tuple[int, Phase]:
        """The phase (index, Phase) that epoch ``epoch`` (0-based) belongs to."""
        phases = self.phases or (Phase(epochs=self.epochs),)
        start = 0
        for i, phase in enumerate(phases):
            if epoch < start + phase.epochs:
                return i, phase
            start += phase.epochs
        return len(phases) - 1, phases[-1]

    def phase_start(self, index: int) -> int:
        phases = self.phases or (Phase(epochs=self.epochs),)
        return sum(p.epochs for p in phases[:index])

    def weights_at(self, epoch: int) -> dict[str, float]:
        """The run's loss weights with the phase's overrides."""
        return {**self.loss_weights, **self.phase_at(epoch)[1].loss_weights}

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "epochs":
                value = self.total_epochs  # with phases, their sum: what the run does, not an ignored default
            elif f.name == "optimizers":
                value = {k: v.to_dict() for k, v in value.items()}
            elif f.name == "phases":
                value = [p.to_dict() for p in value]
            elif f.name == "augment":
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = copy.deepcopy(dict(value))
            data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "TrainConfig":
        data = _known(cls, data, "config")
        require_keys(data)
        target = data["target"]
        data["target"] = tuple(t.strip() for t in target.split(",")) if isinstance(target, str) else tuple(target)
        for key in ("channels", "cases"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        if "optimizers" in data:
            data["optimizers"] = {k: OptimizerConfig.from_dict(v or {}) for k, v in (data["optimizers"] or {}).items()}
        if "phases" in data:
            data["phases"] = tuple(Phase.from_dict(p) for p in (data["phases"] or []))
        if "augment" in data:
            data["augment"] = AugmentConfig.from_dict(data["augment"] or {})
        if "loss_weights" in data:
            data["loss_weights"] = {k: float(v) for k, v in (data["loss_weights"] or {}).items()}
        if "frozen" in data:
            data["frozen"] = tuple(data["frozen"] or ())
        data["model_options"] = dict(data.get("model_options") or {})
        try:
            return cls(**data)
        except TypeError as exc:  # a wrong type inside a field
            raise ConfigError(f"config: {exc}") from exc

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML, atomically."""
        write_text_atomic(Path(path), self.to_yaml())


def require_keys(data: Mapping) -> None:
    """Refuse a config mapping without a model, a store or a target (checked before anything is built)."""
    for key in REQUIRED_KEYS:
        if key not in data or data[key] in (None, "", []):
            raise ConfigError(f"config: {key!r} is required")


def _known(cls, data: Mapping, where: str) -> dict:
    """``data`` as a dict of the dataclass's keys (typos fail loudly), scalars coerced to the field types.

    Coercion matters for YAML: PyYAML (YAML 1.1) reads ``1e-4`` as a string; only ``1.0e-4`` is a float.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, found {type(data).__name__}")
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(types))}")
    return {key: _coerce(value, types[key], f"{where}.{key}") for key, value in data.items()}


def _coerce(value: Any, kind: str, where: str) -> Any:
    base = kind.replace(" | None", "")
    if value is None or base not in ("float", "int", "bool"):
        return value
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, found {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, found {value!r}") from None
    if base == "int":
        if number != int(number):
            raise ConfigError(f"{where}: expected a whole number, found {value!r}")
        return int(number)
    return number


# ---- building a config from its layers ----------------------------------------------------
def deep_merge(base: Mapping, override: Mapping) -> dict:
    """``override`` merged into ``base``: nested dicts merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_layers(layers: Sequence[Mapping]) -> dict:
    """The layers merged in order with :func:`deep_merge` (later ones win)."""
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    return merged


def parse_assignment(text: str) -> dict:
    """``a.b=value`` -> {"a": {"b": value}}; the value is parsed as YAML (numbers, lists, true ...)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def load_yaml(path: str | Path) -> dict:
    """A run configuration file (YAML mapping)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of config keys, found {type(data).__name__}")
    return data


def _yaml_problem(exc) -> str:
    """One short line for a YAML error: where, and what (a tag safe_load refuses named as such)."""
    import yaml

    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
        tag = problem.split("tag", 1)[1].strip().strip("'")
        return f"{where}YAML tag {tag!r} is not allowed (plain YAML values only: numbers, strings, lists, mappings)"
    return f"{where}not valid YAML ({problem})"
