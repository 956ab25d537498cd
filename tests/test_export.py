"""builder.export.onnx_body: the fused TPU body and the libreyolo module contract it relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("libreyolo")


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    from libreyolo.models.yolonas.nn import LibreYOLONASModel

    torch.manual_seed(0)
    m = LibreYOLONASModel(config="s", nb_classes=3).eval()
    # Non-trivial BN statistics so fusion errors would show.
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m


def test_body_equals_the_unfused_heads(model) -> None:  # type: ignore[no-untyped-def]
    from builder.export.onnx_body import body_outputs, make_body

    x = torch.rand(1, 3, 96, 96)
    outs = body_outputs(model, x.numpy())
    assert [o.shape for o in outs] == [(1, 68, 12, 12), (1, 3, 12, 12), (1, 68, 6, 6), (1, 3, 6, 6), (1, 68, 3, 3), (1, 3, 3, 3)]
    # Reference: libreyolo's own (unfused) raw predictions, concatenated per anchor.
    with torch.no_grad():
        _, raw = model(x)
    cls_ref, reg_ref = raw[0][0].numpy(), raw[1][0].numpy()  # (A, nc) logits, (A, 68) DFL logits
    cls = np.concatenate([o[0].reshape(3, -1).T for o in outs[1::2]])
    reg = np.concatenate([o[0].reshape(68, -1).T for o in outs[0::2]])
    np.testing.assert_allclose(cls, cls_ref, atol=1e-3)
    np.testing.assert_allclose(reg, reg_ref, atol=1e-3)
    body = make_body(model)
    assert all(getattr(m, "fully_fused", True) for m in body.modules())
    assert model.backbone is not body.backbone  # the caller's model is not modified


def test_onnx_is_plain_convs(model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnx")
    from builder.export.onnx_body import export_onnx, op_histogram

    p = export_onnx(model, 64, tmp_path / "body.onnx")
    hist = op_histogram(p)
    assert set(hist) <= {"Conv", "Relu", "Mul", "Add", "Concat", "MaxPool", "ConvTranspose", "Identity"}
    assert hist["Conv"] == 98 and hist["ConvTranspose"] == 2


def test_refuses_a_foreign_model() -> None:
    from builder.export.onnx_body import ExportError, make_body

    with pytest.raises(ExportError, match="backbone"):
        make_body(torch.nn.Conv2d(3, 3, 1))
