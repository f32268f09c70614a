"""Stored chat completions, vector stores, videos and containers (spec 2.3.0).

Stateful enough that create, retrieve, list, update, delete and content agree with each other;
the operations of these families not handled here get the generic spec-shaped answer.

* chat completions made with ``store: true`` are listed (``model``, ``metadata[k]=v``
  filters), retrieved, updated (metadata), deleted, and their messages listed;
* vector stores hold files of the file store (added one by one or in batches, processed at
  once), whose text content can be read and searched (word overlap);
* a video goes ``queued`` -> ``in_progress`` -> ``completed`` over the ``job_seconds`` knob,
  then its content is ``video/mp4`` bytes (``variant=thumbnail``/``spritesheet``: an image);
* containers hold files (uploaded, or copied from the file store) whose bytes download as-is.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from . import fakes
from .http11 import Response
from .multipart import UploadedFile
from .operations import ApiError, body_json, content_text, form_data, json_reply, query_params
from .state import clamp_int, new_id, page, progress

if TYPE_CHECKING:  # pragma: no cover
    from .app import StandinApp
    from .http11 import Request

#: Files one request may add to a vector store or container (the real API's 500).
MAX_FILE_IDS = 500
#: Search results per vector store search (the real API's 50).
MAX_SEARCH_RESULTS = 50
_WORDS = re.compile(r"\w+")


def _not_found(what: str, ident: str, param: str) -> ApiError:
    return ApiError(404, f"No {what} found with id '{ident}'.", param=param)


def _fields(req: Request) -> tuple[dict, list[UploadedFile]]:
    """A JSON body or multipart fields (videos and container files take either)."""
    if req.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return form_data(req)
    return body_json(req), []


def _file_ids(value: Any, param: str = "file_ids") -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"'{param}' must be an array of file ids.", param=param)
    if len(value) > MAX_FILE_IDS:
        raise ApiError(400, f"'{param}' may hold at most {MAX_FILE_IDS} ids.", param=param)
    return value


class ResourceOps:
    """Handlers for the stored-object families; state in ``app.stores``."""

    def __init__(self, app: StandinApp) -> None:
        self.app = app

    def _file(self, file_id: str, param: str = "file_id") -> dict:
        meta = self.app.files.get(file_id)
        if meta is None:
            raise ApiError(400, f"Invalid '{param}': file '{file_id}' does not exist.",
                           param=param, code="invalid_file")
        return meta

    # -- stored chat completions ---------------------------------------------------------------

    def _completion(self, completion_id: str) -> dict:
        record = self.app.stores.chat.get(completion_id)
        if record is None:
            raise _not_found("chat completion", completion_id, "completion_id")
        return record

    def listChatCompletions(self, req: Request) -> Response:
        query = query_params(req)
        items = [r["completion"] for r in self.app.stores.chat.values()]
        if query.get("model"):
            items = [c for c in items if c["model"] == query["model"]]
        for key, value in query.items():
            if key.startswith("metadata[") and key.endswith("]"):
                items = [c for c in items if c["metadata"].get(key[9:-1]) == value]
        return json_reply(page(items, query, default_order="asc"))

    def getChatCompletion(self, req: Request, completion_id: str) -> Response:
        return json_reply(self._completion(completion_id)["completion"])

    def updateChatCompletion(self, req: Request, completion_id: str) -> Response:
        completion = self._completion(completion_id)["completion"]
        metadata = body_json(req).get("metadata")
        if not isinstance(metadata, dict):
            raise ApiError(400, "'metadata' is a required property.", param="metadata")
        completion["metadata"] = metadata
        return json_reply(completion)

    def deleteChatCompletion(self, req: Request, completion_id: str) -> Response:
        self._completion(completion_id)
        self.app.stores.chat.pop(completion_id)
        return json_reply({"object": "chat.completion.deleted", "id": completion_id,
                           "deleted": True})

    def getChatCompletionMessages(self, req: Request, completion_id: str) -> Response:
        record = self._completion(completion_id)
        messages = [{"id": f"{completion_id}-{i}", "role": m.get("role"),
                     "content": content_text(m.get("content")), "name": m.get("name"),
                     "content_parts": None} for i, m in enumerate(record["messages"])]
        return json_reply(page(messages, query_params(req), default_order="asc"))

    # -- vector stores ---------------------------------------------------------------------------

    def _store(self, vector_store_id: str) -> dict:
        record = self.app.stores.vector_stores.get(vector_store_id)
        if record is None:
            raise _not_found("vector store", vector_store_id, "vector_store_id")
        return record

    def _add_files(self, record: dict, file_ids: list[str], attributes: Any = None) -> list[dict]:
        metas = [self._file(f) for f in file_ids]
        added = []
        for meta in metas:
            vs_file = {"id": meta["id"], "object": "vector_store.file",
                       "usage_bytes": meta["bytes"], "created_at": int(time.time()),
                       "vector_store_id": record["id"], "status": "completed",
                       "last_error": None, "attributes": attributes or {},
                       "chunking_strategy": {"type": "static", "static": {
                           "max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}}
            record["files"][meta["id"]] = vs_file
            added.append(vs_file)
        self._counts(record)
        return added

    @staticmethod
    def _counts(record: dict) -> None:
        store = record["store"]
        files = record["files"]
        store["file_counts"] = {"in_progress": 0, "completed": len(files), "failed": 0,
                                "cancelled": 0, "total": len(files)}
        store["usage_bytes"] = sum(f["usage_bytes"] for f in files.values())
        store["last_active_at"] = int(time.time())

    def createVectorStore(self, req: Request) -> Response:
        body = body_json(req)
        now = int(time.time())
        store = {"id": new_id("vs_"), "object": "vector_store", "created_at": now,
                 "name": body.get("name") or "", "usage_bytes": 0, "file_counts": {},
                 "status": "completed", "expires_after": body.get("expires_after"),
                 "expires_at": None, "last_active_at": now,
                 "metadata": body.get("metadata") or {}}
        record = {"id": store["id"], "store": store, "files": {}, "batches": {}}
        self._add_files(record, _file_ids(body.get("file_ids")))
        self.app.stores.vector_stores.add(record)
        return json_reply(store)

    def listVectorStores(self, req: Request) -> Response:
        stores = [r["store"] for r in self.app.stores.vector_stores.values()]
        return json_reply(page(stores, query_params(req)))

    def getVectorStore(self, req: Request, vector_store_id: str) -> Response:
        return json_reply(self._store(vector_store_id)["store"])

    def modifyVectorStore(self, req: Request, vector_store_id: str) -> Response:
        store = self._store(vector_store_id)["store"]
        body = body_json(req)
        for key in ("name", "metadata", "expires_after"):
            if key in body:
                store[key] = body[key]
        return json_reply(store)

    def deleteVectorStore(self, req: Request, vector_store_id: str) -> Response:
        self._store(vector_store_id)
        self.app.stores.vector_stores.pop(vector_store_id)
        return json_reply({"id": vector_store_id, "object": "vector_store.deleted",
                           "deleted": True})

    def createVectorStoreFile(self, req: Request, vector_store_id: str) -> Response:
        body = body_json(req)
        file_id = body.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            raise ApiError(400, "'file_id' is a required property.", param="file_id")
        return json_reply(self._add_files(self._store(vector_store_id), [file_id],
                                          body.get("attributes"))[0])

    def listVectorStoreFiles(self, req: Request, vector_store_id: str) -> Response:
        query = query_params(req)
        files = list(self._store(vector_store_id)["files"].values())
        if query.get("filter"):
            files = [f for f in files if f["status"] == query["filter"]]
        return json_reply(page(files, query))

    def _vs_file(self, vector_store_id: str, file_id: str) -> tuple[dict, dict]:
        record = self._store(vector_store_id)
        vs_file = record["files"].get(file_id)
        if vs_file is None:
            raise _not_found("file", file_id, "file_id")
        return record, vs_file

    def getVectorStoreFile(self, req: Request, vector_store_id: str, file_id: str) -> Response:
        return json_reply(self._vs_file(vector_store_id, file_id)[1])

    def updateVectorStoreFileAttributes(self, req: Request, vector_store_id: str,
                                        file_id: str) -> Response:
        vs_file = self._vs_file(vector_store_id, file_id)[1]
        vs_file["attributes"] = body_json(req).get("attributes") or {}
        return json_reply(vs_file)

    def deleteVectorStoreFile(self, req: Request, vector_store_id: str,
                              file_id: str) -> Response:
        record, _ = self._vs_file(vector_store_id, file_id)
        del record["files"][file_id]
        self._counts(record)
        return json_reply({"id": file_id, "object": "vector_store.file.deleted",
                           "deleted": True})

    def _text(self, file_id: str) -> str:
        return self.app.files.data.get(file_id, b"").decode("utf-8", "replace")

    def retrieveVectorStoreFileContent(self, req: Request, vector_store_id: str,
                                       file_id: str) -> Response:
        self._vs_file(vector_store_id, file_id)
        return json_reply({"object": "vector_store.file_content.page",
                           "data": [{"type": "text", "text": self._text(file_id)[:100_000]}],
                           "has_more": False, "next_page": None})

    def searchVectorStore(self, req: Request, vector_store_id: str) -> Response:
        record = self._store(vector_store_id)
        body = body_json(req)
        query = body.get("query")
        queries = query if isinstance(query, list) else [query]
        if not all(isinstance(q, str) and q for q in queries):
            raise ApiError(400, "'query' is a required property.", param="query")
        wanted = set(_WORDS.findall(" ".join(queries).lower()))
        limit = clamp_int(body.get("max_num_results"), 10, 1, MAX_SEARCH_RESULTS)
        results = []
        for file_id, vs_file in record["files"].items():
            text = self._text(file_id)
            words = _WORDS.findall(text.lower()[:1_000_000])
            if not words:
                continue
            hits = sum(1 for w in words if w in wanted)
            meta = self.app.files.get(file_id) or {}
            results.append({"file_id": file_id, "filename": meta.get("filename", file_id),
                            "score": round(min(1.0, hits / max(1, len(wanted)) / 2 + 0.01), 4),
                            "attributes": vs_file["attributes"],
                            "content": [{"type": "text", "text": text[:2000]}]})
        results.sort(key=lambda r: -r["score"])
        return json_reply({"object": "vector_store.search_results.page",
                           "search_query": queries, "data": results[:limit],
                           "has_more": False, "next_page": None})

    def createVectorStoreFileBatch(self, req: Request, vector_store_id: str) -> Response:
        record = self._store(vector_store_id)
        body = body_json(req)
        file_ids = _file_ids(body.get("file_ids"))
        files = body.get("files")
        if isinstance(files, list):
            file_ids += [f.get("file_id") for f in files
                         if isinstance(f, dict) and isinstance(f.get("file_id"), str)]
        if not file_ids:
            raise ApiError(400, "'file_ids' is a required property.", param="file_ids")
        added = self._add_files(record, _file_ids(file_ids), body.get("attributes"))
        batch = {"id": new_id("vsfb_"), "object": "vector_store.files_batch",
                 "created_at": int(time.time()), "vector_store_id": vector_store_id,
                 "status": "completed",
                 "file_counts": {"in_progress": 0, "completed": len(added), "failed": 0,
                                 "cancelled": 0, "total": len(added)}}
        record["batches"][batch["id"]] = {"batch": batch, "file_ids": [f["id"] for f in added]}
        return json_reply(batch)

    def _file_batch(self, vector_store_id: str, batch_id: str) -> tuple[dict, dict]:
        record = self._store(vector_store_id)
        entry = record["batches"].get(batch_id)
        if entry is None:
            raise _not_found("file batch", batch_id, "batch_id")
        return record, entry

    def getVectorStoreFileBatch(self, req: Request, vector_store_id: str,
                                batch_id: str) -> Response:
        return json_reply(self._file_batch(vector_store_id, batch_id)[1]["batch"])

    def cancelVectorStoreFileBatch(self, req: Request, vector_store_id: str,
                                   batch_id: str) -> Response:
        batch = self._file_batch(vector_store_id, batch_id)[1]["batch"]
        if batch["status"] == "in_progress":
            batch["status"] = "cancelled"
        return json_reply(batch)

    def listFilesInVectorStoreBatch(self, req: Request, vector_store_id: str,
                                    batch_id: str) -> Response:
        record, entry = self._file_batch(vector_store_id, batch_id)
        files = [record["files"][f] for f in entry["file_ids"] if f in record["files"]]
        return json_reply(page(files, query_params(req)))

    # -- videos ------------------------------------------------------------------------------

    def _new_video(self, fields: dict, remixed_from: str | None = None) -> dict:
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "'prompt' is a required property.", param="prompt")
        video = {"id": new_id("video_"), "object": "video",
                 "model": str(fields.get("model") or "sora-2"), "status": "queued",
                 "progress": 0, "created_at": int(time.time()), "completed_at": None,
                 "expires_at": None, "prompt": prompt,
                 "seconds": str(fields.get("seconds") or "4"),
                 "size": str(fields.get("size") or "720x1280"), "quality": "standard",
                 "remixed_from_video_id": remixed_from, "error": None}
        self.app.stores.videos.add({"id": video["id"], "video": video, "elapsed": 0.0,
                                    "since": time.monotonic()})
        return video

    def _video(self, video_id: str) -> dict:
        record = self.app.stores.videos.get(video_id)
        if record is None:
            raise _not_found("video", video_id, "video_id")
        video = record["video"]
        if video["status"] in ("queued", "in_progress"):
            fraction = progress(record, self.app.config.job_seconds)
            if fraction >= 1.0:
                now = int(time.time())
                video.update(status="completed", progress=100, completed_at=now,
                             expires_at=now + 3600)
            elif fraction > 0.1:
                video.update(status="in_progress", progress=int(fraction * 100))
        return video

    def createVideo(self, req: Request) -> Response:
        return json_reply(self._new_video(_fields(req)[0]))

    def CreateVideoRemix(self, req: Request, video_id: str) -> Response:
        self._video(video_id)
        return json_reply(self._new_video(body_json(req), remixed_from=video_id))

    def GetVideo(self, req: Request, video_id: str) -> Response:
        return json_reply(self._video(video_id))

    def ListVideos(self, req: Request) -> Response:
        videos = [self._video(r["id"]) for r in self.app.stores.videos.values()]
        return json_reply(page(videos, query_params(req)))

    def DeleteVideo(self, req: Request, video_id: str) -> Response:
        self._video(video_id)
        self.app.stores.videos.pop(video_id)
        return json_reply({"id": video_id, "object": "video.deleted", "deleted": True})

    def RetrieveVideoContent(self, req: Request, video_id: str) -> Response:
        video = self._video(video_id)
        if video["status"] != "completed":
            raise ApiError(400, f"Video {video_id} is not ready yet ({video['status']}).",
                           param="video_id", code="video_not_ready")
        seed = fakes.digest("video", video_id)
        if query_params(req).get("variant") in ("thumbnail", "spritesheet"):
            return Response(200, fakes.WEBP_1X1, "image/webp")
        seconds = float(clamp_int(video["seconds"], 4, 1, 60))
        return Response(200, fakes.mp4(seed, seconds), "video/mp4")

    # -- containers ----------------------------------------------------------------------------

    def _container(self, container_id: str) -> dict:
        record = self.app.stores.containers.get(container_id)
        if record is None:
            raise _not_found("container", container_id, "container_id")
        return record

    def _container_file(self, record: dict, filename: str, data: bytes,
                        source: str = "user") -> dict:
        meta = {"id": new_id("cfile_"), "object": "container.file",
                "created_at": int(time.time()), "bytes": len(data),
                "container_id": record["id"], "path": f"/mnt/data/{filename}", "source": source}
        record["files"][meta["id"]] = (meta, data)
        record["container"]["last_active_at"] = meta["created_at"]
        return meta

    def CreateContainer(self, req: Request) -> Response:
        body = body_json(req)
        if not body.get("name"):
            raise ApiError(400, "'name' is a required property.", param="name")
        now = int(time.time())
        container = {"id": new_id("cntr_"), "object": "container", "name": str(body["name"]),
                     "created_at": now, "status": "running", "last_active_at": now,
                     "expires_after": body.get("expires_after")
                     or {"anchor": "last_active_at", "minutes": 20},
                     "memory_limit": body.get("memory_limit") or "1g"}
        record = {"id": container["id"], "container": container, "files": {}}
        for file_id in _file_ids(body.get("file_ids")):
            meta = self._file(file_id)
            self._container_file(record, meta["filename"], self.app.files.data[file_id])
        self.app.stores.containers.add(record)
        return json_reply(container)

    def ListContainers(self, req: Request) -> Response:
        containers = [r["container"] for r in self.app.stores.containers.values()]
        return json_reply(page(containers, query_params(req)))

    def RetrieveContainer(self, req: Request, container_id: str) -> Response:
        return json_reply(self._container(container_id)["container"])

    def DeleteContainer(self, req: Request, container_id: str) -> Response:
        self._container(container_id)
        self.app.stores.containers.pop(container_id)
        return json_reply({"id": container_id, "object": "container.deleted", "deleted": True})

    def CreateContainerFile(self, req: Request, container_id: str) -> Response:
        record = self._container(container_id)
        fields, files = _fields(req)
        upload = next((f for f in files if f.field == "file"), None)
        if upload is not None:
            return json_reply(self._container_file(record, upload.filename, upload.data))
        file_id = fields.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            raise ApiError(400, "'file' or 'file_id' is required.", param="file")
        meta = self._file(file_id)
        return json_reply(self._container_file(record, meta["filename"],
                                               self.app.files.data[file_id]))

    def ListContainerFiles(self, req: Request, container_id: str) -> Response:
        files = [meta for meta, _ in self._container(container_id)["files"].values()]
        return json_reply(page(files, query_params(req)))

    def _cfile(self, container_id: str, file_id: str) -> tuple[dict, dict, bytes]:
        record = self._container(container_id)
        entry = record["files"].get(file_id)
        if entry is None:
            raise _not_found("container file", file_id, "file_id")
        return record, entry[0], entry[1]

    def RetrieveContainerFile(self, req: Request, container_id: str, file_id: str) -> Response:
        return json_reply(self._cfile(container_id, file_id)[1])

    def DeleteContainerFile(self, req: Request, container_id: str, file_id: str) -> Response:
        record, _, _ = self._cfile(container_id, file_id)
        del record["files"][file_id]
        return json_reply({"id": file_id, "object": "container.file.deleted", "deleted": True})

    def RetrieveContainerFileContent(self, req: Request, container_id: str,
                                     file_id: str) -> Response:
        return Response(200, self._cfile(container_id, file_id)[2], "application/octet-stream")
