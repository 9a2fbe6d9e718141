"""The video endpoints through gradio_client: upload a video, step and jump through its frames,
track operations and their refusals as status warnings; the model is not re-run on single frames."""
from __future__ import annotations

import pytest
from gradio_client import Client, handle_file

import videokit
from app.web.guard import WARNING
from testutils import http_timeout

pytestmark = [pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="shared fruits_nuts photos not found"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
TABLE, INFO, STATUS = 1, 6, 7  # annotate outputs (tests/app/test_api.py); the video panel's follow


def header(out) -> str:
    return next(o for o in out[STATUS + 1:] if isinstance(o, str) and o.startswith("**Video**"))


@pytest.mark.slow
def test_video_endpoints(app_factory, crossing_mp4, tmp_path):
    app = app_factory()
    client = Client(app.url, verbose=False, httpx_kwargs=http_timeout(), download_files=str(tmp_path), analytics_enabled=False)
    client.predict(api_name="/load")
    out = client.predict([handle_file(str(crossing_mp4))], api_name="/upload")
    assert "Added video sequence 1: 8 frames" in out[STATUS]
    frames = app.service.sequences.frame_ids(1)
    out = client.predict(6, api_name="/go_to_frame")
    assert "frame 6 " in out[INFO] and "frame **6** of 0-7" in header(out)
    assert out[TABLE]["headers"][-1] == "track"
    shown = {row[0]: row[-1] for row in out[TABLE]["data"]}
    assert shown == {i.id: (i.track_id if i.track_id is not None else "")
                     for i in app.service.actions.visible(app.service.initial_view(frames[6]))}
    out = client.predict(api_name="/next_frame")
    assert "frame **7**" in header(out)
    out = client.predict(api_name="/next_frame")  # the last frame stays
    assert "frame **7**" in header(out)
    out = client.predict(api_name="/previous_frame")
    assert "frame **6**" in header(out)
    out = client.predict(99, api_name="/go_to_frame")
    assert out[STATUS].startswith(WARNING) and "frames 0 to 7, not 99" in out[STATUS]
    # track operations: a refused merge is a warning and changes nothing; a split works
    tracks = app.service.tracks.tracks(1)
    a, b = next((s, t) for s in tracks for t in tracks if s.id < t.id and set(s.frames) & set(t.frames))
    out = client.predict(a.id, b.id, api_name="/track_merge")
    assert out[STATUS].startswith(WARNING) and "both have an instance on frame" in out[STATUS]
    assert app.service.tracks.tracks(1) == tracks
    long = max(tracks, key=lambda t: len(t.frames))
    out = client.predict(long.frames[len(long.frames) // 2], api_name="/go_to_frame")
    out = client.predict(long.id, api_name="/track_split")
    assert "split at frame" in out[STATUS], out[STATUS]
    assert len(app.service.tracks.tracks(1)) == len(tracks) + 1
    out = client.predict(api_name="/undo")
    assert app.service.tracks.tracks(1) == tracks
    # the model is not re-run on single frames (their tracks would break)
    out = client.predict(api_name="/rerun")
    assert "video frame" in out[STATUS]
    out = client.predict(api_name="/segment_all")
    assert "skipped 8 video frame(s)" in out[STATUS]
    assert app.service.tracks.tracks(1) == tracks
    # propagation endpoints: mistakes are status warnings, nothing pending or stored
    out = client.predict(3, api_name="/propagate_preview")
    assert out[STATUS].startswith(WARNING) and "Select the instance to propagate" in out[STATUS]
    out = client.predict(api_name="/propagate_accept")
    assert out[STATUS].startswith(WARNING) and "Nothing to accept" in out[STATUS]
    out = client.predict(api_name="/propagate_discard")
    assert out[STATUS] == "Nothing to discard." and out[-1] == ""
    assert app.service.tracks.tracks(1) == tracks
