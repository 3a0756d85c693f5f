"""Model variants: torchvision compatibility, the BN and LRN variants, weights from files,
fine-tuning."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.models import (
    build_model,
    check_input_size,
    load_for_finetune,
    load_weights,
    set_train_mode,
)


def test_alexnet_has_torchvision_parameter_names_and_shapes_and_loads_its_state_dict(tmp_path):
    reference = torchvision.models.alexnet(weights=None, num_classes=1000)
    ours = build_model(ModelConfig(arch="alexnet"), num_classes=1000)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]
    path = tmp_path / "alexnet-torchvision.pth"
    torch.save(reference.state_dict(), path)
    load_weights(ours, path)
    ours.eval(), reference.eval()
    images = torch.randn(2, 3, 224, 224)
    assert torch.equal(ours(images), reference(images))


def test_alexnet_bn_puts_batchnorm_after_conv1_and_conv2_whose_bias_is_dropped():
    model = build_model(ModelConfig(arch="alexnet_bn"), num_classes=10)
    layers = list(model.features)
    convs = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d)]
    assert isinstance(layers[convs[0] + 1], nn.BatchNorm2d) and isinstance(
        layers[convs[1] + 1], nn.BatchNorm2d
    )
    assert layers[convs[0]].bias is None and layers[convs[1]].bias is None
    assert all(layers[i].bias is not None for i in convs[2:])
    assert sum(isinstance(layer, nn.BatchNorm2d) for layer in layers) == 2
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 10)


def test_alexnet_lrn_has_the_paper_widths_and_local_response_norm_after_conv1_and_conv2():
    model = build_model(ModelConfig(arch="alexnet_lrn"), num_classes=1000)
    layers = list(model.features)
    convs = [layer for layer in layers if isinstance(layer, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    norms = [i for i, layer in enumerate(layers) if isinstance(layer, nn.LocalResponseNorm)]
    assert len(norms) == 2
    for index in norms:
        norm = layers[index]
        assert (norm.size, norm.alpha, norm.beta, norm.k) == (
            5,
            pytest.approx(5e-4),
            0.75,
            2.0,
        )  # torch divides alpha by size
        assert isinstance(layers[index - 1], nn.ReLU)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_width_knobs_shrink_the_network_but_keep_its_structure():
    small = build_model(ModelConfig(width_mult=0.25, classifier_width=64), num_classes=4)
    full = build_model(ModelConfig(), num_classes=4)
    assert list(small.state_dict()) == list(full.state_dict())
    assert [m.out_channels for m in small.features if isinstance(m, nn.Conv2d)] == [
        16,
        48,
        96,
        64,
        64,
    ]
    assert small.classifier[1].out_features == 64
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 4)


def test_kaiming_init_gives_conv_weights_the_fan_out_variance():
    model = build_model(ModelConfig(kaiming_init=True), num_classes=10)
    conv = model.features[3]  # 192 x 64 x 5 x 5
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0


def test_weights_that_do_not_fit_the_model_are_a_clear_config_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(
        build_model(ModelConfig(width_mult=0.5, classifier_width=32), num_classes=10).state_dict(),
        path,
    )
    with pytest.raises(ConfigError, match="do not fit model"):
        load_weights(
            build_model(ModelConfig(width_mult=0.25, classifier_width=32), num_classes=10), path
        )


def test_finetune_keeps_the_body_replaces_the_head_and_freezes_features(tmp_path):
    source = build_model(
        ModelConfig(arch="alexnet_bn", width_mult=0.25, classifier_width=32), num_classes=10
    )
    path = tmp_path / "source.pt"
    torch.save({"model": source.state_dict()}, path)
    model = build_model(
        ModelConfig(arch="alexnet_bn", width_mult=0.25, classifier_width=32), num_classes=3
    )
    load_for_finetune(model, path, freeze="features")
    assert torch.equal(model.features[0].weight, source.features[0].weight)
    assert torch.equal(model.classifier[4].weight, source.classifier[4].weight)
    assert model.head.out_features == 3
    assert not any(p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    set_train_mode(model)
    assert (
        model.classifier.training and not model.features.training
    )  # frozen BN keeps its statistics


def test_alexnet_lrn_normalizes_with_the_papers_formula_and_constants():
    """Krizhevsky et al. 2012: b = a / (k + alpha * sum of a^2 over n=5 adjacent channels)^beta,
    k=2, alpha=1e-4, beta=0.75 (torch's LocalResponseNorm averages the squares instead)."""
    model = build_model(
        ModelConfig(arch="alexnet_lrn", width_mult=0.1, classifier_width=8), num_classes=3
    )
    lrn = next(layer for layer in model.features if isinstance(layer, nn.LocalResponseNorm))
    a = torch.rand(2, 7, 4, 4, dtype=torch.float64) * 30  # large activations, where alpha matters
    squares = a.square()
    sums = torch.stack([squares[:, max(0, c - 2) : c + 3].sum(dim=1) for c in range(7)], dim=1)
    expected = a / (2.0 + 1e-4 * sums) ** 0.75
    torch.testing.assert_close(lrn(a), expected)


def test_inputs_smaller_than_alexnet_can_take_are_refused_with_the_minimum():
    check_input_size(64, "data.train_crop")
    with pytest.raises(ConfigError, match="at least 63"):
        check_input_size(32, "data.train_crop")
