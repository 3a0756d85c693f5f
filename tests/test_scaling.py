"""pipeline/scaling.py: the all-reduce arithmetic, the step model's limits, and which hook it
recommends (the doctor's verdict)."""

from __future__ import annotations

import pytest

from pipeline import scaling

ALEXNET = scaling.model_shapes("alexnet")
ALEXNET_BYTES = scaling.gradient_payload(ALEXNET, "none")
ALEXNET_POWERSGD = scaling.gradient_payload(ALEXNET, "powersgd")
ALEXNET_COMPUTE = scaling.compute_from_flops(scaling.TRAIN_FLOPS_PER_IMAGE["alexnet"], 256)


def test_payloads_are_the_fp32_gradients_half_of_them_or_powersgds_p_and_q():
    assert ALEXNET_BYTES == 4 * 61_100_840
    assert scaling.gradient_payload(ALEXNET, "bf16") == ALEXNET_BYTES // 2
    assert 20 < ALEXNET_BYTES / ALEXNET_POWERSGD < 30
    with pytest.raises(ValueError, match="not one of"):
        scaling.gradient_payload(ALEXNET, "int8")


def test_a_ring_over_400_gbps_moves_alexnets_gradients_in_about_10_ms():
    # the figure: 2 x 244 MB over 50 GB/s, many nodes, one GPU each
    seconds = scaling.all_reduce_seconds(ALEXNET_BYTES, 64, 1, 400)
    assert 9.5e-3 < seconds < 10.5e-3
    # inside one node only NVLink is crossed: an order of magnitude faster
    assert scaling.all_reduce_seconds(ALEXNET_BYTES, 1, 8, 400) < seconds / 5


def test_one_gpu_all_reduces_nothing_and_faster_links_never_slow_a_step():
    alone = scaling.predict(ALEXNET_BYTES, ALEXNET_COMPUTE, 1, 1, 25, "none")
    assert alone.comm_s == alone.hook_compute_s == 0 and alone.efficiency == 1
    for hook in ("none", "bf16", "powersgd"):
        steps = [
            scaling.predict(
                ALEXNET_BYTES, ALEXNET_COMPUTE, 4, 8, link, hook, powersgd_bytes=ALEXNET_POWERSGD
            ).step_s
            for link in (25, 100, 200, 400, 3200)
        ]
        assert steps == sorted(steps, reverse=True), hook
        nodes = [
            scaling.predict(
                ALEXNET_BYTES, ALEXNET_COMPUTE, n, 8, 100, hook, powersgd_bytes=ALEXNET_POWERSGD
            ).step_s
            for n in (1, 2, 4, 8, 32)
        ]
        assert nodes == sorted(nodes), hook
    with pytest.raises(ValueError, match="needs powersgd_bytes"):
        scaling.predict(ALEXNET_BYTES, ALEXNET_COMPUTE, 2, 8, 100, "powersgd")


def test_alexnet_across_nodes_is_all_reduce_bound_and_gets_powersgd_one_node_keeps_none():
    across = scaling.recommend_hook(
        ALEXNET_BYTES, ALEXNET_COMPUTE, 4, 8, 100, powersgd_bytes=ALEXNET_POWERSGD
    )
    assert across.comm_bound and across.hook == "powersgd"
    assert across.predictions["powersgd"].step_s < across.predictions["bf16"].step_s
    assert "train.comm_hook=powersgd predicts" in across.verdict
    assert across.verdict.startswith("all-reduce-bound on 4 x 8 GPUs, 100 Gb/s per node")
    one_node = scaling.recommend_hook(
        ALEXNET_BYTES, ALEXNET_COMPUTE, 1, 8, 100, powersgd_bytes=ALEXNET_POWERSGD
    )
    assert not one_node.comm_bound and one_node.hook == "none"
    assert one_node.verdict.startswith("compute-bound") and "keep train.comm_hook=none" in (
        one_node.verdict
    )
    # without PowerSGD's payload it is not a candidate; without bf16, fp16 stands in
    halves = scaling.recommend_hook(ALEXNET_BYTES, ALEXNET_COMPUTE, 4, 8, 100, bf16_supported=False)
    assert halves.hook == "fp16" and set(halves.predictions) == {"none", "fp16"}


def test_resnet50_hides_its_smaller_all_reduce_on_fast_links_and_compresses_on_slow_ones():
    shapes = scaling.model_shapes("resnet50")
    model_bytes = scaling.gradient_payload(shapes, "none")
    compute = scaling.compute_from_flops(scaling.TRAIN_FLOPS_PER_IMAGE["resnet50"], 256)
    kwargs = {"powersgd_bytes": scaling.gradient_payload(shapes, "powersgd")}
    fast = scaling.recommend_hook(model_bytes, compute, 4, 8, 3200, **kwargs)
    assert fast.hook == "none" and not fast.comm_bound
    slow = scaling.recommend_hook(model_bytes, compute, 4, 8, 25, **kwargs)
    assert slow.comm_bound and slow.hook != "none"


def test_the_tables_cli_prints_a_pick_for_every_cell(capsys):
    assert scaling.main(["--nodes", "1", "4", "--links", "25", "400"]) == 0
    output = capsys.readouterr().out
    assert "alexnet: 244.4 MB of fp32 gradients" in output
    rows = [line for line in output.splitlines() if line.startswith("| 1 x 8") or "| 4 x 8" in line]
    assert len(rows) == 4 and all(line.split("|")[-2].strip() in scaling.HOOKS for line in rows)
