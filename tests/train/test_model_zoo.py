"""model.arch: every torchvision classification model by name, their heads, inputs, weights,
auxiliary classifiers and synchronized BatchNorm."""

from __future__ import annotations

import gc
import json

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.inception import InceptionOutputs
from train_helpers import run_gloo_ranks, tiny_args, torchrun

from pipeline.checkpoint import load_checkpoint
from pipeline.config import ModelConfig, load_config
from pipeline.distributed import DistInfo
from pipeline.errors import ConfigError
from pipeline.models import (
    apply_freeze,
    architectures,
    build_model,
    check_input_sizes,
    count_parameters,
    create_model,
    family_of,
    head_paths,
    input_rule,
    load_for_finetune,
    main_head,
    set_train_mode,
)
from pipeline.models.norm import GlobalBatchNorm2d, convert_sync_batchnorm
from pipeline.train.cli import main

# the alexnet-only knobs tiny.yaml sets, back at their defaults for another architecture
NOT_ALEXNET = ("model.width_mult=1.0", "model.classifier_width=4096")


def test_the_names_are_our_alexnet_variants_and_everything_torchvision_lists():
    listed = set(torchvision.models.list_models(module=torchvision.models))
    assert set(architectures()) == listed | {"alexnet", "alexnet_bn", "alexnet_lrn"}
    assert {"resnet50", "vgg16_bn", "inception_v3", "vit_b_16", "swin_t", "maxvit_t"} <= listed


@pytest.mark.slow
def test_every_model_builds_fresh_and_runs_a_forward_at_its_smallest_input():
    for name in architectures():
        rule = input_rule(name)
        model = build_model(ModelConfig(arch=name), num_classes=10, image_size=rule.minimum)
        model.eval()
        with torch.no_grad():
            logits = model(torch.rand(1, 3, rule.minimum, rule.minimum))
        assert logits.shape == (1, 10), name
        del model, logits
        gc.collect()


def test_auxiliary_models_train_at_their_training_minimum_and_return_their_aux_logits():
    for name in ("googlenet", "inception_v3"):
        size = input_rule(name).smallest(training=True)
        model = build_model(ModelConfig(arch=name), num_classes=5, image_size=size)
        model.train()
        output = model(torch.rand(2, 3, size, size))
        logits, *aux = output
        assert logits.shape == (2, 5) and aux and all(a.shape == (2, 5) for a in aux), name


@pytest.mark.parametrize(
    ("arch", "published"),
    [
        ("resnet50", 25_557_032),
        ("resnet18", 11_689_512),
        ("vgg16_bn", 138_365_992),
        ("mobilenet_v3_large", 5_483_032),
        ("inception_v3", 27_161_264),
        ("efficientnet_b0", 5_288_548),
        ("vit_b_16", 86_567_656),
    ],
)
def test_parameter_counts_equal_torchvisions_own_builders_and_published_figures(arch, published):
    ours = build_model(ModelConfig(arch=arch), num_classes=1000)
    extra = {"init_weights": True} if arch == "inception_v3" else {}  # it warns otherwise
    reference = torchvision.models.get_model(arch, weights=None, num_classes=1000, **extra)
    assert count_parameters(ours) == count_parameters(reference) == published


def test_an_unknown_architecture_is_one_line_naming_the_close_matches():
    with pytest.raises(ConfigError) as raised:
        build_model(ModelConfig(arch="resnet5"), num_classes=10)
    message = str(raised.value)
    assert "\n" not in message and "resnet50" in message and "did you mean" in message


