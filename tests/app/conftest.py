"""Fixtures of the app tests: a tiny CondInst checkpoint that segments visible blobs, images.

The tiny model has random weights except for its controller, whose output is fixed to filters
that turn the relative coordinates into a diamond |x| + |y| < 0.5 (in units of the level's
size of interest) around each detection's location: every detection gets a compact mask of a
size set by its FPN level, which makes clicks, edits and explanations testable.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from condinst.checkpoint import save_checkpoint
from condinst.config import (BackboneConfig, CondInstConfig, FCOSConfig, InputConfig, MaskBranchConfig,
                             NeckConfig)
from condinst.model import CondInst
from testutils import timeout_scale

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

FRUITS = Path(os.environ.get("CONDINST_SHARED", Path(__file__).resolve().parents[3] / "shared")) \
    / "datasets" / "fruits_nuts" / "data" / "images"

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread while the app tests run (restored after each module).

    The tiny model gains nothing from more, and on a busy 2-core machine oversubscribed torch
    threads made these tests 5x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(max_detections: int = 8) -> CondInstConfig:
    """A very small CondInst (3 fruit classes, 320 px test size)."""
    return CondInstConfig(
        backbone=BackboneConfig(stem_out_channels=8, res2_out_channels=32, width_per_group=8),
        neck=NeckConfig(out_channels=32), mask_branch=MaskBranchConfig(channels=16),
        fcos=FCOSConfig(num_classes=3, post_nms_topk=max_detections),
        class_names=("date", "fig", "hazelnut"), category_ids=(1, 2, 3),
        input=InputConfig(min_size_test=320, min_size_train=(320,), max_size_train=533))


def diamond_filters(in_channels: int, radius: float = 0.5, sharpness: float = 8.0) -> torch.Tensor:
    """Controller bias giving the dynamic head: logit = a * (r - |x| - |y|) + small feature terms."""
    w0, w1, w2 = torch.zeros(8, in_channels), torch.zeros(8, 8), torch.zeros(1, 8)
    w0[0, 0], w0[1, 0], w0[2, 1], w0[3, 1] = 1.0, -1.0, 1.0, -1.0
    w0[4:, 2:] = 0.3 * torch.randn(4, in_channels - 2)
    w1[:, :] = torch.eye(8)
    w2[0, :4], w2[0, 4:] = -sharpness, 0.5
    biases = torch.cat([torch.zeros(8), torch.zeros(8), torch.tensor([sharpness * radius])])
    return torch.cat([w0.flatten(), w1.flatten(), w2.flatten(), biases])


def build_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Save the tiny blob-segmenting model in our checkpoint format."""
    torch.manual_seed(seed)
    cfg = tiny_config()
    model = CondInst(cfg)
    with torch.no_grad():
        model.controller.weight.mul_(0.02)
        model.controller.bias.copy_(diamond_filters(model.mask_head.in_channels))
        head = model.proposal_generator.fcos_head
        head.cls_logits.weight.mul_(4.0)
        head.cls_logits.bias.fill_(-1.0)
    return save_checkpoint(path, model, cfg)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pth")


def synthetic_images(folder: Path, count: int = 3) -> list[Path]:
    """Coloured-disc images (used when the fruits dataset is not available)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(0)
    for k in range(count):
        image = np.full((300, 400, 3), 40 + 30 * k, np.uint8)
        for _ in range(6):
            y, x, r = rng.integers(40, 260), rng.integers(40, 360), rng.integers(15, 40)
            yy, xx = np.ogrid[:300, :400]
            image[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = rng.integers(0, 256, 3)
        path = folder / f"synthetic_{k}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def image_paths(tmp_path_factory) -> list[Path]:
    """Three small RGB images: fruits_nuts photos if present, else synthetic ones."""
    folder = tmp_path_factory.mktemp("images")
    if FRUITS.is_dir():
        paths = []
        for name in ("0.jpg", "1.jpg", "2.jpg"):
            target = folder / f"fruit_{name}"
            shutil.copyfile(FRUITS / name, target)
            paths.append(target)
        return paths
    return synthetic_images(folder)


@pytest.fixture(scope="session")
def samples_dir(image_paths, tmp_path_factory) -> Path:
    """A folder of 'bundled samples' (two of the test images)."""
    folder = tmp_path_factory.mktemp("samples")
    for path in image_paths[:2]:
        shutil.copyfile(path, folder / path.name.replace("fruit_", "sample_"))
    return folder


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


class RunningApp:
    """A launched app: its URL, Service and Blocks."""

    def __init__(self, url: str, service, demo):
        self.url, self.service, self.demo = url, service, demo


@contextlib.contextmanager
def patient_server_start():
    """Gradio gives its uvicorn thread a fixed 5 s (gradio.http_server's clock) to start serving, a race on a busy
    machine: while an app launches, that module's clock runs timeout_scale() times slower."""
    import gradio.http_server as http_server

    scale, real = timeout_scale(), http_server.time
    http_server.time = types.SimpleNamespace(time=lambda: real.time() / scale, sleep=real.sleep)
    try:
        yield
    finally:
        http_server.time = real


@pytest.fixture(scope="module")
def app_factory(tiny_weights, samples_dir, tmp_path_factory):
    """Start apps on free 127.0.0.1 ports; every one is closed at the end of the module."""
    from app.__main__ import launch
    from app.service import Service

    started = []

    def start(workspace=None, auth=None, max_file_size="20mb", weights=None, **service_kwargs) -> RunningApp:
        """`weights`: the tiny model unless given (e.g. the bundled one, app.model.session.DEFAULT_WEIGHTS)."""
        workspace = workspace or tmp_path_factory.mktemp("ws")
        service = Service.create(workspace, weights or tiny_weights, samples_dir=samples_dir, **service_kwargs)
        port = free_port()
        with patient_server_start():
            demo = launch(service, "127.0.0.1", port, auth=auth, max_file_size=max_file_size, block=False)
        started.append((demo, service))
        return RunningApp(f"http://127.0.0.1:{port}/", service, demo)

    yield start
    for demo, service in started:
        demo.close()
        service.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright (browser tests; skipped without either): one per test process,
    shared by the browser tests (browserkit.shared_chromium; each test opens its own context)."""
    from browserkit import playwright_or_skip, shared_chromium

    return shared_chromium(playwright_or_skip())


@pytest.fixture
def page(browser):
    """A 1400x900 page in its own browser context."""
    from browserkit import new_page

    context, page = new_page(browser)
    yield page
    context.close()


@pytest.fixture(scope="session")
def crossing_mp4(tmp_path_factory) -> Path:
    """The crossing test video of tests/videokit.py (8 frames of 360x480) as an mp4 (video tests)."""
    import videokit

    if not videokit.FRUITS.is_dir():
        pytest.skip("shared fruits_nuts photos not found")
    out = tmp_path_factory.mktemp("video")
    videokit.crossing_video(out, frames=8, mp4=True)
    return out / "crossing.mp4"


@pytest.fixture
def video_service(tiny_weights, tmp_path):
    """`video_service(*files, weights=None)`: a Service on a fresh workspace (the tiny model unless
    `weights`) with `files` added (images and videos); closed after the test (video tests)."""
    from app.service import Service

    started = []

    def start(*files, weights=None):
        service = Service.create(tmp_path / f"ws{len(started)}", weights or tiny_weights)
        started.append(service)
        if files:
            service.images.add_files(list(files))
        return service

    yield start
    for service in started:
        service.close()
