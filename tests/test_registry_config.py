import pytest

from medlens.config import TrainConfig, load_config
from medlens.errors import ConfigError, UnknownNameError
from medlens.registry import Registry


def test_registry_did_you_mean():
    reg: Registry[int] = Registry("network")
    reg.add("resnet18", 1)
    reg.add("densenet121", 2)
    assert reg.get("resnet18") == 1
    with pytest.raises(UnknownNameError, match="unknown network 'resnet-18'; did you mean 'resnet18'"):
        reg.get("resnet-18")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("resnet18", 3)


def test_config_overrides_are_typed(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[train]\nmodel = "cnn"\nepochs = 3\n')
    cfg = load_config(
        TrainConfig, toml, ["lr=0.01", "image_size=64,64", "multilabel=true", "max_train_samples=none"], section="train"
    )
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.image_size, cfg.multilabel) == ("cnn", 3, 0.01, (64, 64), True)
    assert cfg.max_train_samples is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=ten", r"train.epochs: expected an integer, got 'ten'"),
        ("epoch=3", r"train.epoch: unknown setting; did you mean 'epochs'"),
        ("imbalance=oversample", r"train.imbalance: expected one of none, weighted-loss, balanced-sampler"),
        ("lr=5", r"train.lr: expected a learning rate"),
        ("epochs", r"expected key=value"),
        ("channels_last=maybe", r"train.channels_last: expected true or false"),
    ],
)
def test_config_errors_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, [override])


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainConfig, tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(TrainConfig, bad)
