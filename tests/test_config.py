from pathlib import Path

import pytest

from detector.engine import config as config_lib
from detector.engine.config import Config, ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    cfg = config_lib.load()
    config_lib.save(cfg, tmp_path / "config.yaml")
    assert config_lib.load(tmp_path / "config.yaml") == cfg


def test_shapes_preset_is_the_default():
    assert config_lib.load(CONFIGS / "shapes.yaml") == config_lib.load()
    assert config_lib.load().data.name == "shapes" and Config().data.name == "auto"  # auto at data/shapes: shapes


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_loads(preset):
    config_lib.load(CONFIGS / preset)


def test_overrides_are_typed():
    cfg = config_lib.load(overrides=["train.lr=0.01", "model.anchor_sizes=[16, 32]", "data.hflip=false",
                                     "loss.args={beta: 0.5}", "train.threads=2", "model.weights="])
    assert cfg.train.lr == 0.01 and cfg.model.anchor_sizes == [16, 32] and cfg.data.hflip is False
    assert cfg.loss.args == {"beta": 0.5} and cfg.train.threads == 2 and cfg.model.weights is None


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", r"unknown option 'train.lrr'; did you mean 'train.lr'\? \(options of train: epochs, "),
    ("optim.lr=1", r"unknown option 'optim.lr'; did you mean 'train.lr'\? \(sections: data, model, loss, train\)$"),
    ("data.lr=1", r"unknown option 'data.lr'; did you mean 'train.lr'\? \(options of data: name, root, "),
    ("train.zzz=1", r"unknown option 'train.zzz' \(options of train: "),
    ("data.name=kitti", "option 'data.name' is 'kitti'; valid choices: auto, shapes, coco, voc, yolo"),
    ("model.backbone=vgg16", "valid choices: resnet18, resnet34, resnet50"),
    ("train.epochs=two", "option 'train.epochs' must be int"),
    ("train.lr=-1", "option 'train.lr' is -1.0; it must be > 0"),
    ("model.rpn_fg_iou_thresh=0.2", "model.rpn_fg_iou_thresh"),
    ("loss.name=l3", "unknown regression loss 'l3'; valid losses: balanced_l1, ciou, diou, eiou, giou, iou, l1, l2, smooth_l1"),
    ("loss.args={alpha: 1}", "no parameter 'alpha'; its parameters: beta"),
    ("loss.name=smoth_l1", r"unknown regression loss 'smoth_l1' \(did you mean 'smooth_l1'\?\); valid losses: "),
    ("loss.args={bta: 1}", r"no parameter 'bta' \(did you mean 'beta'\?\); its parameters: beta"),
    ("data.name=coco", r"--data coco needs the dataset's folder: give --data-root DIR \(option 'data.root'\), the folder "
                       r"that holds annotations/instances_<split>.json \(or <split>/_annotations.coco.json\)"),
    ("data.name=voc", r"--data voc needs .* a VOCdevkit year \(JPEGImages/, Annotations/\*.xml, "
                      r"ImageSets/Main/<split>.txt\) or a plain folder of images with their XML files"),
    ("data.root=/data/instances_val2017.json", "option 'data.root' is the annotation file /data/instances_val2017.json; "
                                               "data.root is the dataset's folder; to read an annotation file use"),
    ("loss.rpn_args={beta: 1}", "'loss.rpn_args' is set but 'loss.rpn_name' is not"),
    ("loss.rpn_weight=2", "'loss.rpn_weight' is set but 'loss.rpn_name' is not"),
    ("train.epochs", "must look like section.key=value"),
])
def test_invalid_values_name_the_option_and_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.load(overrides=[override])


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        config_lib.load(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("trainer: {lr: 1}\n")
    with pytest.raises(ConfigError, match="unknown.yaml: unknown section 'trainer'; valid sections: data, model, loss, train"):
        config_lib.load(unknown)
    with pytest.raises(ConfigError, match="config file not found"):
        config_lib.load(tmp_path / "missing.yaml")


def test_unknown_option_message_stays_short():
    # The whole list of valid keys ran over 1.6 KB; the section's keys are enough to choose from.
    with pytest.raises(ConfigError) as error:
        config_lib.load(overrides=["model.box_score_treshold=0.9"])
    assert "did you mean 'model.box_score_thresh'?" in str(error.value)
    assert "train.lr" not in str(error.value) and len(str(error.value)) < 800


# ----------------------------------------------------------------------------- option roles


def test_every_option_declares_its_roles():
    assert config_lib.undeclared() == []
    roles = config_lib.option_roles()
    assert list(roles) == config_lib.valid_keys()
    assert all(r.after_training in (None, *config_lib.AFTER_TRAINING) for r in roles.values())
    assert all(r.readers is None or set(r.readers) <= set(config_lib.CHOICES["data.name"]) for r in roles.values())


def test_an_option_without_roles_is_found_and_named():
    import dataclasses

    @dataclasses.dataclass
    class Section:
        declared: int = config_lib.option(1)
        plain: int = 2

    @dataclasses.dataclass
    class WithPlainField:
        train: Section = dataclasses.field(default_factory=Section)

    assert config_lib.undeclared(WithPlainField) == ["train.plain"]


def test_declared_choices_are_validated_for_every_option_that_has_them():
    for key, choices in config_lib.CHOICES.items():
        with pytest.raises(ConfigError, match=f"option '{key}' is 'nope'; valid choices: {', '.join(map(str, choices))}"):
            config_lib.load(overrides=[f"{key}=nope"])
    assert "model.predictor_init" in config_lib.CHOICES  # once checked by hand outside the table


def test_the_lists_of_options_elsewhere_are_the_declared_roles():
    from detector.engine import inference
    from detector.lab import compare, report

    roles = config_lib.option_roles()
    assert set(compare.IGNORED_IN_MATCH) == {k for k, r in roles.items() if not r.result}
    assert set(report.NOT_CONDITIONS) == {k for k, r in roles.items() if not r.condition}
    assert set(inference.POSTPROCESSING_OPTIONS) == {k for k, r in roles.items() if r.after_training == "postprocessing"}
    assert {"train.accelerator", "train.precision", "data.batch_size", "data.num_workers"} <= set(inference.RUNTIME_OPTIONS)
    assert "data.root" in inference.EVALUATION_DATA_OPTIONS and "data.classes" not in inference.EVALUATION_DATA_OPTIONS
    # A report's conditions split by exactly the options compare matches, but for the matrix's own
    # axes: the seed (the repetition) and the noise level (the report's axis).
    assert set(report.NOT_CONDITIONS) - set(compare.IGNORED_IN_MATCH) == {"train.seed", "data.train_box_noise"}


def test_validation_runs_section_by_section():
    with pytest.raises(ConfigError, match=r"option 'data.batch_size' is 0; it must be >= 1"):
        config_lib.validate_data(config_lib.DataConfig(batch_size=0))
    with pytest.raises(ConfigError, match=r"option 'train.lr' is -1.0; it must be > 0"):
        config_lib.validate_train(config_lib.TrainConfig(lr=-1.0))
    with pytest.raises(ConfigError, match=r"option 'model.feature_channels' is 4; it must be >= 8"):
        config_lib.validate_model(config_lib.ModelConfig(feature_channels=4))
    with pytest.raises(ConfigError, match="'loss.rpn_weight' is set but 'loss.rpn_name' is not"):
        config_lib.validate_loss(config_lib.LossConfig(rpn_weight=2.0))
