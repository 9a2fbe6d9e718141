"""Video instance segmentation with CondInst: read videos, segment frames in batches, link the
instances into tracks online (with the tracks' own dynamic filters), write and score YouTube-VIS results.

    reader.py      videos (PyAV) and frame folders, streamed frame by frame
    segmenter.py   frames -> per-frame results (+ mask features for the tracker), in batches
    tracker.py     CondInst's own online tracker (filters re-applied at the predicted location)
    propagate.py   a person's mask of one frame carried to the next frames with the instance's own filters
    bytetrack.py   the box-tracker baseline (ByteTrack from Roboflow's `trackers`) on the same detections
    pipeline.py    one video end to end (segmenter -> tracker -> results, drawn video), timed
    vis_results.py tracks -> YouTube-VIS results (one RLE or null per frame), masks spooled to SQLite
    parts.py       a run's finished videos on disk (OUTPUT.parts/), streamed into one results file; --resume
    render.py      tracks drawn with supervision, written as a video (PyAV, atomically)
    ytvis.py       YouTube-VIS dataset JSON: loading and checking
    evaluation.py  YouTube-VIS AP/AR (spatio-temporal mask IoU), ID switches and HOTA
    cli.py         `python -m condinst video` and `python -m condinst evaluate-video`
"""
