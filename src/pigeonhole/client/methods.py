"""Every API operation once, as a plan; the sync and async clients only differ in how they run plans."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pigeonhole.client.calls import (
    Call,
    Plan,
    Sleep,
    UploadProgress,
    clean_params,
    folder_files,
    paged,
    upload_batches,
)
from pigeonhole.client.errors import PigeonholeAPIError

FINISHED = frozenset({"succeeded", "failed", "cancelled"})
ImageInput = str | Path | bytes


def _image_part(image: ImageInput, index: int) -> tuple[str, tuple[str, Any, str]]:
    if isinstance(image, bytes):
        return ("files", (f"image-{index}", image, "application/octet-stream"))
    path = Path(image)
    return ("files", (path.name, path.read_bytes(), "application/octet-stream"))


class Methods:
    """Mixin: ``self._run(plan)`` returns the plan's result (sync) or an awaitable of it (async)."""

    def _run(self, plan: Plan) -> Any:  # pragma: no cover - provided by the client classes
        raise NotImplementedError

    # --- account --------------------------------------------------------------------------------
    def me(self) -> Any:
        return self._run(_one(Call("GET", "/api/v1/me", idempotent=True)))

    def create_token(self, name: str, scopes: Sequence[str] | None = None, expires_in_days: int | None = None) -> Any:
        body = clean_params({"name": name, "scopes": list(scopes) if scopes else None,
                             "expires_in_days": expires_in_days})
        return self._run(_one(Call("POST", "/api/v1/tokens", json=body)))

    def list_tokens(self) -> Any:
        return self._run(paged("/api/v1/tokens"))

    def revoke_token(self, token_id: str) -> Any:
        return self._run(_one(Call("DELETE", f"/api/v1/tokens/{token_id}", idempotent=True)))

    def usage(self, *, start: str | None = None, end: str | None = None, group_by: str = "day") -> Any:
        params = clean_params({"from": start, "to": end, "group_by": group_by})
        return self._run(_one(Call("GET", "/api/v1/usage", params=params, idempotent=True)))

    # --- datasets -------------------------------------------------------------------------------
    def create_dataset(self, name: str) -> Any:
        return self._run(_one(Call("POST", "/api/v1/datasets", json={"name": name})))

    def list_datasets(self) -> Any:
        return self._run(paged("/api/v1/datasets"))

    def get_dataset(self, dataset_id: str) -> Any:
        return self._run(_one(Call("GET", f"/api/v1/datasets/{dataset_id}", idempotent=True)))

    def delete_dataset(self, dataset_id: str) -> Any:
        return self._run(_one(Call("DELETE", f"/api/v1/datasets/{dataset_id}", idempotent=True)))

    def list_images(self, dataset_id: str, label: str | None = None) -> Any:
        return self._run(paged(f"/api/v1/datasets/{dataset_id}/images", clean_params({"label": label})))

    def upload_files(self, dataset_id: str, paths: Sequence[str | Path], label: str | None = None,
                     progress: Callable[[UploadProgress], None] | None = None, *, unlabelled: bool = False) -> Any:
        """Upload images of one class (``label``), or zip files with one folder per class; with ``unlabelled``,
        images (or zips, folders ignored) to label later: they wait in the dataset's to-label pool."""
        files = [(label or "", Path(p)) for p in paths]
        return self._run(_upload(dataset_id, files, progress, with_label=label is not None, unlabelled=unlabelled))

    def upload_folder(self, dataset_id: str, folder: str | Path,
                      progress: Callable[[UploadProgress], None] | None = None) -> Any:
        """Upload ``folder/<class>/<images>`` in small batches (never read into memory whole; safe to retry)."""
        return self._run(_upload(dataset_id, folder_files(Path(folder)), progress, with_label=True))

    def import_urls(self, dataset_id: str, items: Sequence[tuple[str, str]]) -> Any:
        body = {"items": [{"url": url, "label": label} for url, label in items]}
        return self._run(_one(Call("POST", f"/api/v1/datasets/{dataset_id}/imports", json=body)))

    def export_dataset(self, dataset_id: str, destination: str | Path) -> Any:
        return self._run(_one(Call("GET", f"/api/v1/datasets/{dataset_id}/export", idempotent=True,
                                   download_to=Path(destination))))

    # --- models ---------------------------------------------------------------------------------
    def create_model(self, name: str, dataset_id: str, *, classes: Sequence[str] | None = None,
                     target_accuracy: float | None = None, time_budget_s: int | None = None,
                     preference: str = "balanced") -> Any:
        body = clean_params({"name": name, "dataset_id": dataset_id, "classes": list(classes) if classes else None,
                       "target_accuracy": target_accuracy, "time_budget_s": time_budget_s,
                       "preference": preference})
        return self._run(_one(Call("POST", "/api/v1/models", json=body)))

    def list_models(self) -> Any:
        return self._run(paged("/api/v1/models"))

    def get_model(self, model_id: str) -> Any:
        return self._run(_one(Call("GET", f"/api/v1/models/{model_id}", idempotent=True)))

    def delete_model(self, model_id: str) -> Any:
        return self._run(_one(Call("DELETE", f"/api/v1/models/{model_id}", idempotent=True)))

    def list_versions(self, model_id: str) -> Any:
        return self._run(paged(f"/api/v1/models/{model_id}/versions"))

    def get_version(self, model_id: str, v: int) -> Any:
        return self._run(_one(Call("GET", f"/api/v1/models/{model_id}/versions/{v}", idempotent=True)))

    def activate_version(self, model_id: str, v: int) -> Any:
        return self._run(_one(Call("POST", f"/api/v1/models/{model_id}/versions/{v}/activate", idempotent=True)))

    def retrain(self, model_id: str) -> Any:
        return self._run(_one(Call("POST", f"/api/v1/models/{model_id}/retrain")))

    def add_classes(self, model_id: str, names: Sequence[str]) -> Any:
        return self._run(_one(Call("POST", f"/api/v1/models/{model_id}/classes", json={"names": list(names)})))

    def remove_class(self, model_id: str, name: str) -> Any:
        return self._run(_one(Call("DELETE", f"/api/v1/models/{model_id}/classes/{name}")))

    def set_caution(self, model_id: str, caution: float) -> Any:
        """A new version answering "unknown" for about ``caution`` of ordinary images; returns its job."""
        return self._run(_one(Call("POST", f"/api/v1/models/{model_id}/caution", json={"caution": caution})))

    def rename_class(self, model_id: str, name: str, new_name: str) -> Any:
        """A label change only: the new version predicts exactly as before, under the new name."""
        return self._run(_one(Call("PATCH", f"/api/v1/models/{model_id}/classes/{name}", json={"name": new_name})))

    def update_model(self, model_id: str, *, name: str | None = None, auto_retrain: bool | None = None,
                     grow_after_feedback: int | None = None) -> Any:
        body = {k: v for k, v in (("name", name), ("auto_retrain", auto_retrain),
                                  ("grow_after_feedback", grow_after_feedback)) if v is not None}
        return self._run(_one(Call("PATCH", f"/api/v1/models/{model_id}", json=body)))

    def export_model(self, model_id: str, v: int, destination: str | Path) -> Any:
        return self._run(_one(Call("GET", f"/api/v1/models/{model_id}/versions/{v}/export", params={"format": "onnx"},
                                   idempotent=True, download_to=Path(destination))))

    def predict(self, model_id: str, images: Sequence[ImageInput], *, top_k: int = 3, version: int | None = None,
                threshold: float | None = None, neighbours: int | None = None) -> Any:
        """Each answer: label (None = "unknown"), confidence, familiarity, top classes, and with ``neighbours=k`` the
        k training images of the predicted class that look most alike."""
        params = clean_params({"top_k": top_k, "version": version, "threshold": threshold, "neighbours": neighbours})
        files = [_image_part(image, i) for i, image in enumerate(images)]
        if len(files) == 1:  # the image as the body: the lightest call for the server
            _, (name, data, _) = files[0]
            return self._run(_named(Call("POST", f"/api/v1/models/{model_id}/predict", params=params,
                                         content=data, idempotent=True), name))  # type: ignore[arg-type]
        return self._run(_one(Call("POST", f"/api/v1/models/{model_id}/predict", params=params, files=files,
                                   idempotent=True)))

    def feedback(self, model_id: str, image: ImageInput, *, label: str | None = None, unsure: bool = False,
                 prediction_id: str | None = None) -> Any:
        """Send back an image a prediction got wrong (``label``: what it is) or could not settle (``unsure``)."""
        data = clean_params({"label": label, "unsure": "true" if unsure else None, "prediction_id": prediction_id})
        _, (name, content, kind) = _image_part(image, 0)
        return self._run(_one(Call("POST", f"/api/v1/models/{model_id}/feedback", data=data,
                                   files=[("file", (name, content, kind))])))

    # --- data quality: suspected mislabels, the to-label pool and its queue ---------------------
    def check_labels(self, dataset_id: str, model_id: str) -> Any:
        """Start looking for images whose label looks wrong (a job); ``suspects`` reads the result."""
        return self._run(_one(Call("POST", f"/api/v1/datasets/{dataset_id}/suspects", json={"model_id": model_id})))

    def suspects(self, dataset_id: str, model_id: str) -> Any:
        """The newest check with that model: state, and every suspect, most likely wrong first."""
        return self._run(_all_pages(f"/api/v1/datasets/{dataset_id}/suspects", {"model_id": model_id}))

    def keep_label(self, dataset_id: str, image_id: str) -> Any:
        return self._run(_one(Call("POST", f"/api/v1/datasets/{dataset_id}/images/{image_id}/keep-label",
                                   idempotent=True)))

    def list_pool(self, dataset_id: str) -> Any:
        return self._run(paged(f"/api/v1/datasets/{dataset_id}/pool"))

    def label_image(self, dataset_id: str, pool_id: str, label: str) -> Any:
        """Give an image waiting in the pool its class: it joins the dataset."""
        return self._run(_one(Call("POST", f"/api/v1/datasets/{dataset_id}/pool/{pool_id}/label",
                                   json={"label": label})))

    def order_queue(self, dataset_id: str, model_id: str) -> Any:
        """Order the images waiting for a label by what a label would teach the model (a job)."""
        return self._run(_one(Call("POST", f"/api/v1/datasets/{dataset_id}/queue", json={"model_id": model_id})))

    def queue(self, dataset_id: str, model_id: str) -> Any:
        """The labelling queue: state, and every waiting image in order with the model's guesses."""
        return self._run(_all_pages(f"/api/v1/datasets/{dataset_id}/queue", {"model_id": model_id}))

    def export_queue(self, dataset_id: str, model_id: str, destination: str | Path) -> Any:
        return self._run(_one(Call("GET", f"/api/v1/datasets/{dataset_id}/queue/export",
                                   params={"model_id": model_id}, idempotent=True, download_to=Path(destination))))

    # --- jobs -----------------------------------------------------------------------------------
    def get_job(self, job_id: str) -> Any:
        return self._run(_one(Call("GET", f"/api/v1/jobs/{job_id}", idempotent=True)))

    def list_jobs(self, model_id: str | None = None) -> Any:
        return self._run(paged("/api/v1/jobs", clean_params({"model_id": model_id})))

    def cancel_job(self, job_id: str) -> Any:
        return self._run(_one(Call("POST", f"/api/v1/jobs/{job_id}/cancel", idempotent=True)))

    def wait_for_job(self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None,
                     on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """Poll until the job finishes; ``on_progress`` sees every state. Returns the final job."""
        return self._run(_wait(job_id, poll_s, timeout_s, on_progress))


def _one(call: Call) -> Plan:
    return (yield call)


def _named(call: Call, name: str) -> Plan:
    """A one-image prediction sent as the body carries no file name: the answer gets it here."""
    answer = yield call
    for prediction in answer["predictions"]:
        prediction["name"] = name
    return answer


def _all_pages(path: str, params: dict[str, Any]) -> Plan:
    """A paged answer that carries more than its items (a state): the first page with every page's items."""
    first = yield Call("GET", path, params={**params, "limit": 200}, idempotent=True)
    cursor = first.get("next_cursor")
    while cursor:
        page = yield Call("GET", path, params={**params, "limit": 200, "cursor": cursor}, idempotent=True)
        first["items"] += page["items"]
        cursor = page.get("next_cursor")
    first["next_cursor"] = None
    return first


def _upload(dataset_id: str, files: list[tuple[str, Path]], progress: Callable[[UploadProgress], None] | None,
            *, with_label: bool, unlabelled: bool = False) -> Plan:
    state = UploadProgress(files_total=len(files), bytes_total=sum(p.stat().st_size for _, p in files))
    for label, paths in upload_batches(files):
        handles = [p.open("rb") for p in paths]
        try:
            parts = [("files", (p.name, h, "application/octet-stream")) for p, h in zip(paths, handles, strict=True)]
            data = {"unlabelled": "true"} if unlabelled else {"label": label} if with_label and label else None
            answer = yield Call("POST", f"/api/v1/datasets/{dataset_id}/uploads", files=parts, data=data,
                                idempotent=True)
        finally:
            for handle in handles:
                handle.close()
        state.files_done += len(paths)
        state.bytes_done += sum(p.stat().st_size for p in paths)
        state.accepted += answer["accepted"]
        state.duplicates += answer["duplicates"]
        state.rejected += answer["rejected"]
        if progress:
            progress(state)
    return state


def _wait(job_id: str, poll_s: float, timeout_s: float | None,
          on_progress: Callable[[dict[str, Any]], None] | None) -> Plan:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        job = yield Call("GET", f"/api/v1/jobs/{job_id}", idempotent=True)
        if on_progress:
            on_progress(job)
        if job["status"] in FINISHED:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise PigeonholeAPIError(408, "The job did not finish in time.", "wait_timeout")
        yield Sleep(poll_s)
