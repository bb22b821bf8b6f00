import pytest
import torch

from medlens.errors import ConfigError, UnknownNameError
from medlens.models import NetworkSpec, build_network, network_names


@pytest.mark.parametrize(
    ("name", "dims", "shape"),
    [
        ("resnet18", 2, (28, 28)),
        ("resnet18", 3, (28, 28, 28)),
        ("densenet121", 2, (32, 32)),
        ("efficientnet-b0", 2, (64, 64)),
        ("vit-small", 2, (28, 28)),
        ("cnn", 3, (64, 64, 64)),
        ("cnn", 2, (28, 28)),
    ],
)
def test_networks_give_one_logit_per_class(name, dims, shape):
    torch.manual_seed(0)
    net = build_network(
        NetworkSpec(
            name=name,
            spatial_dims=dims,
            in_channels=1,
            num_classes=3,
            image_shape=shape,
            width=0.25 if "resnet" in name else 1.0,
        )
    )
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *shape))
    assert out.shape == (2, 3)


def test_required_names_are_registered():
    assert {"resnet18", "densenet121", "efficientnet-b0", "vit-small", "cnn"} <= set(network_names())


def test_unknown_and_too_small():
    with pytest.raises(UnknownNameError, match="did you mean 'densenet121'"):
        build_network(NetworkSpec("densenet-121", 2, 1, 2, (32, 32)))
    with pytest.raises(ConfigError, match="densenet121 needs images of at least 32 px per side, the data has 28x28"):
        build_network(NetworkSpec("densenet121", 2, 1, 2, (28, 28)))


def test_dropout_is_built_in_or_refused_never_ignored():
    net = build_network(NetworkSpec("resnet18", 2, 1, 2, (28, 28), width=0.5, dropout=0.2))
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.2]
    assert not any(
        isinstance(m, torch.nn.Dropout) for m in build_network(NetworkSpec("resnet18", 2, 1, 2, (28, 28))).modules()
    )
    with pytest.raises(ConfigError, match="efficientnet-b0 uses its own fixed dropout"):
        build_network(NetworkSpec("efficientnet-b0", 2, 1, 2, (64, 64), dropout=0.2))
