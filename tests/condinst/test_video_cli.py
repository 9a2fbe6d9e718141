"""`python -m condinst video` and `evaluate-video`: checks before the model loads, results that score
as expected, the drawn video, and a truncated input among good ones."""
from __future__ import annotations

import json

import pytest

import videokit
from condinst.cli import main
from condinst.video.reader import open_video
from testutils import REPO

WEIGHTS = str(REPO / "assets" / "default_model" / "model.pth")
pytestmark = pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="shared fruits_nuts photos not found")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    ann = videokit.write_ytvis(root / "ytvis.json", [videokit.crossing_video(root, frames=8, mp4=True)])
    return root, ann


def one_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_arguments_and_inputs_are_checked_before_the_model_loads(tmp_path, capsys, videos):
    root, ann = videos
    garbage = tmp_path / "w.pth"  # loading it would fail with a checkpoint error, not the ones below
    garbage.write_bytes(b"not a checkpoint")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "junk.mp4").write_bytes(b"junk" * 100)
    clip = str(root / "crossing.mp4")
    out = str(tmp_path / "r.json")
    base = ["video", "--weights", str(garbage), "--output", out]
    cases = [(base + ["--input", str(tmp_path / "nope.mp4")], "no such file"),
             (base + ["--input", str(tmp_path / "notes.txt")], "not a video file"),
             (base + ["--input", str(tmp_path / "junk.mp4")], "junk.mp4: not a readable video"),
             (base + ["--input", clip, str(root / "crossing"), "--vis", str(tmp_path / "v.mp4")], "give a folder"),
             (base + ["--input", clip, clip], "given twice"),
             (base + ["--input", clip, "--fps", "inf"], "--fps inf: must be a positive number"),
             (base + ["--input", str(tmp_path)], "folder holds no frame images"),
             (base + ["--input", str(root / "crossing"), "--ann", str(tmp_path / "nope.json")], "--ann"),
             (["video", "--weights", str(tmp_path / "gone.pth"), "--output", out, "--input", clip], "gone.pth: no such file"),
             (["video", "--weights", str(garbage), "--output", str(tmp_path), "--input", clip], "is a folder"),
             (["evaluate-video", "--ann", str(ann)], "either --weights"),
             (["evaluate-video", "--ann", str(ann), "--weights", str(garbage), "--results", out], "either --weights"),
             (["evaluate-video", "--ann", str(ann), "--weights", str(garbage)], "needs --videos"),
             (["evaluate-video", "--ann", str(ann), "--results", str(tmp_path / "none.json")], "no such file"),
             (["video", "--weights", str(garbage), "--output", out, "--input", clip, "--batch-size", "0"], "batch-size")]
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    cases.append((["video", "--weights", str(onnx), "--output", out, "--input", clip], "needs the PyTorch model"))
    renamed = tmp_path / "elsewhere"
    renamed.mkdir()
    cases.append((base + ["--input", str(renamed), "--ann", str(ann)], "no video of"))
    for argv, needle in cases:
        if argv[-2:] == ["--batch-size", "0"]:
            with pytest.raises(SystemExit) as e:
                main(argv)
            assert e.value.code == 2 and needle in capsys.readouterr().err
            continue
        assert needle in one_error(capsys, argv), argv
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_video_then_evaluate_video(tmp_path, capsys, videos):
    root, ann = videos
    results, vis, metrics = tmp_path / "r.json", tmp_path / "vis.mp4", tmp_path / "m.json"
    assert main(["video", "--weights", WEIGHTS, "--input", str(root / "crossing.mp4"), "--output", str(results),
                 "--vis", str(vis), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "frames/s" in out and "tracking" in out
    entries = json.loads(results.read_text())
    assert entries and {e["video_id"] for e in entries} == {1}  # input order
    assert all(len(e["segmentations"]) == 8 and 0 < e["score"] <= 1 for e in entries)
    drawn = open_video(vis)
    assert (drawn.info.height, drawn.info.width) == (360, 480) and len(list(drawn.frames())) == 8
    assert main(["evaluate-video", "--ann", str(ann), "--results", str(results), "--metrics", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert m["ap"]["AP"] > 0.3 and m["tracking"]["HOTA"] > 0.5, m
    # the ground truth itself scores 1
    perfect = tmp_path / "gt.json"
    perfect.write_text(json.dumps(videokit.gt_results(ann)))
    assert main(["evaluate-video", "--ann", str(ann), "--results", str(perfect), "--metrics", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert m["ap"]["AP"] == pytest.approx(1.0) and m["tracking"]["HOTA"] == pytest.approx(1.0)
    assert m["tracking"]["IDSW"] == 0
    assert "AP 100.0" in capsys.readouterr().out


@pytest.mark.slow
def test_a_truncated_video_is_reported_and_the_others_written(tmp_path, capsys, videos):
    root, _ = videos
    frames = list(open_video(root / "crossing").frames())
    # moov atom in front (faststart), then cut: opens, decodes a few frames, then runs out
    import av

    with av.open(str(tmp_path / "fs.mp4"), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=10)
        s.height, s.width, s.pix_fmt = 360, 480, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = (tmp_path / "fs.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    results = tmp_path / "r.json"
    code = main(["video", "--weights", WEIGHTS, "--input", str(tmp_path / "cut.mp4"), str(root / "crossing"),
                 "--output", str(results), "--no-progress", "--tracker", "bytetrack"])
    err = capsys.readouterr().err
    assert code == 1 and "cut.mp4: " in err and "truncated" in err and len(err.strip().splitlines()) == 1
    entries = json.loads(results.read_text())
    assert entries and {e["video_id"] for e in entries} == {2}


@pytest.mark.slow
def test_evaluate_video_runs_the_model_on_a_dataset(tmp_path, capsys, videos):
    root, ann = videos
    scores = {}
    for tracker in ("condinst", "bytetrack"):
        metrics = tmp_path / f"{tracker}.json"
        assert main(["evaluate-video", "--weights", WEIGHTS, "--ann", str(ann), "--videos", str(root), "--tracker",
                     tracker, "--metrics", str(metrics), "--no-progress", "--output", str(tmp_path / "r.json")]) == 0
        scores[tracker] = json.loads(metrics.read_text())
    assert "% of the model time" in capsys.readouterr().out
    for m in scores.values():
        assert m["ap"]["AP"] > 0.3 and m["tracking"]["HOTA"] > 0.5, scores


def test_a_model_of_other_categories_is_refused_before_any_frame(tmp_path, capsys, videos):
    root, ann = videos
    data = json.loads(ann.read_text())
    for c in data["categories"]:
        c["id"] += 10
    for a in data["annotations"]:
        a["category_id"] += 10
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    message = one_error(capsys, ["evaluate-video", "--weights", WEIGHTS, "--ann", str(other), "--videos", str(root),
                                 "--no-progress"])
    assert "category ids [1, 2, 3] are not all in other.json's [11, 12, 13]" in message


def test_ann_gives_the_dataset_video_id_and_frame_list(tmp_path, capsys, videos):
    root, ann = videos
    data = json.loads(ann.read_text())
    data["videos"][0]["id"] = 42
    for a in data["annotations"]:
        a["video_id"] = 42
    data["videos"][0]["file_names"] = data["videos"][0]["file_names"][:5]  # only 5 of the folder's 8 frames listed
    for a in data["annotations"]:
        a["segmentations"] = a["segmentations"][:5]
    renumbered = tmp_path / "ann42.json"
    renumbered.write_text(json.dumps(data))
    results = tmp_path / "r.json"
    assert main(["video", "--weights", WEIGHTS, "--input", str(root / "crossing"), "--ann", str(renumbered),
                 "--output", str(results), "--no-progress"]) == 0
    entries = json.loads(results.read_text())
    assert entries and all(e["video_id"] == 42 and len(e["segmentations"]) == 5 for e in entries)
    assert main(["evaluate-video", "--ann", str(renumbered), "--results", str(results)]) == 0
