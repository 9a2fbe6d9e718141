"""Drives a real Label Studio through its SDK; runs in Label Studio's own venv (tools/label_studio_env.py).

The test starts it once and talks JSON lines: a request ``{"op": NAME, ...}`` on stdin, an answer
``{"ok": true, ...}`` or ``{"ok": false, "error": ...}`` on stdout. Brush masks are decoded here with
the SDK's own codec (``label_studio_sdk.converter.brush``), so the test compares what Label Studio's
code reads, not what ours does. Masks travel as .npy files in the folder the request names.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter import brush


class Driver:
    def __init__(self, url: str, token: str):
        self.url, self.token = url.rstrip("/"), token
        self.ls = LabelStudio(base_url=self.url, api_key=token)
        self.headers = {"Authorization": f"Token {token}"}

    def op_create_project(self, title: str, label_config: str) -> dict:
        return {"id": self.ls.projects.create(title=title, label_config=label_config).id}

    def op_upload(self, project: int, files: list[str]) -> dict:
        """Upload image files (Label Studio stores them under /data/upload/)."""
        handles = [(f"file{k}", (Path(f).name, open(f, "rb"), "image/jpeg")) for k, f in enumerate(files)]
        try:
            answer = requests.post(f"{self.url}/api/projects/{project}/import", headers=self.headers, files=handles,
                                   timeout=120)
        finally:
            for _, (_, handle, _) in handles:
                handle.close()
        answer.raise_for_status()
        return self.op_tasks(project)

    def op_import_tasks(self, project: int, tasks: list[dict]) -> dict:
        self.ls.projects.import_tasks(id=project, request=tasks)
        return self.op_tasks(project)

    def op_tasks(self, project: int) -> dict:
        return {"tasks": [{"id": t.id, "data": t.data} for t in self.ls.tasks.list(project=project)]}

    def op_add_backend(self, project: int, url: str, user: str, password: str) -> dict:
        ml = self.ls.ml.create(project=project, url=url, is_interactive=True, auth_method="BASIC_AUTH",
                               basic_auth_user=user, basic_auth_pass=password, title="CondInst")
        return {"id": ml.id, "state": ml.state, "model_version": ml.model_version, "error": ml.error_message}

    def op_retrieve_predictions(self, project: int, tasks: list[int] | None = None) -> dict:
        """The Data Manager's "Retrieve Predictions" action (Label Studio asks the backend)."""
        selected = {"all": False, "included": tasks} if tasks else {"all": True}
        self.ls.actions.create(id="retrieve_tasks_predictions", project=project, selected_items=selected)
        return {}

    def _decode(self, regions: list[dict], folder: Path, stem: str) -> list[dict]:
        out = []
        for k, region in enumerate(regions):
            entry = {"type": region["type"], "label": region["value"].get(region["type"], [None])[0],
                     "score": region.get("score")}
            if region["type"] == "brushlabels":
                height, width = region["original_height"], region["original_width"]
                mask = brush.decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 127
                entry["mask"] = str(folder / f"{stem}-{k}.npy")
                np.save(entry["mask"], mask)
            out.append(entry)
        return out

    def op_predictions(self, task: int, folder: str) -> dict:
        answer = []
        for p in self.ls.predictions.list(task=task):
            answer.append({"model_version": p.model_version, "score": p.score,
                           "regions": self._decode(p.result, Path(folder), f"task{task}-pred{p.id}")})
        return {"predictions": answer}

    def op_interactive(self, backend: int, task: int, context: dict, folder: str) -> dict:
        answer = requests.post(f"{self.url}/api/ml/{backend}/interactive-annotating", headers=self.headers,
                               json={"task": task, "context": context}, timeout=120)
        answer.raise_for_status()
        body = answer.json()
        if "errors" in body:
            return {"errors": body["errors"]}
        return {"model_version": body["data"].get("model_version"),
                "regions": self._decode(body["data"]["result"], Path(folder), f"task{task}-interactive")}

    def op_raw_predictions(self, task: int) -> dict:
        return {"predictions": [{"model_version": p.model_version, "result": p.result}
                                for p in self.ls.predictions.list(task=task)]}

    def op_annotate(self, task: int, result: list[dict]) -> dict:
        return {"id": self.ls.annotations.create(id=task, result=result).id}

    def op_train(self, backend: int) -> dict:
        self.ls.ml.train(id=backend)
        return {}

    def op_export(self, project: int, path: str) -> dict:
        answer = requests.get(f"{self.url}/api/projects/{project}/export", params={"exportType": "JSON"},
                              headers=self.headers, timeout=120)
        answer.raise_for_status()
        Path(path).write_bytes(answer.content)
        return {"tasks": len(answer.json())}



def encode(masks: list[str]) -> dict:
    """The SDK's mask2rle of .npy bool masks (the codec test; no Label Studio needed)."""
    return {"rle": [brush.mask2rle(np.load(m).astype(np.uint8) * 255) for m in masks]}


def decode(streams: list[dict], folder: str) -> dict:
    """The SDK's decode_rle of {"rle", "height", "width"} streams, alpha > 127 masks saved as .npy."""
    paths = []
    for k, stream in enumerate(streams):
        values = brush.decode_rle(stream["rle"]).reshape(stream["height"], stream["width"], 4)
        paths.append(str(Path(folder) / f"sdk-decoded-{k}.npy"))
        np.save(paths[-1], values[:, :, 3] > 127)
    return {"masks": paths}


def main() -> int:
    driver = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            if op in ("encode", "decode"):
                answer = globals()[op](**request)
            elif op == "connect":
                driver = Driver(**request)
                answer = {"user": driver.ls.users.whoami().email}
            else:
                answer = getattr(driver, f"op_{op}")(**request)
            answer = {"ok": True, **answer}
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails with it
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