def test_a_torchvision_state_dict_loads_into_resnet50_and_gives_torchvisions_outputs(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet50(weights=None, num_classes=1000)
    path = tmp_path / "resnet50-torchvision.pth"
    torch.save(reference.state_dict(), path)
    cfg = load_config(
        None, ["model.arch=resnet50", f"model.init_from={path}", "train.channels_last=false"]
    )
    ours = create_model(cfg, 1000, torch.device("cpu"))
    ours.eval(), reference.eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(ours(images), reference(images))


@pytest.mark.parametrize(
    ("arch", "heads", "feature_module"),
    [
        ("resnet18", ["fc"], None),
        ("vgg11", ["classifier.6"], "features"),
        ("efficientnet_b0", ["classifier.1"], "features"),
        ("mobilenet_v3_small", ["classifier.3"], "features"),
        ("convnext_tiny", ["classifier.2"], "features"),
        ("vit_b_32", ["heads.head"], None),
        ("inception_v3", ["fc", "AuxLogits.fc"], None),
        ("googlenet", ["fc", "aux1.fc2", "aux2.fc2"], None),
    ],
)
def test_each_family_has_its_head_and_freezing_features_leaves_only_the_head_part_training(
    arch, heads, feature_module
):
    size = max(input_rule(arch).minimum, 32)
    model = build_model(ModelConfig(arch=arch), num_classes=7, image_size=size)
    assert head_paths(model, arch) == heads
    head = main_head(model, arch)
    assert (head.out_features if isinstance(head, nn.Linear) else head.out_channels) == 7
    apply_freeze(model, arch, "features")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if feature_module is None:  # everything but the heads
        assert trainable == {
            name
            for name, _ in model.named_parameters()
            if any(name.startswith(head + ".") for head in heads)
        }
    else:  # the family's feature module, and nothing else
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        assert frozen == {
            name for name, _ in model.named_parameters() if name.startswith(feature_module + ".")
        }
    set_train_mode(model)
    if feature_module is not None:
        assert not getattr(model, feature_module).training and model.training


def test_a_family_no_row_places_is_a_one_line_error_not_a_guess():
    with pytest.raises(ConfigError, match="no head is known for model.arch=mystery_net"):
        family_of("mystery_net")


def test_finetuning_resnet_keeps_the_body_and_gives_the_head_the_new_classes(tmp_path):
    source = build_model(ModelConfig(arch="resnet18"), num_classes=10)
    path = tmp_path / "source.pt"
    torch.save({"model": source.state_dict()}, path)
    model = build_model(ModelConfig(arch="resnet18"), num_classes=3)
    load_for_finetune(model, path, "features", "resnet18")
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.out_features == 3
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.arch=inception_v3", "data.train_crop=224"],
            "inception_v3 in training: use at least 299",
        ),
        (["model.arch=vit_b_16", "data.train_crop=224", "data.val_crop=192"], "set them equal"),
        (["model.arch=vit_b_16", "data.train_crop=200", "data.val_crop=200"], "multiple of 16"),
        (["model.arch=maxvit_t", "data.train_crop=128", "data.val_crop=128"], "at least 224"),
        (["model.arch=alexnet", "data.train_crop=48", "data.val_crop=48"], "at least 63"),
    ],
)
def test_a_crop_the_model_cannot_take_is_one_line_up_front(overrides, message):
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError, match=message):
        check_input_sizes(cfg)


def test_inception_v3_at_299_with_the_aux_loss_off_may_evaluate_smaller():
    check_input_sizes(
        load_config(
            None,
            [
                "model.arch=inception_v3",
                "data.train_crop=299",
                "data.val_resize=342",
                "data.val_crop=299",
            ],
        )
    )
    check_input_sizes(
        load_config(
            None,
            [
                "model.arch=inception_v3",
                "model.aux_loss_weight=0",
                "data.train_crop=160",
                "data.val_crop=160",
            ],
        )
    )


def test_the_alexnet_knobs_are_refused_for_other_architectures_in_one_line():
    with pytest.raises(ConfigError, match="model.width_mult applies to the alexnet variants"):
        build_model(ModelConfig(arch="resnet18", width_mult=0.5), num_classes=10)
    with pytest.raises(ConfigError, match="model.dropout does not apply to resnet18"):
        build_model(ModelConfig(arch="resnet18", dropout=0.3), num_classes=10)
    model = build_model(ModelConfig(arch="vgg11", dropout=0.3), num_classes=10)
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.3}


def test_zero_init_residual_zeroes_the_last_norm_of_every_residual_branch():
    model = build_model(ModelConfig(arch="resnet50", zero_init_residual=True), num_classes=10)
    assert all(torch.count_nonzero(block.bn3.weight) == 0 for block in model.layer1)
    with pytest.raises(ConfigError, match="applies to resnet"):
        build_model(ModelConfig(arch="vgg11", zero_init_residual=True), num_classes=10)


def test_the_step_adds_each_auxiliary_loss_at_its_weight():
    from pipeline.optim import LearningRateSchedule
    from pipeline.precision import build_precision
    from pipeline.train.step import build_model_views, build_optimizer_step

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Linear(3 * 4 * 4, 2)
            self.aux = nn.Linear(3 * 4 * 4, 2)

        def forward(self, x):
            flat = x.flatten(1)
            return InceptionOutputs(self.main(flat), self.aux(flat))

    def aux_gradient(weight: float) -> float:
        cfg = load_config(
            None,
            [
                "optim.name=sgd",
                "optim.momentum=0",
                "optim.weight_decay=0",
                f"model.aux_loss_weight={weight}",
            ],
        )
        torch.manual_seed(0)
        model = TwoHeads()
        before = model.aux.weight.detach().clone()
        dist = DistInfo()
        step = build_optimizer_step(
            cfg,
            dist,
            build_model_views(cfg, dist, model, ddp=False),
            build_precision("fp32", torch.device("cpu")),
            schedule=LearningRateSchedule(cfg, 1, 1),
        )
        images = torch.randint(0, 255, (4, 3, 4, 4), dtype=torch.uint8)
        step(iter([(images, torch.tensor([0, 1, 0, 1]))]), 0)
        return float((model.aux.weight.detach() - before).abs().sum())

    assert aux_gradient(0.0) == 0.0 and aux_gradient(0.4) > 0.0


