"""TeacherConfig: YAML + overrides, rejected keys and values, trigger defaults and options."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from abd.attacks.config import TeacherConfig
from abd.registry import UnknownNameError


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "teacher.yaml"
    path.write_text("trigger: blend\nepochs: 3\nlr: 0.01\ntrigger_options: {}\n")
    cfg = TeacherConfig.load(path, epochs=5, seed=None)  # None overrides are ignored
    assert (cfg.trigger, cfg.epochs, cfg.lr, cfg.seed) == ("blend", 5, 0.01, 0)
    assert cfg.dataset == "mnist5k" and cfg.model == "lenet5"
    # the saved YAML reads back to the same config
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml())
    assert TeacherConfig.load(again) == cfg


def test_cli_strings_are_coerced() -> None:
    cfg = TeacherConfig.load(None, epochs="4", poison_rate="0.05", augment="false")
    assert cfg.epochs == 4 and cfg.poison_rate == 0.05 and cfg.augment is False


def test_extra_keys_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("trigger: blend\nepoch: 3\n")
    with pytest.raises(ValidationError, match="epoch"):
        TeacherConfig.load(path)
    with pytest.raises(ValidationError, match="learning_rate"):
        TeacherConfig(learning_rate=0.1)


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("poison_rate", 1.0), ("poison_rate", -0.1), ("lr", 0.0), ("optimizer", "rmsprop"),
     ("target", -1), ("batch_size", 0), ("cutout", 1.5), ("momentum", 1.0), ("threads", -1)],
)
def test_invalid_values_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        TeacherConfig(**{field: value})


def test_validated_on_assignment() -> None:
    cfg = TeacherConfig()
    with pytest.raises(ValidationError):
        cfg.epochs = -3


@pytest.mark.parametrize(
    "field, value, suggestion",
    [("dataset", "mnist5", "mnist5k"), ("model", "lenet", "lenet5"), ("trigger", "badnet", "badnet_grid"),
     ("eval_trigger", "blended", "blend")],
)
def test_unknown_names_suggest(field: str, value: str, suggestion: str) -> None:
    with pytest.raises(UnknownNameError, match=f"Did you mean.*'{suggestion}'"):
        TeacherConfig(**{field: value})


def test_bad_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        TeacherConfig.load(tmp_path / "missing.yaml")
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ValueError, match="mapping"):
        TeacherConfig.load(path)
    path.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ValueError, match="not a valid YAML"):  # safe_load: no python tags, one clear error
        TeacherConfig.load(path)


def test_trigger_defaults_resolved() -> None:
    from abd.attacks import TRIGGERS

    assert TeacherConfig().poison_rate is None and TeacherConfig().cutout is None
    dirty = TeacherConfig(trigger="badnet_grid").resolved()
    assert (dirty.poison_rate, dirty.cutout) == (0.1, 0.0)
    sig = TeacherConfig(trigger="sig").resolved()
    sig_cls = TRIGGERS.get("sig")
    assert (sig.poison_rate, sig.cutout) == (sig_cls.default_poison_rate, sig_cls.default_cutout)
    clean = TeacherConfig(trigger="none").resolved()
    assert (clean.poison_rate, clean.cutout) == (0.0, 0.0)
    explicit = TeacherConfig(trigger="sig", poison_rate=0.02, cutout=0.0).resolved()
    assert (explicit.poison_rate, explicit.cutout) == (0.02, 0.0)


def test_eval_trigger() -> None:
    assert TeacherConfig(trigger="none").attack_trigger == "badnet_grid"
    assert TeacherConfig(trigger="none", eval_trigger="blend").attack_trigger == "blend"
    assert TeacherConfig(trigger="sig", eval_trigger="blend").attack_trigger == "sig"
    with pytest.raises(UnknownNameError):
        TeacherConfig(eval_trigger="none")


def test_trigger_options() -> None:
    cfg = TeacherConfig(trigger="cl", trigger_options={"eps": 0.1, "steps": 3})
    assert cfg.trigger_options == {"eps": 0.1, "steps": 3}
    assert TeacherConfig(trigger="smooth", trigger_options="{colour: magenta}").trigger_options == {
        "colour": "magenta"}
    with pytest.raises(ValidationError, match="has no option"):
        TeacherConfig(trigger="cl", trigger_options={"epsilon": 0.1})
    with pytest.raises(ValidationError, match="eps must be in"):
        TeacherConfig(trigger="cl", trigger_options={"eps": 2.0})
    with pytest.raises(ValidationError, match="colour must be one of"):
        TeacherConfig(trigger="smooth", trigger_options={"colour": "blue"})
    with pytest.raises(ValidationError, match="need a trigger"):
        TeacherConfig(trigger="none", trigger_options={"eps": 0.1})
