"""CondInst in Label Studio: an ML backend (pre-annotations, click-to-refine, training) and format converters.

    server.py        the HTTP protocol (Starlette + uvicorn): auth, size limits, one model slot
    adapter.py       the one predict / fit adapter: Label Studio requests -> the model session
    label_config.py  the project's labeling config: Image + BrushLabels / PolygonLabels (+ KeyPointLabels)
    results.py       masks <-> result regions (brush RLE, polygons in percent)
    rle.py           Label Studio's brush RLE codec
    client.py        HTTP to the one Label Studio the backend was started with (images, exports)
    trainer.py       training on the project's annotations with the app's retrain job
    interop.py       Label Studio JSON <-> COCO (import into a workspace, predictions for Label Studio)
    cli.py           `python -m app ml-backend` and `python -m app ls-predictions`
"""
