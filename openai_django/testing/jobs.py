"""Uploads, batches and fine-tuning jobs (spec 2.3.0): objects that change over time.

Progress is computed when an object is read, from the time since it started and the
``job_seconds`` knob (0, the ``fast`` default, finishes at once), so no timers run:

* a batch goes ``validating`` -> ``in_progress`` -> ``completed``; at the end each line of its
  input file is answered by the stand-in's own handler for the line's ``url`` (chat,
  embeddings, responses, completions, moderations) into an ``output_file_id`` JSONL file, and
  the lines that fail into an ``error_file_id`` file, both in the file store;
* a fine-tuning job goes ``validating_files`` -> ``queued`` -> ``running`` (one metrics event
  and one checkpoint per epoch, at most ``MAX_EPOCHS``) -> ``succeeded`` with a model; it can
  be paused, resumed and cancelled;
* an upload collects parts and becomes a file on completion.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import fakes
from .http11 import Request, Response, dumps, loads
from .operations import ApiError, StreamPlan, body_json, form_data, json_reply, query_params
from .state import (
    MAX_BATCH_LINES,
    MAX_EPOCHS,
    clamp_int,
    new_id,
    new_request_id,
    page,
    progress,
)

if TYPE_CHECKING:  # pragma: no cover
    from .app import StandinApp

BATCH_ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings",
                   "/v1/completions", "/v1/moderations")
#: Largest upload (the real API's 8 GB) and part (64 MB).
MAX_UPLOAD_BYTES = 8 * 1024 ** 3
MAX_PART_BYTES = 64 * 1024 ** 2
DEFAULT_EPOCHS = 3


def _missing(param: str) -> ApiError:
    return ApiError(400, f"'{param}' is a required property.", param=param)


def _not_found(what: str, ident: str, param: str) -> ApiError:
    return ApiError(404, f"No {what} found with id '{ident}'.", param=param)


class JobOps:
    """``/uploads``, ``/batches`` and ``/fine_tuning/jobs``; state in ``app.stores``."""

    def __init__(self, app: StandinApp) -> None:
        self.app = app

    def _fraction(self, record: dict) -> float:
        return progress(record, self.app.config.job_seconds)

    def _existing_file(self, file_id: Any, param: str) -> dict:
        if not isinstance(file_id, str) or not file_id:
            raise _missing(param)
        meta = self.app.files.get(file_id)
        if meta is None:
            raise ApiError(400, f"Invalid '{param}': file '{file_id}' does not exist.",
                           param=param, code="invalid_file")
        return meta

    # -- uploads -----------------------------------------------------------------------------

    def _upload(self, upload_id: str, pending: bool = True) -> dict:
        record = self.app.stores.uploads.get(upload_id)
        if record is None:
            raise _not_found("upload", upload_id, "upload_id")
        status = record["upload"]["status"]
        if pending and status != "pending":
            raise ApiError(400, f"Upload {upload_id} is already {status}.", param="upload_id")
        return record

    def createUpload(self, req: Request) -> Response:
        body = body_json(req)
        for param in ("filename", "purpose", "bytes", "mime_type"):
            if body.get(param) in (None, ""):
                raise _missing(param)
        size = body["bytes"]
        if not isinstance(size, int) or not 0 <= size <= MAX_UPLOAD_BYTES:
            raise ApiError(400, f"'bytes' must be an integer between 0 and {MAX_UPLOAD_BYTES}.",
                           param="bytes")
        now = int(time.time())
        upload = {"id": new_id("upload_"), "object": "upload", "bytes": size, "created_at": now,
                  "filename": str(body["filename"]), "purpose": str(body["purpose"]),
                  "status": "pending", "expires_at": now + 3600, "file": None}
        self.app.stores.uploads.add({"id": upload["id"], "upload": upload, "parts": {}})
        return json_reply(upload)

    def addUploadPart(self, req: Request, upload_id: str) -> Response:
        record = self._upload(upload_id)
        fields, files = form_data(req)
        part = next((f.data for f in files if f.field == "data"), None)
        if part is None:
            part = fields.get("data", "").encode() if "data" in fields else None
        if part is None:
            raise _missing("data")
        if len(part) > MAX_PART_BYTES:
            raise ApiError(400, f"A part may hold at most {MAX_PART_BYTES} bytes.", param="data")
        part_id = new_id("part_")
        record["parts"][part_id] = part
        return json_reply({"id": part_id, "object": "upload.part", "created_at": int(time.time()),
                           "upload_id": upload_id})

    def completeUpload(self, req: Request, upload_id: str) -> Response:
        record = self._upload(upload_id)
        part_ids = body_json(req).get("part_ids")
        if not isinstance(part_ids, list) or not part_ids:
            raise _missing("part_ids")
        unknown = [p for p in part_ids if p not in record["parts"]]
        if unknown:
            raise ApiError(400, f"Unknown part ids: {unknown[:5]}.", param="part_ids")
        data = b"".join(record["parts"][p] for p in part_ids)
        upload = record["upload"]
        if len(data) != upload["bytes"]:
            raise ApiError(400, f"The parts hold {len(data)} bytes, but the upload was created "
                                f"with bytes={upload['bytes']}.", param="part_ids")
        upload["file"] = self.app.files.add(upload["filename"], upload["purpose"], data)
        upload["status"] = "completed"
        record["parts"] = {}
        return json_reply(upload)

    def cancelUpload(self, req: Request, upload_id: str) -> Response:
        record = self._upload(upload_id)
        record["upload"]["status"] = "cancelled"
        record["parts"] = {}
        return json_reply(record["upload"])

    # -- batches -----------------------------------------------------------------------------

    def createBatch(self, req: Request) -> Response:
        body = body_json(req)
        input_file = self._existing_file(body.get("input_file_id"), "input_file_id")
        endpoint = body.get("endpoint")
        if endpoint not in BATCH_ENDPOINTS:
            raise ApiError(400, f"Invalid 'endpoint': must be one of {list(BATCH_ENDPOINTS)}.",
                           param="endpoint")
        if body.get("completion_window", "24h") != "24h":
            raise ApiError(400, "Invalid 'completion_window': only '24h' is supported.",
                           param="completion_window")
        now = int(time.time())
        batch = {"id": new_id("batch_"), "object": "batch", "endpoint": endpoint,
                 "model": None, "errors": None, "input_file_id": input_file["id"],
                 "completion_window": "24h", "status": "validating", "output_file_id": None,
                 "error_file_id": None, "created_at": now, "in_progress_at": None,
                 "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
                 "failed_at": None, "expired_at": None, "cancelling_at": None,
                 "cancelled_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0},
                 "usage": None, "metadata": body.get("metadata")}
        record = {"id": batch["id"], "batch": batch, "elapsed": 0.0, "since": time.monotonic()}
        self.app.stores.batches.add(record)
        return json_reply(self._advance_batch(record))

    def _advance_batch(self, record: dict) -> dict:
        batch = record["batch"]
        status = batch["status"]
        if status == "cancelling":
            batch["status"] = "cancelled"
            batch["cancelled_at"] = int(time.time())
            return batch
        if status not in ("validating", "in_progress"):
            return batch
        fraction = self._fraction(record)
        if fraction >= 0.25 and status == "validating":
            batch["status"] = "in_progress"
            batch["in_progress_at"] = int(time.time())
        if fraction >= 1.0:
            self._run_batch(batch)
        return batch

    def _run_batch(self, batch: dict) -> None:
        now = int(time.time())
        data = self.app.files.data.get(batch["input_file_id"], b"")
        # Counting newlines first keeps a huge file from being split into a huge list.
        lines = ([line for line in data.splitlines() if line.strip()]
                 if data.count(b"\n") <= 2 * MAX_BATCH_LINES else None)
        if lines is None or len(lines) > MAX_BATCH_LINES:
            batch.update(status="failed", failed_at=now, errors={"object": "list", "data": [{
                "code": "too_many_requests", "line": None, "param": None,
                "message": f"A batch may hold at most {MAX_BATCH_LINES} requests."}]})
            return
        batch["finalizing_at"] = now
        outputs: list[bytes] = []
        errors: list[bytes] = []
        tokens = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        for line in lines:
            result, ok = self._batch_line(line, batch["endpoint"])
            (outputs if ok else errors).append(dumps(result))
            usage = ((result.get("response") or {}).get("body") or {}).get("usage") if ok \
                else None
            if isinstance(usage, dict):
                tokens["input_tokens"] += int(usage.get("prompt_tokens",
                                                        usage.get("input_tokens", 0)) or 0)
                tokens["output_tokens"] += int(usage.get("completion_tokens",
                                                         usage.get("output_tokens", 0)) or 0)
                tokens["total_tokens"] += int(usage.get("total_tokens", 0) or 0)
        name = batch["id"]
        if outputs:
            batch["output_file_id"] = self.app.files.add(
                f"{name}_output.jsonl", "batch_output", b"\n".join(outputs) + b"\n")["id"]
        if errors:
            batch["error_file_id"] = self.app.files.add(
                f"{name}_error.jsonl", "batch_output", b"\n".join(errors) + b"\n")["id"]
        batch["request_counts"] = {"total": len(lines), "completed": len(outputs),
                                   "failed": len(errors)}
        batch["usage"] = {**tokens, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())

    def _batch_line(self, line: bytes, endpoint: str) -> tuple[dict, bool]:
        """One input line answered: (output or error line, succeeded?)."""
        try:
            item = loads(line)
        except ValueError:
            item = None
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        out: dict[str, Any] = {"id": new_id("batch_req_"), "custom_id": custom_id,
                               "response": None, "error": None}
        if not isinstance(item, dict) or not isinstance(item.get("body"), dict):
            out["error"] = {"code": "invalid_json_line",
                            "message": "The line is not a JSON object with a 'body' object."}
            return out, False
        if item.get("url") != endpoint or str(item.get("method", "POST")).upper() != "POST":
            out["error"] = {"code": "invalid_url",
                            "message": f"The line's url must be {endpoint} (POST), like the "
                                       "batch's endpoint."}
            return out, False
        if item["body"].get("stream"):
            out["error"] = {"code": "invalid_request",
                            "message": "Streaming is not supported in batches."}
            return out, False
        status, answer = self.dispatch("POST", endpoint, item["body"])
        out["response"] = {"status_code": status, "request_id": new_request_id(),
                           "body": answer}
        return out, status == 200

    def dispatch(self, method: str, path: str, body: dict) -> tuple[int, Any]:
        """Answer a JSON request with the stand-in's own handler (no log, no faults)."""
        req = Request(method, path, "HTTP/1.1", {"content-type": "application/json"}, "http")
        req.body = dumps(body)
        route = self.app.router.resolve(method, path)
        if route is None:
            return 404, {"error": {"message": f"Invalid URL ({method} {path})",
                                   "type": "invalid_request_error", "param": None,
                                   "code": None}}
        handler, params = route
        try:
            result = handler(req, **params)
        except ApiError as exc:
            return exc.status, {"error": {"message": exc.message, "type": exc.type,
                                          "param": exc.param, "code": exc.code}}
        if isinstance(result, StreamPlan) or not isinstance(result, Response):
            return 400, {"error": {"message": "Streaming is not supported in batches.",
                                   "type": "invalid_request_error", "param": "stream",
                                   "code": None}}
        try:
            return result.status, loads(result.body)
        except ValueError:
            return result.status, result.body.decode("utf-8", "replace")

    def _batch(self, batch_id: str) -> dict:
        record = self.app.stores.batches.get(batch_id)
        if record is None:
            raise _not_found("batch", batch_id, "batch_id")
        return record

    def retrieveBatch(self, req: Request, batch_id: str) -> Response:
        return json_reply(self._advance_batch(self._batch(batch_id)))

    def listBatches(self, req: Request) -> Response:
        batches = [self._advance_batch(r) for r in self.app.stores.batches.values()]
        result = page(batches, query_params(req))
        return json_reply(result)

    def cancelBatch(self, req: Request, batch_id: str) -> Response:
        record = self._batch(batch_id)
        batch = self._advance_batch(record)
        if batch["status"] in ("validating", "in_progress"):
            batch["status"] = "cancelling"
            batch["cancelling_at"] = int(time.time())
        elif batch["status"] not in ("cancelling", "cancelled"):
            raise ApiError(409, f"Cannot cancel a batch that is {batch['status']}.",
                           param="batch_id")
        return json_reply(batch)

    # -- fine-tuning jobs ----------------------------------------------------------------------

    def createFineTuningJob(self, req: Request) -> Response:
        body = body_json(req)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _missing("model")
        training = self._existing_file(body.get("training_file"), "training_file")
        validation = body.get("validation_file")
        if validation:
            self._existing_file(validation, "validation_file")
        method = body.get("method") if isinstance(body.get("method"), dict) else None
        kind = (method or {}).get("type") or "supervised"
        hyper = dict(((method or {}).get(kind) or {}).get("hyperparameters")
                     or body.get("hyperparameters") or {})
        epochs = clamp_int(hyper.get("n_epochs"), DEFAULT_EPOCHS, 1, MAX_EPOCHS)
        hyper = {"batch_size": hyper.get("batch_size", "auto"),
                 "learning_rate_multiplier": hyper.get("learning_rate_multiplier", "auto"),
                 "n_epochs": epochs}
        now = int(time.time())
        job_id = new_id("ftjob-")
        suffix = body.get("suffix")
        job = {"object": "fine_tuning.job", "id": job_id, "model": model, "created_at": now,
               "finished_at": None, "fine_tuned_model": None, "organization_id": "org-standin",
               "result_files": [], "status": "validating_files", "validation_file": validation,
               "training_file": training["id"], "hyperparameters": hyper,
               "trained_tokens": None, "error": None, "integrations": [],
               "seed": clamp_int(body.get("seed"), 42, 0, 2 ** 31 - 1), "estimated_finish": None,
               "method": {"type": kind, kind: {"hyperparameters": hyper}},
               "metadata": body.get("metadata"), "user_provided_suffix": suffix}
        model_name = f"ft:{model}:standin:{suffix or ''}:{job_id[-8:]}"
        steps = max(1, fakes.count_tokens(self.app.files.data.get(training["id"], b"")
                                          .decode("utf-8", "replace")) // 10)
        record = {"id": job_id, "job": job, "events": [], "checkpoints": [], "elapsed": 0.0,
                  "since": time.monotonic(), "done": 0, "model_name": model_name,
                  "milestones": self._milestones(epochs, steps, model_name)}
        self._event(record, f"Validating training file: {training['id']}")
        self.app.stores.jobs.add(record)
        return json_reply(self._advance_job(record))

    @staticmethod
    def _milestones(epochs: int, steps: int, model_name: str) -> list[tuple[float, str, Any]]:
        """(fraction of the run, what happens) for the whole job: at most MAX_EPOCHS + 4."""
        plan: list[tuple[float, str, Any]] = [
            (0.1, "queued", "Files validated, moving job to queued state"),
            (0.2, "running", "Fine-tuning job started")]
        for epoch in range(1, epochs + 1):
            plan.append((0.2 + 0.75 * epoch / epochs, "epoch", (epoch, epoch * steps,
                                                                 epochs * steps)))
        plan.append((1.0, "succeeded", f"New fine-tuned model created: {model_name}"))
        return plan

    def _event(self, record: dict, message: str, kind: str = "message",
               data: Any = None) -> None:
        record["events"].append({"object": "fine_tuning.job.event", "id": new_id("ft-event-"),
                                 "created_at": int(time.time()), "level": "info",
                                 "message": message, "data": data, "type": kind})

    def _advance_job(self, record: dict) -> dict:
        job = record["job"]
        if job["status"] not in ("validating_files", "queued", "running"):
            return job
        fraction = self._fraction(record)
        milestones = record["milestones"]
        while record["done"] < len(milestones) and milestones[record["done"]][0] <= fraction:
            _, what, detail = milestones[record["done"]]
            record["done"] += 1
            if what == "epoch":
                epoch, step, total = detail
                loss = round(1.0 / (1 + epoch), 4)
                self._event(record, f"Step {step}/{total}: training loss={loss}", "metrics",
                            {"step": step, "train_loss": loss, "total_steps": total})
                record["checkpoints"].append({
                    "object": "fine_tuning.job.checkpoint", "id": new_id("ftckpt_"),
                    "created_at": int(time.time()),
                    "fine_tuned_model_checkpoint": f"{record['model_name']}:ckpt-step-{step}",
                    "metrics": {"step": step, "train_loss": loss,
                                "train_mean_token_accuracy": round(1 - loss / 2, 4)},
                    "fine_tuning_job_id": job["id"], "step_number": step})
                continue
            self._event(record, detail)
            job["status"] = what
            if what == "succeeded":
                total = milestones[-2][2][2] if len(milestones) > 3 else 1
                result = self.app.files.add("step_metrics.csv", "fine-tune-results",
                                            b"step,train_loss\n1,0.5\n")
                job.update(fine_tuned_model=record["model_name"],
                           finished_at=int(time.time()), trained_tokens=total * 10,
                           result_files=[result["id"]])
                self.app.models.add(record["model_name"], "standin-org")
                self._event(record, "The job has successfully completed")
        return job

    def _job(self, job_id: str) -> dict:
        record = self.app.stores.jobs.get(job_id)
        if record is None:
            raise _not_found("fine-tuning job", job_id, "fine_tuning_job_id")
        self._advance_job(record)
        return record

    def retrieveFineTuningJob(self, req: Request, fine_tuning_job_id: str) -> Response:
        return json_reply(self._job(fine_tuning_job_id)["job"])

    def listPaginatedFineTuningJobs(self, req: Request) -> Response:
        jobs = [self._advance_job(r) for r in self.app.stores.jobs.values()]
        result = page(jobs, query_params(req))
        return json_reply({"object": "list", "data": result["data"],
                           "has_more": result["has_more"]})

    def cancelFineTuningJob(self, req: Request, fine_tuning_job_id: str) -> Response:
        record = self._job(fine_tuning_job_id)
        job = record["job"]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            raise ApiError(400, f"Cannot cancel a job that is already {job['status']}.",
                           param="fine_tuning_job_id")
        job["status"] = "cancelled"
        job["finished_at"] = int(time.time())
        self._event(record, "Fine-tuning job cancelled")
        return json_reply(job)

    def pauseFineTuningJob(self, req: Request, fine_tuning_job_id: str) -> Response:
        record = self._job(fine_tuning_job_id)
        job = record["job"]
        if job["status"] not in ("validating_files", "queued", "running"):
            raise ApiError(400, f"Cannot pause a job that is {job['status']}.",
                           param="fine_tuning_job_id")
        record["elapsed"] += time.monotonic() - record["since"]
        record["since"] = None
        record["paused_from"] = job["status"]
        job["status"] = "paused"
        self._event(record, "Fine-tuning job paused")
        return json_reply(job)

    def resumeFineTuningJob(self, req: Request, fine_tuning_job_id: str) -> Response:
        record = self._job(fine_tuning_job_id)
        job = record["job"]
        if job["status"] != "paused":
            raise ApiError(400, f"Cannot resume a job that is {job['status']}.",
                           param="fine_tuning_job_id")
        job["status"] = record.pop("paused_from", "running")
        record["since"] = time.monotonic()
        self._event(record, "Fine-tuning job resumed")
        return json_reply(self._advance_job(record))

    def listFineTuningEvents(self, req: Request, fine_tuning_job_id: str) -> Response:
        record = self._job(fine_tuning_job_id)
        result = page(record["events"], query_params(req))
        return json_reply({"object": "list", "data": result["data"],
                           "has_more": result["has_more"]})

    def listFineTuningJobCheckpoints(self, req: Request, fine_tuning_job_id: str) -> Response:
        record = self._job(fine_tuning_job_id)
        return json_reply(page(record["checkpoints"], query_params(req), default_limit=10))

