"""Exporting video sequences: YouTube-VIS (folder through `python -m app export`, zip through the
service) loads back through condinst's reader, `condinst evaluate-video --results` and the training
loader; the per-frame COCO export carries video_id / frame_index / track_id."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import videokit
from app import commands
from app.interop.export import ExportError, build_coco
from app.service import Service
from condinst.video.ytvis import load_dataset
from testutils import scaled

pytestmark = pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="shared fruits_nuts photos not found")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def service(video_service, crossing_mp4, image_paths):
    return video_service(image_paths[0], crossing_mp4)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=scaled(300))


def test_ytvis_folder_export_loads_back_and_scores_itself_perfectly(service, tmp_path, capsys):
    tracks = service.tracks.tracks(1)
    track = max(tracks, key=lambda t: len(t.frames))
    frames = service.sequences.frame_ids(1)
    target = next(c.id for c in service.ws.categories() if c.id != track.category_id)
    service.tracks.set_class(frames[track.frames[0]], track.id, target)  # a fixed class travels
    out = tmp_path / "export"
    assert commands.main(["export", "--workspace", str(service.ws.root), "--format", "ytvis", "--out", str(out),
                          "--min-score", "0"]) == 0, capsys.readouterr().err
    dataset = load_dataset(out / "ytvis.json")
    (video,) = dataset.videos  # the still image is not a video
    assert (video["id"], video["length"], video["height"], video["width"]) == (1, 8, 360, 480)
    assert all((out / "JPEGImages" / name).is_file() for name in video["file_names"])
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out / "JPEGImages" / video["file_names"][3]).convert("RGB")),
                          service.ws.get_image(frames[3]))
    annotations = json.loads((out / "ytvis.json").read_text())["annotations"]
    by_track = {a["track_id"]: a for a in annotations if a["track_id"] is not None}
    assert all(sum(s is not None for s in a["segmentations"]) == 1 for a in annotations if a["track_id"] is None)
    assert set(t.id for t in tracks) <= set(by_track)
    exported = by_track[track.id]
    assert exported["category_id"] == target
    for position, image_id in enumerate(frames):  # each frame's mask of the track, exactly as stored
        stored = [i for i in service.ws.instances(image_id) if i.track_id == track.id]
        seg = exported["segmentations"][position]
        assert (seg is None) == (not stored)
        if stored:
            assert seg["counts"] == stored[0].rle_counts.decode("ascii")
            assert exported["areas"][position] == stored[0].area
    # the export is a YouTube-VIS dataset evaluate-video scores: its own tracks as results give AP 1
    results = [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 1.0,
                "segmentations": a["segmentations"]} for a in annotations]
    (tmp_path / "results.json").write_text(json.dumps(results))
    metrics = tmp_path / "metrics.json"
    done = run("-m", "condinst", "evaluate-video", "--ann", str(out / "ytvis.json"), "--results",
               str(tmp_path / "results.json"), "--metrics", str(metrics))
    assert done.returncode == 0, done.stderr
    scored = json.loads(metrics.read_text())
    assert scored["ap"]["AP"] == pytest.approx(1.0) and scored["tracking"]["IDSW"] == 0
    # ... and a training set: every frame an image, every tracked mask an annotation
    from training.data import CocoInstances

    train = CocoInstances(out / "ytvis.json", out / "JPEGImages")
    assert len(train) == 8
    assert sum(len(train[i]["annotations"]) for i in range(8)) == sum(
        s is not None for a in annotations for s in a["segmentations"])


def test_ytvis_zip_and_reviewed_only(service, tmp_path):
    path = service.export_ytvis_zip(min_score=0.0)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data = json.loads(archive.read("ytvis.json"))
    assert len([n for n in names if n.startswith("JPEGImages/crossing/")]) == 8
    assert [v["length"] for v in data["videos"]] == [8]
    frames = service.sequences.frame_ids(1)
    with pytest.raises(ExportError, match="no fully reviewed video sequences"):
        service.export_ytvis_zip(reviewed_only=True)
    for image_id in frames:
        service.ws.set_reviewed(image_id, True, 0.3)
    with zipfile.ZipFile(service.export_ytvis_zip(reviewed_only=True)) as archive:
        assert [v["id"] for v in json.loads(archive.read("ytvis.json"))["videos"]] == [1]


def test_per_frame_coco_carries_video_and_track(service):
    coco = build_coco(service.thresholded(0.0)).dataset
    frames = [i for i in coco["images"] if "video_id" in i]
    assert len(coco["images"]) == 9 and [i["frame_index"] for i in frames] == list(range(8))
    assert {i["video_id"] for i in frames} == {1}
    tracked = [a for a in coco["annotations"] if "track_id" in a["attributes"]]
    assert tracked
    for annotation in tracked:
        inst = service.ws.get_instance(annotation["id"])
        assert inst.track_id == annotation["attributes"]["track_id"]
        assert annotation["segmentation"]["counts"] == inst.rle_counts.decode("ascii")
        assert annotation["area"] == float(mask_utils.area(inst.rle))


def test_ytvis_export_of_a_workspace_without_videos_is_one_line(tiny_weights, tmp_path, image_paths, capsys):
    service = Service.create(tmp_path / "ws", tiny_weights)
    try:
        service.images.add_files([image_paths[0]])
        code = commands.main(["export", "--workspace", str(service.ws.root), "--format", "ytvis", "--out",
                              str(tmp_path / "out")])
    finally:
        service.close()
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0
    assert "error: Nothing to export as YouTube-VIS" in err and not (tmp_path / "out" / "ytvis.json").exists()


def test_bundled_model_tracks_follow_the_objects_through_the_crossing(tmp_path):
    """The bundled model in the app: its tracks, exported, scored against the video's ground truth
    (three cut-outs, two of them crossing): no ID switch, and the associations hold (AssA)."""
    from app.model.session import DEFAULT_WEIGHTS
    from condinst.video.evaluation import tracking_metrics
    from condinst.video.ytvis import load_results
    from app.interop.ytvis_export import export_ytvis

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("the bundled model is not present")
    video, anns = videokit.crossing_video(tmp_path, frames=10, mp4=True)
    truth = load_dataset(videokit.write_ytvis(tmp_path / "truth.json", [(video, anns)]))
    service = Service.create(tmp_path / "ws", DEFAULT_WEIGHTS)
    try:
        service.sequences.add_video(tmp_path / "crossing.mp4")
        exported = json.loads(export_ytvis(service.thresholded(0.3), tmp_path / "export").read_text())
    finally:
        service.close()
    # the model's duplicates the tracker left out are not stored: no one-frame tracks without an id
    assert all(a["track_id"] is not None for a in exported["annotations"])
    results = [{"video_id": 1, "category_id": a["category_id"], "score": 1.0, "segmentations": a["segmentations"]}
               for a in exported["annotations"]]
    (tmp_path / "results.json").write_text(json.dumps(results))
    metrics = tracking_metrics(truth, load_results(tmp_path / "results.json", truth))
    assert metrics["IDSW"] == 0 and metrics["AssA"] > 0.7, metrics
    long_tracks = [a for a in results if sum(s is not None for s in a["segmentations"]) >= 8]
    assert len(long_tracks) >= 3
