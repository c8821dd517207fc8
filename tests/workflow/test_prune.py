"""``slimfx prune`` against the reference code: checkpoints in, ``pruned.pth`` out.

The reference model class and pruning algorithm are re-implemented here from the reference
code (``conftest.reference_vgg`` and :func:`reference_prune`), as independent oracles.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from slimfx.cli import main
from slimfx.errors import CheckpointError
from slimfx.ir.options import SlimOptions
from slimfx.models import VGG, build_model
from slimfx.workflow.prune import model_for_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


def _nonzero(mask: torch.Tensor) -> np.ndarray:
    idx = np.squeeze(np.argwhere(np.asarray(mask.numpy())))
    return np.resize(idx, (1,)) if idx.size == 1 else idx


def reference_prune(model: nn.Module, percent: float, reference_vgg, exact_count: bool):
    """The reference ``vggprune.py`` (CPU). ``exact_count`` uses ``y[int(total*percent) - 1]``
    as the threshold, pruning exactly ``int(total*percent)`` channels; the reference's own
    ``y[int(total*percent)]`` prunes one more."""
    model = copy.deepcopy(model)
    total = sum(m.weight.data.shape[0] for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    bn = torch.zeros(total)
    index = 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            size = m.weight.data.shape[0]
            bn[index : (index + size)] = m.weight.data.abs().clone()
            index += size
    y, _ = torch.sort(bn)
    thre = y[int(total * percent) - (1 if exact_count else 0)]
    pruned, cfg, cfg_mask = 0, [], []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            mask = m.weight.data.abs().clone().gt(thre).float()
            pruned = pruned + mask.shape[0] - torch.sum(mask)
            m.weight.data.mul_(mask)
            m.bias.data.mul_(mask)
            cfg.append(int(torch.sum(mask)))
            cfg_mask.append(mask.clone())
        elif isinstance(m, nn.MaxPool2d):
            cfg.append("M")
    newmodel = reference_vgg(cfg=cfg)
    layer_id_in_cfg, start_mask, end_mask = 0, torch.ones(3), cfg_mask[0]
    for m0, m1 in zip(model.modules(), newmodel.modules(), strict=False):
        if isinstance(m0, nn.BatchNorm2d):
            idx1 = _nonzero(end_mask)
            m1.weight.data = m0.weight.data[idx1.tolist()].clone()
            m1.bias.data = m0.bias.data[idx1.tolist()].clone()
            m1.running_mean = m0.running_mean[idx1.tolist()].clone()
            m1.running_var = m0.running_var[idx1.tolist()].clone()
            layer_id_in_cfg += 1
            start_mask = end_mask.clone()
            if layer_id_in_cfg < len(cfg_mask):
                end_mask = cfg_mask[layer_id_in_cfg]
        elif isinstance(m0, nn.Conv2d):
            idx0 = _nonzero(start_mask)
            idx1 = _nonzero(end_mask)
            w1 = m0.weight.data[:, idx0.tolist(), :, :].clone()
            m1.weight.data = w1[idx1.tolist(), :, :, :].clone()
        elif isinstance(m0, nn.Linear):
            idx0 = _nonzero(start_mask)
            m1.weight.data = m0.weight.data[:, idx0].clone()
            m1.bias.data = m0.bias.data.clone()
    return cfg, newmodel.state_dict(), int(pruned), total


@pytest.fixture(scope="module")
def reference_checkpoint(tmp_path_factory, wf):
    """A checkpoint as the reference ``main.py`` writes it, of a sparsity-trained VGG-11."""
    torch.manual_seed(0)
    model = wf.sparse_trained_like(wf.reference_vgg(dataset="cifar10", depth=11))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path_factory.mktemp("ref") / "model_best.pth.tar"
    torch.save(
        {
            "epoch": 160,
            "best_prec1": torch.tensor(0.93),
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
        },
        path,
    )
    return path, model


def prune_cli(path, out, *extra) -> int:
    return main(
        [
            "prune",
            "--dataset",
            "digits",
            "--depth",
            "11",
            "--model",
            str(path),
            "--save",
            str(out),
            "--percent",
            "0.5",
            *extra,
        ]
    )


@pytest.mark.parametrize("compensate", [True, False], ids=["compensate", "no-compensate"])
def test_reference_checkpoint_prunes_and_loads_into_the_reference_class(
    reference_checkpoint, tmp_path, capsys, wf, compensate
):
    path, model = reference_checkpoint
    extra = [] if compensate else ["--no-compensate"]
    assert prune_cli(path, tmp_path, *extra) == 0
    out = capsys.readouterr().out
    assert "=> loaded checkpoint" in out and "(epoch 160) Prec1: 0.930000" in out
    assert "feature.1" in out and "total channel  remaining channel" in out
    for text in (
        "Pruned ratio: 50.00%",
        "Test accuracy of the masked model",
        "Test accuracy of the slim model",
        "Configuration: [",
    ):
        assert text in out
    pruned = torch.load(tmp_path / "pruned.pth", weights_only=True)
    assert set(pruned) == {"cfg", "state_dict"}
    slim = wf.reference_vgg(cfg=pruned["cfg"])
    slim.load_state_dict(pruned["state_dict"], strict=True)
    # the slim reference model equals the original with the pruned gammas zeroed (and, without
    # compensation, their betas too); pruned = the int(total * percent) smallest |gamma|
    masked = copy.deepcopy(model)
    bns = [m for m in masked.modules() if isinstance(m, nn.BatchNorm2d)]
    scores = torch.cat([m.weight.detach().abs() for m in bns])
    cut = scores.sort().values[int(len(scores) * 0.5) - 1]
    with torch.no_grad():
        for m in bns:
            drop = m.weight.abs() <= cut
            m.weight[drop] = 0
            if not compensate:
                m.bias[drop] = 0
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        want, got = masked.eval()(x), slim.eval()(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    text = (tmp_path / "prune.txt").read_text().splitlines()
    assert text[0] == "Configuration: " and text[1] == str(pruned["cfg"])
    assert text[2] == f"Number of parameters: {sum(p.numel() for p in slim.parameters())}"
    assert text[3].startswith("Test accuracy: 0.")
    for plot in ("gammas.png", "channels.png"):
        assert (tmp_path / plot).read_bytes()[:8] == PNG


def test_no_compensate_equals_the_reference_pruning_with_an_exact_count(
    reference_checkpoint, tmp_path, wf
):
    path, model = reference_checkpoint
    assert prune_cli(path, tmp_path, "--no-compensate", "--no-plots") == 0
    ours = torch.load(tmp_path / "pruned.pth", weights_only=True)
    cfg, state, pruned, total = reference_prune(model, 0.5, wf.reference_vgg, exact_count=True)
    assert pruned == int(total * 0.5)
    assert ours["cfg"] == cfg
    # the reference never copies num_batches_tracked (its new model starts at 0)
    keys = [k for k in state if not k.endswith("num_batches_tracked")]
    assert set(keys) == {k for k in ours["state_dict"] if not k.endswith("num_batches_tracked")}
    for key in keys:
        assert torch.equal(ours["state_dict"][key], state[key]), key
    # the one documented difference: the reference threshold y[int(total*percent)] prunes one more
    _, _, reference_count, _ = reference_prune(model, 0.5, wf.reference_vgg, exact_count=False)
    assert reference_count == int(total * 0.5) + 1


def test_plain_state_dict_and_iterative_pruning(tmp_path, capsys, wf):
    model = wf.sparse_trained_like(VGG(dataset="digits", depth=11), seed=1)
    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)
    assert prune_cli(plain, tmp_path / "first", "--no-plots") == 0
    first = torch.load(tmp_path / "first" / "pruned.pth", weights_only=True)
    # a fine-tuned pruned model carries its cfg: it prunes again (the paper's repeat step)
    again = tmp_path / "finetuned.pth.tar"
    torch.save(
        {"epoch": 1, "best_prec1": 0.5, "cfg": first["cfg"], "state_dict": first["state_dict"]},
        again,
    )
    assert prune_cli(again, tmp_path / "second", "--no-plots", "--percent", "0.3") == 0
    second = torch.load(tmp_path / "second" / "pruned.pth", weights_only=True)
    widths = lambda cfg: [v for v in cfg if v != "M"]  # noqa: E731
    assert sum(widths(second["cfg"])) < sum(widths(first["cfg"]))
    capsys.readouterr()


HALF_CFG = [32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256]


def test_round_to_and_min_channels(tmp_path, wf, monkeypatch):
    model = wf.sparse_trained_like(VGG(dataset="digits", cfg=HALF_CFG), seed=2)
    ckpt = tmp_path / "m.pth"
    torch.save({"cfg": HALF_CFG, "state_dict": model.state_dict()}, ckpt)
    assert (
        prune_cli(ckpt, tmp_path / "r8", "--round-to", "8", "--min-channels", "16", "--no-plots")
        == 0
    )
    cfg = torch.load(tmp_path / "r8" / "pruned.pth", weights_only=True)["cfg"]
    assert all(v % 8 == 0 and v >= 16 for v in cfg if v != "M")
    calls = []

    def fake_auto_round_to(model, example_inputs, percent=None, *, options):
        calls.append((type(model).__name__, tuple(example_inputs.shape), percent, options))
        return 4

    monkeypatch.setattr("slimfx.bench.round_to.auto_round_to", fake_auto_round_to)
    assert prune_cli(ckpt, tmp_path / "auto", "--round-to", "auto", "--no-plots") == 0
    expected = SlimOptions(percent=0.5, min_channels=1, compensate=True)
    assert calls == [("VGG", (2, 3, 32, 32), None, expected)]
    cfg = torch.load(tmp_path / "auto" / "pruned.pth", weights_only=True)["cfg"]
    assert all(v % 4 == 0 for v in cfg if v != "M")
    assert "round_to: 4" in (tmp_path / "auto" / "prune.txt").read_text()


@pytest.mark.parametrize("compensate", [True, False], ids=["compensate", "no-compensate"])
def test_slim_result_cfg_rebuilds_the_vgg(compensate, wf):
    import slimfx

    model = wf.sparse_trained_like(VGG(dataset="digits", depth=11), seed=3)
    res = slimfx.slim(model, torch.randn(2, 3, 32, 32), 0.5, compensate=compensate)
    rebuilt = VGG(dataset="digits", cfg=res.cfg)
    rebuilt.load_state_dict(res.module.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), res.module.eval()(x), rtol=1e-5, atol=1e-6)
    assert res.report.params_before / res.report.params_after > 2


def _state(arch, depth, dataset="digits", cfg=None):
    with torch.device("meta"):  # shapes are all the loading helpers compare
        return build_model(arch, depth, dataset, cfg=cfg).state_dict()


@pytest.mark.parametrize(
    ("file", "flags", "message"),
    [
        (
            ("vgg", 11),
            ("vgg", 13),
            "wrong --depth: the file is a VGG-11 checkpoint: use --depth 11",
        ),
        (
            ("resnet", 20),
            ("vgg", 19),
            "wrong --arch/--depth: the file is a PreResNet-20 checkpoint: use --arch resnet "
            "--depth 20",
        ),
        (
            ("vgg", 16, "cifar100"),
            ("vgg", 16),
            "wrong --dataset: the file is a VGG-16 checkpoint with 100 classes: use --dataset "
            "cifar100",
        ),
        (("densenet", 10), ("densenet", 40), "DenseNet-10 checkpoint: use --depth 10"),
    ],
)
def test_a_file_of_another_model_says_which_flags_fit(file, flags, message):
    arch, depth = flags
    with pytest.raises(CheckpointError) as info:
        model_for_checkpoint(
            {"state_dict": _state(*file)}, "f.pth", arch=arch, depth=depth, dataset="digits"
        )
    text = str(info.value)
    assert text.startswith("f.pth does not fit ") and message in text, text
    assert len(text) < 400 and "\n" not in text


def test_no_fitting_model_gives_a_short_summary_and_an_invalid_depth_names_the_file():
    state = {k: v for k, v in _state("vgg", 11).items() if not k.startswith("classifier")}
    with pytest.raises(CheckpointError) as info:
        model_for_checkpoint({"state_dict": state}, "f.pth", arch="vgg", depth=11, dataset="digits")
    assert str(info.value) == (
        "f.pth does not fit VGG-11: missing keys: classifier.weight and 1 more "
        "(wrong --arch/--depth/--dataset, or a pruned model without its cfg?)"
    )
    with pytest.raises(ValueError, match=r"one of 11, 13, 16, 19; the file is a VGG-11 .*11$"):
        model_for_checkpoint(
            {"state_dict": _state("vgg", 11)}, "f.pth", arch="vgg", depth=12, dataset="digits"
        )
    cfg = [8, "M", 16]
    ckpt = {"cfg": cfg, "state_dict": _state("vgg", 0, cfg=cfg)}
    with pytest.raises(
        CheckpointError, match="The file is a pruned VGG checkpoint: use --arch vgg"
    ):
        model_for_checkpoint(ckpt, "p.pth", arch="resnet", depth=164, dataset="digits")
