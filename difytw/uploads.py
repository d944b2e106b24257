"""Dify's ``POST /files/upload``, answered from the real multipart body (pure).

The replay server has no storage, but a client still needs a believable file
object back: the id it will send as ``upload_file_id``, the name, size,
extension and MIME type of what it actually sent.  The id is derived from the
content so the same upload always gets the same id (replays stay
deterministic).  Checks follow dify-contract.md 1.2 (files/upload row): no
``file`` part -> 400 ``no_file_uploaded``; more than one file part -> 400
``too_many_files``; a part without a MIME type -> 415
``unsupported_file_type``; a name with ``/`` or ``\\`` -> 400 ``invalid_param``.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, BinaryIO

from python_multipart import parse_form
from python_multipart.exceptions import FormParserError

from difytw.errors import DifyError

_NAMESPACE = uuid.UUID("6f2b1a86-9a43-4e1f-9a0d-5c8e8f1d2b10")


class _Part:
    def __init__(self, name: str, filename: str | None, content_type: str | None) -> None:
        self.name = name
        self.filename = filename
        self.content_type = content_type
        self.digest = hashlib.sha256()
        self.size = 0
        self.value = b""


def read_upload(content_type: bytes, body: BinaryIO, length: int) -> tuple[_Part, dict[str, str]]:
    """The single file part and the plain form fields of a multipart body."""
    files: list[_Part] = []
    fields: dict[str, str] = {}

    def on_field(part: Any) -> None:
        name = (part.field_name or b"").decode("utf-8", "replace")
        fields[name] = (part.value or b"").decode("utf-8", "replace")

    def on_file(part: Any) -> None:
        name = (part.field_name or b"").decode("utf-8", "replace")
        filename = part.file_name.decode("utf-8", "replace") if part.file_name else None
        record = _Part(name, filename, part.content_type)
        handle = part.file_object
        handle.seek(0)
        while block := handle.read(1 << 20):
            record.digest.update(block)
            record.size += len(block)
        files.append(record)

    headers = {"Content-Type": content_type, "Content-Length": str(length).encode()}
    try:
        parse_form(headers, body, on_field, on_file)
    except (FormParserError, ValueError) as e:
        raise DifyError(400, "invalid_param", f"Malformed multipart body: {e}") from None
    uploads = [f for f in files if f.name == "file"]
    if not uploads:
        raise DifyError(400, "no_file_uploaded", "Please upload your file.")
    if len(files) > 1:
        raise DifyError(400, "too_many_files", "Only one file is allowed.")
    upload = uploads[0]
    if not upload.filename:
        raise DifyError(400, "filename_not_exists_error", "The specified filename does not exist.")
    if "/" in upload.filename or "\\" in upload.filename:
        raise DifyError(400, "invalid_param", "Filename contains invalid characters.")
    if not upload.content_type:
        raise DifyError(415, "unsupported_file_type", "File type not allowed.")
    return upload, fields


def file_object(upload: _Part, user: str, now: int) -> dict[str, Any]:
    """The 201 body Dify answers, keys in Dify's order."""
    digest = upload.digest.hexdigest()
    file_id = str(uuid.uuid5(_NAMESPACE, f"{digest}:{upload.filename}"))
    extension = (
        upload.filename.rsplit(".", 1)[-1] if upload.filename and "." in upload.filename else ""
    )
    return {
        "id": file_id,
        "name": upload.filename,
        "size": upload.size,
        "extension": extension,
        "mime_type": upload.content_type,
        "created_by": str(uuid.uuid5(_NAMESPACE, f"end-user:{user}")),
        "created_at": now,
        "preview_url": None,
        "source_url": f"/files/{file_id}/file-preview",
        "original_url": None,
        "user_id": None,
        "tenant_id": str(uuid.uuid5(_NAMESPACE, "tenant")),
        "conversation_id": None,
        "file_key": None,
    }
