"""The demo's results table: latencies with their speedup, noisy ones flagged."""

from slimfx.workflow.demo_results import DemoResult, DemoRow


def _result(noisy: bool) -> DemoResult:
    original = DemoRow("sparsity-trained VGG-11", "-", 0.97, 100, 1000, {"ort-cpu b64": 579.83})
    slim = DemoRow(
        "pruned and fine-tuned",
        "compensate",
        0.96,
        50,
        400,
        {"ort-cpu b64": 551.24},
        {"ort-cpu b64": 1.05},
        {"ort-cpu b64": noisy},
    )
    return DemoResult([original, slim], {}, {}, {}, {})


def test_latency_cells_carry_the_speedup_and_the_noise_flag():
    text = _result(noisy=True).to_markdown()
    assert "latency ort-cpu b64 (ms, speedup)" in text
    assert "| 579.83 |" in text  # the unpruned model: no speedup of its own
    assert "551.24 (1.05×) ⚠" in text and "within noise" in text
    clean = _result(noisy=False).to_markdown()
    assert "551.24 (1.05×) |" in clean and "within noise" not in clean
