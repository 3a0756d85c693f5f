"""tools/bench_comm.py at CI size through its main(argv): every hook measured on 2 real gloo ranks,
with the bytes on the sockets matching what each hook hands to all-reduce."""

from __future__ import annotations

import pytest

from tools.bench_comm import main


def table_rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] in ("none", "fp16", "bf16", "powersgd"):
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_small_bench_measures_every_hook_and_the_bytes_each_rank_sends(capsys):
    assert main(["--small"]) == 0
    output = capsys.readouterr().out
    assert "2 gloo ranks" in output and "ratios against none" in output
    rows = table_rows(output)
    assert sorted(rows) == ["bf16", "fp16", "none", "powersgd"]
    sent = {hook: float(cells[1]) for hook, cells in rows.items()}
    payload = {hook: float(cells[3]) for hook, cells in rows.items()}
    for hook in rows:
        # 2 ranks: a ring all-reduce puts 2(N-1)/N = 1 payload on each rank's sockets
        assert sent[hook] == pytest.approx(payload[hook], rel=0.02), hook
    assert sent["fp16"] == pytest.approx(sent["none"] / 2, rel=0.02)
    assert sent["bf16"] == pytest.approx(sent["none"] / 2, rel=0.02)
    # the narrow AlexNet's two FC weights compressed at rank 4: about 6x fewer bytes
    assert sent["powersgd"] < sent["none"] / 5
    assert rows["fp16"][2] == "0.50x" and rows["none"][2] == "1.00x"
    for cells in rows.values():
        assert all(float(cells[i]) > 0 for i in (4, 6, 8)), cells  # times were measured


def test_bad_arguments_exit_2_with_one_line(capsys):
    assert main(["--warmup", "2"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --warmup must be >= 3")
