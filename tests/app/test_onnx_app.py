"""The app serves the same exported ONNX graph as `condinst predict --weights model.onnx` (issue 14)."""
from __future__ import annotations

import numpy as np
import pytest

from app.errors import AppError
from app.service import Service

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


@pytest.fixture(scope="module")
def onnx_weights(tiny_weights, tmp_path_factory):
    from condinst.export import export_onnx
    from condinst.predictor import load_model

    model, cfg = load_model(tiny_weights)
    return export_onnx(model.optimize_for_inference(), cfg, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.mark.slow
def test_the_app_segments_with_the_onnx_graph_like_with_the_checkpoint(tmp_path, tiny_weights, onnx_weights,
                                                                          image_paths):
    by_graph = Service.create(tmp_path / "a", onnx_weights)
    by_torch = Service.create(tmp_path / "b", tiny_weights)
    try:
        assert not by_graph.session.explains and by_torch.session.explains
        graph_report = by_graph.images.add_files(image_paths[:1])
        torch_report = by_torch.images.add_files(image_paths[:1])
        assert graph_report.instances == torch_report.instances > 0
        graph = by_graph.ws.instances(graph_report.new_ids[0])
        torch = by_torch.ws.instances(torch_report.new_ids[0])
        assert [i.category_id for i in graph] == [i.category_id for i in torch]
        for a, b in zip(graph, torch):
            assert abs(a.score - b.score) < 1e-4
            inter, union = (a.mask & b.mask).sum(), (a.mask | b.mask).sum()
            assert inter / max(union, 1) >= 0.99
        view = by_graph.initial_view()
        target = by_graph.actions.visible(view)[0]
        ys, xs = np.nonzero(target.mask)
        with pytest.raises(AppError, match="ONNX graph"):  # explaining needs the PyTorch model: one line
            by_graph.images.add_at_point(view, int(xs[0]), int(ys[0]))
        by_graph.actions.click(view, int(xs[len(xs) // 2]), int(ys[len(ys) // 2]), "select")  # editing works
    finally:
        by_graph.close()
        by_torch.close()
