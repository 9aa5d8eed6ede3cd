"""Pigeonhole from Python, notebook style: upload a folder, train, predict, grow the model, export it.

    PIGEONHOLE_URL=http://127.0.0.1:8000 PIGEONHOLE_TOKEN=pgh_… python examples/quickstart.py ./photos

``./photos`` holds one sub-folder per class (``photos/robin/*.jpg``, ``photos/wren/*.jpg`` …).
Create the token in the web app (API tokens page) or with ``pigeonhole token create laptop``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pigeonhole.client import Client

photos = Path(sys.argv[1] if len(sys.argv) > 1 else "photos")
classes = sorted(p.name for p in photos.iterdir() if p.is_dir())
first, later = classes[:-1], classes[-1:]  # keep one class back to show growing the model

with Client(os.environ["PIGEONHOLE_URL"], os.environ["PIGEONHOLE_TOKEN"]) as pgh:
    dataset = pgh.create_dataset(photos.name)
    uploaded = pgh.upload_folder(dataset["id"], photos, progress=lambda p: print(f"\r{p.files_done}/{p.files_total}",
                                                                                  end=""))
    print(f"\nuploaded {uploaded.accepted} images; rejected {len(uploaded.rejected)}")

    model = pgh.create_model(photos.name, dataset["id"], classes=first, preference="balanced")
    job = pgh.wait_for_job(model["job_id"], on_progress=lambda j: print(f"{j['progress']:.0%} {j['stage']}"))
    model = pgh.get_model(model["id"])
    print(f"version {model['active_version']}: test accuracy {model['metrics']['accuracy']:.1%}")

    some_image = next((photos / first[0]).iterdir())
    print(pgh.predict(model["id"], [some_image])["predictions"][0])

    if later:  # a new class, answerable within seconds, without retraining
        change = pgh.add_classes(model["id"], later)
        if change["job_id"]:
            pgh.wait_for_job(change["job_id"])
        print("now serving classes:", pgh.get_model(model["id"])["classes"])

    pgh.export_model(model["id"], pgh.get_model(model["id"])["active_version"], f"{photos.name}.onnx")
    print(f"saved {photos.name}.onnx")