def _global_batchnorm_matches_one_big_batch(dist: DistInfo):
    """Each rank normalizes its half of a batch; the result must be the whole batch's BN."""
    torch.manual_seed(0)
    batch = torch.randn(8, 3, 5, 5) * 3 + 1
    reference = nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5), reference.bias.uniform_(-1, 1)
    layer = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), torch.device("cpu"))[0]
    layer.load_state_dict(reference.state_dict())
    assert isinstance(layer, GlobalBatchNorm2d)
    rows = slice(dist.rank * 4, (dist.rank + 1) * 4)
    weights = torch.arange(batch.numel(), dtype=torch.float32).view_as(batch)  # a loss per element
    mine = batch[rows].clone().requires_grad_(True)
    out = layer(mine)
    (out * weights[rows]).sum().backward()  # this rank's share of the global loss
    whole = batch.clone().requires_grad_(True)
    expected = reference(whole)
    (expected * weights).sum().backward()
    # float32 sums taken in another order: ~1e-6 relative
    torch.testing.assert_close(out, expected[rows], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.grad, whole.grad[rows], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(layer.running_mean, reference.running_mean)
    torch.testing.assert_close(layer.running_var, reference.running_var)
    torch.distributed.all_reduce(layer.weight.grad)  # DDP's sum over ranks
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-2)
    return True


@pytest.mark.slow
def test_sync_bn_on_two_gloo_ranks_is_batchnorm_over_the_global_batch():
    assert run_gloo_ranks(2, _global_batchnorm_matches_one_big_batch) == [True, True]


@pytest.mark.slow
def test_two_rank_training_of_a_batchnorm_model_with_sync_bn_keeps_the_replicas_identical(
    tiny_data, tmp_path
):
    run_dir = tmp_path / "run"
    argv = tiny_args(
        tiny_data,
        run_dir,
        "model.arch=alexnet_bn",
        "model.sync_bn=true",
        "train.epochs=2",
        "train.save_every=1",
    )
    result = torchrun(2, argv)
    assert result.returncode == 0, result.stderr[-3000:]
    # save() compared every rank's weight fingerprints at each epoch end and would have raised
    for name in ("epoch_001.pt", "epoch_002.pt"):
        fingerprints = load_checkpoint(run_dir / "checkpoints" / name)["replica_fingerprints"]
        assert len(fingerprints) == 2 and torch.equal(fingerprints[0], fingerprints[1])


@pytest.mark.slow
def test_a_resnet_resumed_mid_epoch_ends_bit_identical_to_an_uninterrupted_run(tiny_data, tmp_path):
    common = ("model.arch=resnet18", *NOT_ALEXNET, "train.log_every=1", "optim.lr=0.004")
    assert main(tiny_args(tiny_data, tmp_path / "whole", *common, "train.max_steps=14")) == 0
    assert main(tiny_args(tiny_data, tmp_path / "parts", *common, "train.max_steps=7")) == 0
    assert main(tiny_args(tiny_data, tmp_path / "parts", *common, "train.max_steps=14")) == 0
    whole = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")
    parts = load_checkpoint(tmp_path / "parts/checkpoints/last.pt")
    assert whole["step"] == parts["step"] == 14
    for key, value in whole["model"].items():  # running BatchNorm statistics included
        assert torch.equal(parts["model"][key], value), key
    for index, buffers in whole["optimizer"]["state"].items():
        for name, value in buffers.items():
            assert torch.equal(parts["optimizer"]["state"][index][name], value), (index, name)


def test_check_and_the_records_work_for_an_auxiliary_model(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = tiny_args(
        tiny_data,
        run_dir,
        "model.arch=googlenet",
        *NOT_ALEXNET,
        "train.check_overfit_steps=60",
        "train.max_steps=1",
    )
    assert main([*argv, "--check"]) == 0
    out = capsys.readouterr().out
    assert "check initial loss" in out and "ok: 100% in" in out
    assert main(argv) == 0
    launch = json.loads((run_dir / "launches.jsonl").read_text().splitlines()[0])
    assert launch["model/arch"] == "googlenet" and launch["model/params"] > 5_000_000
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["model/params"] == launch["model/params"]
