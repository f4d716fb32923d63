"""audio.config: nested frozen dataclasses from YAML, overrides, and errors that name the bad key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from audio.config import (
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
    write_section_if_changed,
)
from audio.features import FeatureConfig, load_feature_config


@dataclass(frozen=True)
class ModelConfig:
    hidden: int = 128
    layers: int = 2
    dropout: float = 0.1
    kernel_sizes: tuple[int, ...] = (3, 5)


@dataclass(frozen=True)
class ExpConfig:
    name: str = "exp"
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    lr: float = 1e-3
    tag: str | None = None


def test_nested_round_trip_through_yaml(tmp_path):
    cfg = ExpConfig(
        name="big",
        model=ModelConfig(hidden=512, kernel_sizes=(7, 7, 3)),
        features=FeatureConfig(sample_rate=22050, fmax=8000.0, mel_norm=None),
        tag="x",
    )
    plain = to_dict(cfg)
    assert plain["model"]["kernel_sizes"] == [7, 7, 3]  # YAML/JSON-safe: tuples become lists
    assert from_dict(ExpConfig, plain) == cfg
    path = tmp_path / "cfg" / "exp.yaml"
    save_config(path, cfg)
    assert not path.with_name("exp.yaml.tmp").exists()
    loaded = load_config(ExpConfig, path)
    assert loaded == cfg and isinstance(loaded.model, ModelConfig) and loaded.model.kernel_sizes == (7, 7, 3)
    assert yaml.safe_load(path.read_text())["features"]["mel_norm"] is None


def test_missing_sections_and_keys_take_defaults(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("model:\n  hidden: 64\n")
    cfg = load_config(ExpConfig, path)
    assert cfg.model == ModelConfig(hidden=64) and cfg.features == FeatureConfig() and cfg.lr == 1e-3
    assert load_config(ExpConfig, None) == ExpConfig()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(ExpConfig, empty) == ExpConfig()


def test_unknown_key_in_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  hiddden: 64\n")
    with pytest.raises(ValueError, match=r"hiddden.*model") as err:
        load_config(ExpConfig, path)
    assert str(path) in str(err.value)
    path.write_text("lr: 0.1\nbatch: 3\n")
    with pytest.raises(ValueError, match="batch"):
        load_config(ExpConfig, path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(ExpConfig, path)


def test_overrides_are_parsed_as_yaml_scalars(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  hidden: 64\n")
    cfg = load_config(
        ExpConfig,
        path,
        overrides=[
            "model.hidden=256",
            "model.dropout=0.25",
            "lr=0.0003",
            "name=run 2",
            "tag=null",
            "features.center=false",
            "model.kernel_sizes=[1, 2]",
            "features.fmax=7600",
        ],
    )
    assert cfg.model == ModelConfig(hidden=256, dropout=0.25, kernel_sizes=(1, 2))
    assert cfg.lr == 3e-4 and cfg.name == "run 2" and cfg.tag is None
    assert cfg.features.center is False and cfg.features.fmax == 7600
    assert load_config(ExpConfig, None, ["name=a=b"]).name == "a=b"  # only the first '=' splits


def test_exponent_notation_gives_a_float(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("lr: 3e-4\n")
    assert load_config(ExpConfig, path).lr == 3e-4


def test_wrong_types_are_errors_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="lr must be a number"):
        load_config(ExpConfig, None, ["lr=fast"])
    with pytest.raises(ValueError, match="lr is not a section"):
        from_dict(ExpConfig, {"lr": {"x": 1}})


def test_unknown_key_in_override_is_an_error():
    with pytest.raises(ValueError, match="hiddden"):
        load_config(ExpConfig, None, ["model.hiddden=3"])
    with pytest.raises(ValueError, match="n_melz"):
        load_config(ExpConfig, None, ["features.n_melz=3"])
    with pytest.raises(ValueError, match="not of the form"):
        load_config(ExpConfig, None, ["model.hidden"])


def test_override_cannot_descend_into_a_scalar():
    data = {"lr": 0.1}
    with pytest.raises(ValueError, match="lr is not a section"):
        apply_overrides(data, ["lr.x=1"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2", "d.e.f=x"]) == {
        "a": {"b": 1, "c": 2},
        "d": {"e": {"f": "x"}},
    }


def test_second_stage_configs_keep_their_first_stage_model_and_features():
    """A continued run (``--init``) must build the same network on the same features as its first stage."""
    from asr.train import ASRConfig
    from tts.train import TTSConfig
    from tts.vocoder_train import VocoderConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    for cls, first, second in [(ASRConfig, "asr/conv_bilstm.yaml", "asr/conv_bilstm_continued.yaml"),
                               (ASRConfig, "asr/conv_bilstm.yaml", "asr/conv_bilstm_voices.yaml"),
                               (ASRConfig, "asr/conv_bilstm.yaml", "asr/conv_bilstm_variants.yaml"),
                               (TTSConfig, "tts/tacotron.yaml", "tts/tacotron_continued.yaml"),
                               (TTSConfig, "tts/tacotron.yaml", "tts/tacotron_feedback.yaml"),
                               (TTSConfig, "tts/tacotron.yaml", "tts/tacotron_feedback_high.yaml"),
                               (VocoderConfig, "tts/wavenet.yaml", "tts/wavenet_continued.yaml")]:
        a, b = to_dict(load_config(cls, root / first)), to_dict(load_config(cls, root / second))
        assert a["model"] == b["model"] and a["features"] == b["features"], second
        assert a["train"] != b["train"], second


def test_the_postnet_stage_config_changes_only_the_postnet_and_trains_only_it():
    from tts.train import TTSConfig

    root = Path(__file__).resolve().parents[1] / "configs" / "tts"
    first, stage = (to_dict(load_config(TTSConfig, root / name)) for name in ("tacotron.yaml", "tacotron_postnet.yaml"))
    changed = {k for k in first["model"] if first["model"][k] != stage["model"][k]}
    assert changed == {"postnet_channels", "postnet_gru"} and first["features"] == stage["features"]
    assert set(stage["train"]["train_only"]) == set(stage["train"]["init_skip"]) == {"postnet", "linear_proj"}


def test_a_config_with_a_base_lists_only_what_it_changes(tmp_path):
    (tmp_path / "first.yaml").write_text(
        "name: first\nmodel:\n  hidden: 64\n  kernel_sizes: [3, 3, 3]\nfeatures:\n  n_mels: 40\nlr: 0.01\n")
    sub = tmp_path / "stages"
    sub.mkdir()
    (sub / "second.yaml").write_text("base: ../first.yaml  # the first stage\nmodel:\n  layers: 4\nlr: 0.001\n")
    cfg = load_config(ExpConfig, sub / "second.yaml", ["model.dropout=0.3"])
    # Sections merge key by key; the base's other keys, sections and lists stay as they were.
    assert cfg == ExpConfig(name="first", model=ModelConfig(hidden=64, layers=4, dropout=0.3, kernel_sizes=(3, 3, 3)),
                            features=FeatureConfig(n_mels=40), lr=0.001)
    assert load_feature_config(sub / "second.yaml").n_mels == 40
    out = tmp_path / "features.yaml"
    assert write_section_if_changed(sub / "second.yaml", "features", out)
    assert yaml.safe_load(out.read_text()) == {"features": {"n_mels": 40}}
    # The saved config is the resolved one, and loads without its base.
    save_config(tmp_path / "saved.yaml", cfg)
    assert "base" not in yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert load_config(ExpConfig, tmp_path / "saved.yaml") == cfg


def test_a_missing_or_nested_base_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ValueError, match=r"a.yaml.*nowhere.yaml"):
        load_config(ExpConfig, tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    with pytest.raises(ValueError, match="one level"):
        load_config(ExpConfig, tmp_path / "b.yaml")
    (tmp_path / "e.yaml").write_text("base: [x]\n")
    with pytest.raises(ValueError, match="base must name"):
        load_config(ExpConfig, tmp_path / "e.yaml")


def test_every_shipped_config_loads_and_names_at_most_a_base_without_its_own():
    from asr.train import ASRConfig
    from asr.wav2vec2 import Wav2Vec2ExpConfig
    from tts.train import TTSConfig
    from tts.vocoder_train import VocoderConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    kinds = {"conv_bilstm": ASRConfig, "tiny": ASRConfig, "wav2vec2": Wav2Vec2ExpConfig, "tacotron": TTSConfig,
             "wavenet": VocoderConfig}
    files = sorted(root.glob("*/*.yaml"))
    assert len(files) > 20
    for path in files:
        cls = next(c for prefix, c in kinds.items() if path.name.startswith(prefix))
        load_config(cls, path)  # unknown keys, bad types and a base with a base of its own all raise
        base = yaml.safe_load(path.read_text()).get("base")
        if base:  # a stage config lists only what it changes
            assert len(path.read_text().splitlines()) < len((path.parent / base).read_text().splitlines()), path
