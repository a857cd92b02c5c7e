"""One way to reach storage: every path is a URI (``s3://bucket/prefix`` or a local path).

S3 settings come from the standard AWS environment. ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``
point at S3-compatible stores (MinIO, the moto server in tests). Credentials are never logged.

A store that stops answering is retried, not given up on at the first refused connection: every S3
call retries with botocore's "standard" mode (exponential backoff with jitter, each wait at most 20 s) up
to ``AWS_MAX_ATTEMPTS`` attempts (default 12, about a minute of outage or more), and a connection
attempt gives up after ``CONNECT_TIMEOUT_S``. ``AWS_RETRY_MODE`` picks another botocore mode.
"""

from __future__ import annotations

import json
import os
import posixpath

import fsspec

DEFAULT_MAX_ATTEMPTS = 12
CONNECT_TIMEOUT_S = 10


def s3_endpoint() -> str | None:
    """The S3 endpoint override from the environment, if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URI. Local paths are made absolute."""
    if uri.startswith("s3://"):
        import s3fs

        endpoint = s3_endpoint()
        fs = s3fs.S3FileSystem(
            client_kwargs={"endpoint_url": endpoint} if endpoint else {}, config_kwargs=s3_client_config()
        )
        return fs, uri[len("s3://") :].rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        fs, path = fsspec.core.url_to_fs(uri)
        return fs, path
    path = os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)
    return fsspec.filesystem("file"), path


def max_attempts() -> int:
    """How many times one S3 call is tried before it fails (``AWS_MAX_ATTEMPTS``, botocore's own variable)."""
    value = os.environ.get("AWS_MAX_ATTEMPTS") or str(DEFAULT_MAX_ATTEMPTS)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"AWS_MAX_ATTEMPTS must be a positive integer, got {value!r}")
    return int(value)


def s3_client_config() -> dict:
    """botocore client settings for every S3 filesystem: bounded retries with backoff, a connect timeout."""
    return {
        "retries": {"mode": os.environ.get("AWS_RETRY_MODE") or "standard", "max_attempts": max_attempts()},
        "connect_timeout": CONNECT_TIMEOUT_S,
    }


def _connection_errors() -> tuple[type[BaseException], ...]:
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # no S3 support installed: only the local disk, which has no connections
        return ()
    return (BotoConnectionError, HTTPClientError)  # refused, timed out, reset or closed mid-request


def unreachable(error: BaseException) -> str | None:
    """A one-line explanation when ``error`` (or what caused it, through Ray's task errors) is storage that
    stopped answering after its retries; None for any other error."""
    kinds, seen, todo = _connection_errors(), set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(getattr(e, "cause", None), BaseException):  # a Ray task's error: read what it carries
            todo.append(e.cause)
        elif isinstance(e, kinds):
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return (
                f"storage stopped answering ({first_line}); each call was tried {max_attempts()} times "
                "(AWS_MAX_ATTEMPTS raises that). Rerun the same command once the store answers: a rerun "
                "never uses anything half-written"
            )
        todo += [e.__cause__, e.__context__]
    return None


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(uri: str, *parts: str) -> str:
    """Join URI parts with '/', keeping the scheme. Local paths are made absolute."""
    if is_remote(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest.rstrip("/"), *parts)
    base = os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)
    return os.path.join(base, *parts)


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Inverse of :func:`filesystem`: a URI for a path inside ``fs``."""
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if protocol in ("file", "local"):
        return path
    return f"{'s3' if protocol in ('s3', 's3a') else protocol}://{path}"


def link_outside(root: str, path: str, info: dict) -> str | None:
    """Where ``path`` really is when symbolic links (the entry's own or a folder's above it) lead it out of
    the folder ``root`` on a local disk; None otherwise, and always for object storage, which has no links
    (``info`` comes from ``fs.find`` / ``fs.ls`` with ``detail=True``; a local one carries ``islink``).
    Readers refuse such entries unread, so a zoo cannot make a job read files outside it."""
    if "islink" not in info:
        return None
    target = os.path.realpath(path)
    inside = os.path.realpath(root).rstrip(os.sep) + os.sep
    return None if target.startswith(inside) or target == inside.rstrip(os.sep) else target


def put_folder(local_dir: str, uri: str) -> str:
    """Copy a local folder's files to ``uri`` (a local path or s3://), replacing what is there."""
    fs, path = filesystem(uri)
    for base, _, names in os.walk(local_dir):
        for name in names:
            src = os.path.join(base, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            dst = posixpath.join(path, rel) if is_remote(uri) else os.path.join(path, rel)
            fs.makedirs(posixpath.dirname(dst) if is_remote(uri) else os.path.dirname(dst), exist_ok=True)
            fs.put_file(src, dst)
    return uri


def write_json(uri: str, value) -> str:
    """Write ``value`` as indented JSON to a local path or URI (what every job's ``--json`` does); the URI.

    Values JSON cannot hold (paths, dates) are written as their text.
    """
    write_bytes_atomic(uri, (json.dumps(value, indent=2, default=str) + "\n").encode())
    return uri


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write a whole object so that readers never see a partial one.

    S3 PUTs are atomic already; on a local disk write a temporary file and rename it.
    """
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path) if is_remote(uri) else os.path.dirname(path)
    fs.makedirs(parent, exist_ok=True)
    if is_remote(uri):
        fs.pipe_file(path, data)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
